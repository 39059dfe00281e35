"""The devices area: devices (S6, S11–S14), their tokens (S15–S17), status and presence (S20–S22,
§5.1) and shares (S24–S27, §5.1). ``service`` owns devices and tokens, ``status`` the status rows the
channels and ingest update, ``shares`` the sharing workflow."""
