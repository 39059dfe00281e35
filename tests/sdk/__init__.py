"""Tests that drive a live ThingCloud server with the official ``artikcloud`` 2.2.3 Python SDK."""
