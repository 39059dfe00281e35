"""OAuth 1.0 signatures of notification POSTs (REFERENCE.md §3.11), through oauthlib.

ARTIK signs each notification as an OAuth 1.0 "authenticated request" with HMAC-SHA1, the
application's client id as both consumer key and token, and its client secret as both consumer and
token secret. The body is JSON, so it is not part of the signature base string; oauthlib adds an
``oauth_body_hash`` (SHA-1 of the body) for it, which a receiver can check as well.
"""

from __future__ import annotations

from oauthlib.oauth1 import SIGNATURE_HMAC_SHA1, SIGNATURE_TYPE_AUTH_HEADER, Client

JSON = "application/json"


def signed_headers(url: str, body: bytes, client_id: str, client_secret: str) -> dict[str, str]:
    """The headers of a signed JSON POST of ``body`` to ``url`` (``Authorization``, ``Content-Type``)."""
    client = Client(
        client_id,
        client_secret=client_secret,
        resource_owner_key=client_id,
        resource_owner_secret=client_secret,
        signature_method=SIGNATURE_HMAC_SHA1,
        signature_type=SIGNATURE_TYPE_AUTH_HEADER,
    )
    _uri, headers, _body = client.sign(
        url, http_method="POST", body=body.decode(), headers={"Content-Type": JSON}
    )
    return {str(k): str(v) for k, v in headers.items()}
