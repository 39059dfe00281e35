"""Authentication and authorization: tokens, the OAuth2 accounts server, and the permission module."""
