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

from sqlalchemy import ColumnElement, and_, false, or_, select

from thingcloud import tables as t
from thingcloud.errors import Forbidden, ValidationFailed
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


# --- Registry: organizations, device types, devices --------------------------------------------------

ORG_ROLES = ("administrator", "developer")


async def org_role(rt: Runtime, uid: str | None, oid: str | None) -> str | None:
    """The role of user ``uid`` in organization ``oid`` (``administrator``/``developer``) or None."""
    if uid is None or oid is None:
        return None
    async with rt.db.read() as conn:
        row = await conn.execute(
            select(t.organization_members.c.role).where(
                t.organization_members.c.oid == oid, t.organization_members.c.uid == uid
            )
        )
        return row.scalar()


async def app_organization(rt: Runtime, aid: str | None) -> str | None:
    if aid is None:
        return None
    async with rt.db.read() as conn:
        return (await conn.execute(select(t.applications.c.oid).where(t.applications.c.id == aid))).scalar()


async def check_organization(rt: Runtime, principal: Principal, oid: str, *, manage: bool) -> None:
    """Members see their organization; only administrators (or its own applications) manage it."""
    if principal.kind == "app" and await app_organization(rt, principal.aid) == oid:
        return
    role = await org_role(rt, principal.uid if principal.kind == "user" else None, oid)
    if role is None or (manage and role != "administrator"):
        raise Forbidden.missing("organization", [oid])


async def user_owns_device_type(rt: Runtime, uid: str | None, dt: Any) -> bool:
    """Is user ``uid`` an owner of device type ``dt``: its owner user or a member of its organization?"""
    if uid is None:
        return False
    if dt["owner_uid"] is not None and dt["owner_uid"] == uid:
        return True
    return await org_role(rt, uid, dt["oid"]) is not None


async def owns_device_type(rt: Runtime, principal: Principal, dt: Any) -> bool:
    """Owner of a device type: its user, a member of its organization, or the organization's app."""
    if principal.kind == "user":
        return await user_owns_device_type(rt, principal.uid, dt)
    if principal.kind == "app" and dt["oid"] is not None:
        return await app_organization(rt, principal.aid) == dt["oid"]
    if principal.kind == "app" and dt["owner_uid"] is not None:
        # An application token acting for the type's owner, who authorized it.
        return await has_granted(rt, dt["owner_uid"], str(principal.aid))
    return False


async def check_device_type_read(rt: Runtime, principal: Principal, dt: Any) -> None:
    """Published device types are visible to every token; unpublished ones only to their owners."""
    if dt["published"]:
        return
    if principal.kind == "device":
        async with rt.db.read() as conn:
            own_type = (
                await conn.execute(select(t.devices.c.dtid).where(t.devices.c.id == principal.did))
            ).scalar()
        if own_type == dt["id"]:
            return
    elif await owns_device_type(rt, principal, dt):
        return
    raise Forbidden.missing("device_type", [dt["id"]])


async def check_device_type_manage(rt: Runtime, principal: Principal, dt: Any) -> None:
    """Changing a device type or adding manifests: its owner user, or its organization's
    administrators and developers (and the organization's own applications)."""
    if principal.kind == "device" or not _scope_allows(principal, Access.WRITE):
        raise Forbidden.missing("device_type", [dt["id"]])
    if not await owns_device_type(rt, principal, dt):
        raise Forbidden.missing("device_type", [dt["id"]])


async def check_device_type_create(
    rt: Runtime, principal: Principal, oid: str | None
) -> tuple[str | None, str | None]:
    """Who will own a new device type: ``(owner_uid, oid)``.

    A user creates types of their own, or of an organization they belong to (any role); an
    organization's application creates types of that organization only; device tokens never do.
    """
    if principal.kind == "device" or not _scope_allows(principal, Access.WRITE):
        raise Forbidden.missing("device_type", [""])
    if oid is not None:
        if principal.kind == "app":
            if await app_organization(rt, principal.aid) != oid:
                raise Forbidden.missing("organization", [oid])
        elif await org_role(rt, principal.uid, oid) is None:
            raise Forbidden.missing("organization", [oid])
        return principal.uid, oid
    if principal.kind != "user":
        raise Forbidden("An application token creates device types only for its organization ('oid')")
    return principal.uid, None


def device_type_owned_clause(principal: Principal) -> ColumnElement[bool]:
    """SQL twin of ``owns_device_type``, to mark (and filter) a whole page of device types at once."""
    dt = t.device_types.c
    if principal.kind == "user":
        memberships = select(t.organization_members.c.oid).where(
            t.organization_members.c.uid == principal.uid
        )
        return or_(dt.owner_uid == principal.uid, dt.oid.in_(memberships))
    if principal.kind == "app":
        app_oid = select(t.applications.c.oid).where(t.applications.c.id == principal.aid)
        granted = select(t.grants.c.uid).where(t.grants.c.aid == principal.aid)
        return or_(
            and_(dt.oid.is_not(None), dt.oid.in_(app_oid)),
            and_(dt.oid.is_(None), dt.owner_uid.in_(granted)),
        )
    return false()


def device_type_visible_clause(principal: Principal) -> ColumnElement[bool]:
    """SQL twin of ``check_device_type_read``: published types, owned types, a device's own type."""
    dt = t.device_types.c
    if principal.kind == "device":
        own_type = select(t.devices.c.dtid).where(t.devices.c.id == principal.did)
        return or_(dt.published.is_(True), dt.id.in_(own_type))
    return or_(dt.published.is_(True), device_type_owned_clause(principal))


def device_type_onboard_clause(principal: Principal) -> ColumnElement[bool]:
    """SQL twin of ``check_onboard``: the types whose devices the caller's application may create."""
    if principal.kind == "device" or not _scope_allows(principal, Access.WRITE):
        return false()
    app = principal.app or AppPermissions()
    listed = {dtid: rights for dtid, rights in app.device_types.items() if dtid != "*"}
    dtid = t.device_types.c.id
    if "WRITE" in app.device_types.get("*", frozenset()):
        return dtid.not_in([d for d, rights in listed.items() if "WRITE" not in rights])
    return dtid.in_([d for d, rights in listed.items() if "WRITE" in rights])


async def accepted_share(rt: Runtime, uid: str, did: str) -> bool:
    async with rt.db.read() as conn:
        row = await conn.execute(
            select(t.device_shares.c.id).where(
                t.device_shares.c.did == did,
                t.device_shares.c.recipient_uid == uid,
                t.device_shares.c.status == "ACCEPTED",
            )
        )
        return row.first() is not None


async def device_relation(rt: Runtime, principal: Principal, device: Any) -> str | None:
    """How the caller relates to a device: ``self`` (its token), ``owner``, ``shared`` or None."""
    if principal.kind == "device":
        return "self" if principal.did == device["id"] else None
    if principal.kind == "user":
        if principal.uid == device["uid"]:
            return "owner"
        return "shared" if await accepted_share(rt, str(principal.uid), device["id"]) else None
    # Application token: for the owner (or an accepted recipient) who authorized the application.
    if await has_granted(rt, device["uid"], str(principal.aid)):
        return "owner"
    async with rt.db.read() as conn:
        rows = await conn.execute(
            select(t.device_shares.c.recipient_uid).where(
                t.device_shares.c.did == device["id"], t.device_shares.c.status == "ACCEPTED"
            )
        )
        recipients = [r[0] for r in rows if r[0]]
    for uid in recipients:
        if await has_granted(rt, uid, str(principal.aid)):
            return "shared"
    return None


async def check_device(rt: Runtime, principal: Principal, device: Any, access: Access) -> str:
    """READ or WRITE on one device; returns the relation (``self``/``owner``/``shared``).

    user token = (owner or accepted share recipient) ∩ app permission on the device's type ∩ scope;
    application token = same, for users who authorized the app; device token = itself only.
    """
    relation = await device_relation(rt, principal, device)
    if relation is None:
        raise Forbidden.missing("device", [device["id"]])
    if principal.kind == "device":
        return relation
    if not _scope_allows(principal, access):
        raise Forbidden.missing("device", [device["id"]])
    app = principal.app or AppPermissions()
    if not app.on_device_type(device["dtid"], access):
        raise Forbidden.missing("device_type", [device["dtid"]])
    return relation


async def check_device_owner(rt: Runtime, principal: Principal, device: Any, access: Access) -> None:
    """Calls that need the owner's rights over a device (shares, tokens): recipients are refused."""
    relation = await check_device(rt, principal, device, access)
    if relation != "owner":
        raise Forbidden.missing("device", [device["id"]])


def check_onboard(principal: Principal, dtid: str) -> None:
    """Creating a device of type ``dtid`` needs WRITE on the type for the token's application."""
    if principal.kind == "device":
        raise Forbidden("Device tokens cannot create devices")
    app = principal.app or AppPermissions()
    if not app.on_device_type(dtid, Access.WRITE) or not _scope_allows(principal, Access.WRITE):
        raise Forbidden.missing("device_type", [dtid])


def device_type_filter(principal: Principal, access: Access) -> tuple[bool, frozenset[str]]:
    """The device types whose devices a list may show to this token's application, for SQL filters:
    ``(True, ids)`` = every type except ``ids``; ``(False, ids)`` = only ``ids``."""
    if principal.kind == "device" or not _scope_allows(principal, access):
        return False, frozenset()
    rights = (principal.app or AppPermissions()).device_types
    named = {dtid: allowed for dtid, allowed in rights.items() if dtid != "*"}
    if access.value in rights.get("*", frozenset()):
        return True, frozenset(d for d, allowed in named.items() if access.value not in allowed)
    return False, frozenset(d for d, allowed in named.items() if access.value in allowed)


# --- Scenes -----------------------------------------------------------------------------------------

SCENE_DEVICE_TYPE = "cloud.artik.scene"
"""The special "Scene" device type that gates the Scenes API for applications (REFERENCE.md §1.5):
no device type row exists, applications name it in their permissions by this unique name
(``devicetypes:cloud.artik.scene:READ,WRITE``; the default ``*`` includes it)."""


def check_scenes(principal: Principal, access: Access) -> None:
    """The Scenes API: user and application tokens whose application has ``access`` on the Scene
    device type (READ to read and activate, WRITE to create, change and delete) within the granted
    scope. Rights on the devices a scene sends to are checked on top, per device."""
    if principal.kind == "device":
        raise Forbidden("Scenes are managed with a user or application token")
    app = principal.app or AppPermissions()
    if not _scope_allows(principal, access) or not app.on_device_type(SCENE_DEVICE_TYPE, access):
        raise Forbidden.missing("device_type", [SCENE_DEVICE_TYPE])


# --- Device management (/devicemgmt, REFERENCE.md §1.6, §4.14) --------------------------------------


async def is_devicemgmt_admin(rt: Runtime, principal: Principal, dt: Any) -> bool:
    """Who manages a device type's fleet: an administrator of the type's organization with a user
    token of one of the organization's applications, or the organization's own application token.
    A type without an organization is managed by its owner user (through an application allowed on
    the type). Developers of the organization are not administrators here (§4.14)."""
    if principal.kind == "app":
        return dt["oid"] is not None and await app_organization(rt, principal.aid) == dt["oid"]
    if principal.kind != "user":
        return False
    if dt["oid"] is None:
        app = principal.app or AppPermissions()
        return dt["owner_uid"] == principal.uid and app.on_device_type(dt["id"], Access.READ)
    return (
        await org_role(rt, principal.uid, dt["oid"]) == "administrator"
        and await app_organization(rt, principal.aid) == dt["oid"]
    )


async def check_devicemgmt_type(rt: Runtime, principal: Principal, dt: Any, access: Access) -> None:
    """Type-level device management (cross-device property queries, DM configuration and manifest,
    tasks): only ``is_devicemgmt_admin`` callers, within their granted scope; never a device token."""
    if principal.kind == "device" or not _scope_allows(principal, access):
        raise Forbidden.missing("device_type", [dt["id"]])
    if not await is_devicemgmt_admin(rt, principal, dt):
        raise Forbidden.missing("device_type", [dt["id"]])


async def check_devicemgmt_device(
    rt: Runtime, principal: Principal, device: Any, dt: Any, access: Access
) -> None:
    """One device's DM properties: its own device token, its owner's user token (an application
    allowed on its type), or a type-level administrator (``is_devicemgmt_admin``). Share recipients
    and other applications of the owner are refused."""
    if principal.kind == "device":
        if principal.did != device["id"]:
            raise Forbidden.missing("device", [device["id"]])
        return
    if not _scope_allows(principal, access):
        raise Forbidden.missing("device", [device["id"]])
    if await is_devicemgmt_admin(rt, principal, dt):
        return
    if principal.kind == "user" and principal.uid == device["uid"]:
        await check_device(rt, principal, device, access)
        return
    raise Forbidden.missing("device", [device["id"]])


# --- Device shares ----------------------------------------------------------------------------------


async def check_shareable(rt: Runtime, dt: Any, recipient_uid: str | None) -> None:
    """Devices of an unpublished device type may only be shared among the type's owners (S26): a
    private type's devices must not leak to users who cannot even see the type."""
    if dt["published"]:
        return
    if not await user_owns_device_type(rt, recipient_uid, dt):
        raise ValidationFailed.field(
            "email", "Devices of an unpublished device type can only be shared with its owners"
        )


async def share_recipient_uid(rt: Runtime, share: Any) -> str | None:
    """The recipient's user id: recorded on the share, or found by its email once they signed up."""
    if share["recipient_uid"] is not None:
        return str(share["recipient_uid"])
    async with rt.db.read() as conn:
        found = await conn.execute(select(t.users.c.id).where(t.users.c.email == share["email"]))
        return found.scalar()


async def check_share_recipient(rt: Runtime, principal: Principal, share: Any, access: Access) -> str:
    """Reading, accepting or rejecting a share as its recipient: the recipient's user token, or an
    application token acting for the recipient who authorized it. Returns the recipient's user id."""
    refused = Forbidden.missing("share", [share["id"]])
    if principal.kind == "device" or not _scope_allows(principal, access):
        raise refused
    recipient = await share_recipient_uid(rt, share)
    if recipient is None:
        raise refused
    if principal.kind == "user" and principal.uid == recipient:
        return recipient
    if principal.kind == "app" and await has_granted(rt, recipient, str(principal.aid)):
        return recipient
    raise refused


async def check_share_read(rt: Runtime, principal: Principal, device: Any, share: Any) -> None:
    """A share is visible to the device's owner and to the share's recipient."""
    try:
        await check_device_owner(rt, principal, device, Access.READ)
    except Forbidden:
        await check_share_recipient(rt, principal, share, Access.READ)
