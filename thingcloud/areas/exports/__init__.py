"""Message exports (S56–S59) and the import of historical messages (extension)."""
