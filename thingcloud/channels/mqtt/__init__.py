"""The MQTT 3.1.1 endpoint for devices (REFERENCE.md §5.3): packets.py (the codec), connection.py
(one device connection), server.py (the listeners, started and stopped with the app)."""
