"""Device types and their manifests."""
