"""Identifier and secret formats of the ARTIK contract (REFERENCE.md §2.4).

Ids and tokens are 32 lowercase hex characters; device types are ``dt`` + 32 hex. Tokens are stored
as SHA-256 digests, so this is also where a presented token becomes its lookup key.
"""

from __future__ import annotations

import hashlib
import re
import uuid

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def new_id() -> str:
    return uuid.uuid4().hex


def new_devicetype_id() -> str:
    return "dt" + uuid.uuid4().hex


def new_token() -> str:
    """A bearer token: 122 random bits as 32 hex, the format every ARTIK example shows."""
    return uuid.uuid4().hex


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
