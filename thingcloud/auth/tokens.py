"""Bearer tokens: issuing, resolving, refreshing and revoking them, with a revocable cache.

Tokens are 32 lowercase hex; only their SHA-256 digests are stored. Device tokens are also stored
encrypted because ``GET /devices/{did}/tokens`` shows them again. Resolved tokens are cached per
process for a short time; a revocation publishes ``token.revoked`` on the bus so that every node drops
its cached copy at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import tables as t
from thingcloud.auth.permissions import AppPermissions, Principal
from thingcloud.bus import BUS_RESYNC, Bus
from thingcloud.clock import Clock
from thingcloud.errors import Unauthorized
from thingcloud.ids import HEX32, new_id, new_token, token_digest
from thingcloud.runtime import Runtime

CACHE_SECONDS = 30.0
CACHE_MAX = 100_000


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int | None
    refresh_token: str | None
    scope: str

    def oauth_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.refresh_token:
            body["refresh_token"] = self.refresh_token
        return body


class TokenCache:
    """access-token digest → (Principal, cached at). Bounded; emptied by revocation events."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._entries: dict[str, tuple[Principal, float]] = {}
        # Bumped by every revocation: a lookup that started before one must not cache its result,
        # or a token revoked while its row was being read would stay usable for CACHE_SECONDS.
        self.generation = 0

    async def attach(self, bus: Bus) -> None:
        await bus.subscribe("token.revoked", self._on_revoked)
        await bus.subscribe(BUS_RESYNC, self._on_revoked)  # revocations may have been missed

    async def _on_revoked(self, subject: str, payload: dict[str, Any]) -> None:
        self.generation += 1
        for digest in payload.get("hashes", []):
            self._entries.pop(digest, None)
        if payload.get("all") or subject == BUS_RESYNC:
            self._entries.clear()

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        principal, cached_at = entry
        if self.clock.now() - cached_at > CACHE_SECONDS:
            self._entries.pop(digest, None)
            return None
        return principal

    def put(self, digest: str, principal: Principal, generation: int) -> None:
        if generation != self.generation:
            return
        if len(self._entries) >= CACHE_MAX:
            self._entries.clear()
        self._entries[digest] = (principal, self.clock.now())


def normalize_scope(scope: str | None) -> str:
    """``read,write`` style; space- or comma-separated input; default read and write."""
    if not scope:
        return "read,write"
    parts = {p.strip().lower() for p in scope.replace(" ", ",").split(",") if p.strip()}
    kept = [p for p in ("read", "write") if p in parts]
    return ",".join(kept) or "read,write"


async def issue_user_token(rt: Runtime, conn: AsyncConnection, uid: str, aid: str, scope: str) -> IssuedToken:
    """A user token with its refresh token; records the user's grant to the application."""
    now = rt.clock.now_ms()
    access, refresh = new_token(), new_token()
    ttl = rt.settings.user_token_ttl
    await conn.execute(
        insert(t.tokens).values(
            id=new_id(),
            kind="user",
            access_hash=token_digest(access),
            refresh_hash=token_digest(refresh),
            uid=uid,
            aid=aid,
            scope=scope,
            expires_at=now + ttl * 1000,
            refresh_expires_at=now + rt.settings.refresh_token_ttl * 1000,
            created_on=now,
        )
    )
    await record_grant(conn, uid, aid, scope, now)
    return IssuedToken(access, ttl, refresh, scope)


async def record_grant(conn: AsyncConnection, uid: str, aid: str, scope: str, now: int) -> None:
    existing = await conn.execute(
        select(t.grants.c.scope).where(t.grants.c.uid == uid, t.grants.c.aid == aid)
    )
    if existing.first() is None:
        await conn.execute(insert(t.grants).values(uid=uid, aid=aid, scope=scope, created_on=now))
    else:
        await conn.execute(
            update(t.grants).where(t.grants.c.uid == uid, t.grants.c.aid == aid).values(scope=scope)
        )


async def issue_app_token(rt: Runtime, aid: str, scope: str) -> IssuedToken:
    now = rt.clock.now_ms()
    access = new_token()
    ttl = rt.settings.app_token_ttl
    async with rt.db.write() as conn:
        await conn.execute(
            insert(t.tokens).values(
                id=new_id(),
                kind="app",
                access_hash=token_digest(access),
                aid=aid,
                scope=scope,
                expires_at=now + ttl * 1000,
                created_on=now,
            )
        )
    return IssuedToken(access, ttl, None, scope)


async def issue_device_token(
    rt: Runtime, conn: AsyncConnection, did: str, uid: str, aid: str
) -> tuple[str, list[str]]:
    """A new never-expiring token for device ``did`` (owner ``uid``, created through application
    ``aid``), inside the caller's transaction. It replaces the device's previous token: the digests
    of the replaced ones are returned so the caller can ``announce_revoked`` them after the commit."""
    replaced = await drop_device_tokens(conn, did)
    access = new_token()
    await conn.execute(
        insert(t.tokens).values(
            id=new_id(),
            kind="device",
            access_hash=token_digest(access),
            uid=uid,
            aid=aid,
            did=did,
            scope="read,write",
            expires_at=None,
            secret_encrypted=rt.box.encrypt(access),
            created_on=rt.clock.now_ms(),
        )
    )
    return access, replaced


async def drop_device_tokens(conn: AsyncConnection, did: str) -> list[str]:
    """Delete the tokens of device ``did``; returns their digests (to announce after the commit)."""
    rows = await conn.execute(
        delete(t.tokens)
        .where(t.tokens.c.kind == "device", t.tokens.c.did == did)
        .returning(t.tokens.c.access_hash)
    )
    return [r[0] for r in rows]


async def authenticate(rt: Runtime, token: str) -> Principal:
    """Resolve a presented bearer token, or raise ``Unauthorized``."""
    token = token.strip().lower()
    if not HEX32.match(token):
        raise Unauthorized()
    digest = token_digest(token)
    principal = rt.token_cache.get(digest)
    if principal is None:
        generation = rt.token_cache.generation
        principal = await _load(rt, digest)
        rt.token_cache.put(digest, principal, generation)
    if principal.expires_at is not None and principal.expires_at <= rt.clock.now_ms():
        raise Unauthorized()
    return principal


async def _load(rt: Runtime, digest: str) -> Principal:
    query = (
        select(t.tokens, t.applications.c.permissions)
        .select_from(t.tokens.outerjoin(t.applications, t.applications.c.id == t.tokens.c.aid))
        .where(t.tokens.c.access_hash == digest)
    )
    async with rt.db.read() as conn:
        row = (await conn.execute(query)).mappings().first()
    if row is None:
        raise Unauthorized()
    return Principal(
        kind=row["kind"],
        token_id=row["id"],
        uid=row["uid"],
        aid=row["aid"],
        did=row["did"],
        scope=frozenset(row["scope"].split(",")),
        app=AppPermissions.from_json(row["permissions"]) if row["aid"] else None,
        expires_at=row["expires_at"],
    )


def parse_authorization(header: str | None) -> str:
    """The token of an ``Authorization: bearer <token>`` header (scheme case-insensitive)."""
    if not header:
        raise Unauthorized()
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized()
    return value.strip()


async def refresh(rt: Runtime, refresh_token: str, aid: str | None) -> IssuedToken:
    """Trade a refresh token for a new access/refresh pair; the old pair stops working."""
    from thingcloud.errors import OAuthError

    digest = token_digest(refresh_token.strip().lower())
    async with rt.db.write() as conn:
        row = (
            (await conn.execute(select(t.tokens).where(t.tokens.c.refresh_hash == digest))).mappings().first()
        )
        if row is None or (aid is not None and row["aid"] != aid):
            raise OAuthError("invalid_grant", "Unknown or revoked refresh token")
        if row["refresh_expires_at"] is not None and row["refresh_expires_at"] <= rt.clock.now_ms():
            raise OAuthError("invalid_grant", "The refresh token has expired")
        consumed = await conn.execute(delete(t.tokens).where(t.tokens.c.id == row["id"]))
        if consumed.rowcount != 1:
            # A concurrent refresh with the same token won (PostgreSQL): one refresh, one new pair.
            raise OAuthError("invalid_grant", "Unknown or revoked refresh token")
        issued = await issue_user_token(rt, conn, row["uid"], row["aid"], row["scope"])
    await announce_revoked(rt, [row["access_hash"]])
    return issued


async def revoke_token(rt: Runtime, principal: Principal) -> None:
    async with rt.db.write() as conn:
        row = (
            await conn.execute(
                delete(t.tokens).where(t.tokens.c.id == principal.token_id).returning(t.tokens.c.access_hash)
            )
        ).first()
    if row is not None:
        await announce_revoked(rt, [row[0]])


async def announce_revoked(rt: Runtime, digests: list[str]) -> None:
    await rt.bus.publish("token.revoked", {"hashes": digests})


def token_info(rt: Runtime, principal: Principal) -> dict[str, Any]:
    """The ``/tokenInfo`` body (REFERENCE.md §1.4): ids of what the token is bound to."""
    info: dict[str, Any] = {"client_id": principal.aid}
    if principal.uid is not None and principal.kind != "device":
        info["user_id"] = principal.uid
    if principal.kind == "device":
        info["device_id"] = principal.did
        info["user_id"] = principal.uid
    if principal.expires_at is None:
        info["expires_in"] = None
    else:
        info["expires_in"] = max(0, (principal.expires_at - rt.clock.now_ms()) // 1000)
    return info
