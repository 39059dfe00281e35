"""The REST channel: middleware, error rendering, authentication dependencies and envelopes."""
