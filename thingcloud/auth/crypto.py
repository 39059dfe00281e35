"""Secrets at rest: argon2 password hashes and Fernet encryption keyed by the shared secret key.

Password hashing is deliberately slow, so it runs in a worker thread, never on the event loop.
Encrypted values (client secrets, device tokens) can be decrypted by any node that shares
``THINGCLOUD_SECRET_KEY``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

_hasher = PasswordHasher()


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        # Spend the same time as a real check so a missing account is not visible by timing.
        await asyncio.to_thread(_hasher.hash, password)
        return False

    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


class SecretBox:
    """Encrypts and signs with keys derived from the one shared secret key."""

    def __init__(self, secret_key: str) -> None:
        raw = secret_key.encode()
        self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"fernet:" + raw).digest()))
        self._mac_key = hashlib.sha256(b"mac:" + raw).digest()

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:  # a different secret key: a misconfigured node
            raise RuntimeError("cannot decrypt a stored secret: is THINGCLOUD_SECRET_KEY the same?") from exc

    def sign(self, value: str) -> str:
        return hmac.new(self._mac_key, value.encode(), hashlib.sha256).hexdigest()

    def verify(self, value: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(value), signature)
