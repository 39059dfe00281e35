"""Messages and actions: the one ingest path every channel uses, storage, and (later) queries."""
