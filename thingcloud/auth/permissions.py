"""The one place that decides who may do what (REFERENCE.md §1.5–1.6).

A request is made by a ``Principal``: a user token (a user through an application), an application
token (an application on behalf of the users who authorized it) or a device token (one device).

* user token: the user's own rights ∩ the application's permissions ∩ the granted OAuth scope;
* application token: rights over users who authorized the application, ∩ its permissions;
* device token: its own device only.

Every endpoint asks here; no handler checks access on its own. Later areas add their checks to this
module (devices, device types, organizations) so the rules stay in one file.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select

from thingcloud import tables as t
from thingcloud.errors import Forbidden
from thingcloud.runtime import Runtime

TokenKind = Literal["user", "app", "device"]


class Access(enum.Enum):
    READ = "READ"
    WRITE = "WRITE"

    @property
    def scope(self) -> str:
        return self.value.lower()


@dataclass(frozen=True)
class AppPermissions:
    """What an application may touch: the user profile, and device types (``*`` = all of them)."""

    profile: frozenset[str] = frozenset({"READ", "WRITE"})
    device_types: dict[str, frozenset[str]] = field(
        default_factory=lambda: {"*": frozenset({"READ", "WRITE"})}
    )

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> AppPermissions:
        if not doc:
            return cls()
        return cls(
            profile=frozenset(doc.get("profile", [])),
            device_types={k: frozenset(v) for k, v in (doc.get("deviceTypes") or {}).items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": sorted(self.profile),
            "deviceTypes": {k: sorted(v) for k, v in sorted(self.device_types.items())},
        }

    def on_device_type(self, dtid: str, access: Access) -> bool:
        allowed = self.device_types.get(dtid)
        if allowed is None:
            allowed = self.device_types.get("*", frozenset())
        return access.value in allowed


@dataclass(frozen=True)
class Principal:
    """Who is calling, as resolved from a bearer token."""

    kind: TokenKind
    token_id: str
    uid: str | None
    aid: str | None
    did: str | None
    scope: frozenset[str]
    app: AppPermissions | None
    expires_at: int | None  # epoch ms; None = never

    @property
    def rate_actor(self) -> tuple[str, str]:
        """The rate-limit identity: per user-per-application, per device, per application."""
        if self.kind == "user":
            return "user", f"{self.uid}:{self.aid}"
        if self.kind == "device":
            return "device", str(self.did)
        return "app", str(self.aid)


def require_user_token(principal: Principal) -> str:
    """For calls only a user token may make (``/users/self``). Returns the user id."""
    if principal.kind != "user" or principal.uid is None:
        raise Forbidden("This call requires a user token")
    return principal.uid


def require_application(principal: Principal) -> str:
    """For calls bound to the token's application (user properties). Returns the application id."""
    if principal.kind == "device" or principal.aid is None:
        raise Forbidden("This call requires a user or application token")
    return principal.aid


def _scope_allows(principal: Principal, access: Access) -> bool:
    return access.scope in principal.scope


async def check_user(rt: Runtime, principal: Principal, uid: str, access: Access) -> None:
    """May ``principal`` read or write the profile-level data of user ``uid``?"""
    if principal.kind == "device":
        raise Forbidden.missing("user", [uid])
    app = principal.app or AppPermissions()
    if access.value not in app.profile or not _scope_allows(principal, access):
        raise Forbidden.missing("user", [uid])
    if principal.kind == "user":
        if principal.uid != uid:
            raise Forbidden.missing("user", [uid])
        return
    # Application token: only users who authorized this application.
    if not await has_granted(rt, uid, str(principal.aid)):
        raise Forbidden.missing("user", [uid])


async def has_granted(rt: Runtime, uid: str, aid: str) -> bool:
    async with rt.db.read() as conn:
        row = await conn.execute(select(t.grants.c.uid).where(t.grants.c.uid == uid, t.grants.c.aid == aid))
        return row.first() is not None
