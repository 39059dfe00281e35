"""ThingCloud: a self-hosted IoT data cloud that speaks the Samsung ARTIK Cloud REST API v1.1."""

__version__ = "0.1.0"
