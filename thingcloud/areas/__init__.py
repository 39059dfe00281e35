"""The API areas, each shaped routes.py (HTTP) · schemas.py (wire models) · service.py (logic)."""
