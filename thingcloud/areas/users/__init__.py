"""Users: profiles, per-application user properties, and user lifecycle (create, delete)."""
