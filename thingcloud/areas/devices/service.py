"""Devices and their tokens: creating, reading, listing, updating and deleting devices (S6, S11–S14)
and issuing, showing and revoking device tokens (S15–S17).

Every function takes the calling ``Principal`` and asks ``auth.permissions`` before it reads or
writes, so REST, the CLI and the device channels share one set of rules. Lifecycle changes are
published on the bus (``device.new``, ``device.updated``, ``device.deleted``,
``device.token.revoked``) after the commit; later areas react to those events instead of being
called from here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import feed, jobs
from thingcloud import tables as t
from thingcloud.areas.devices.schemas import Device, DeviceCreate, DeviceToken, DeviceUpdate
from thingcloud.areas.devicetypes.service import device_type_row
from thingcloud.auth.permissions import (
    Access,
    Principal,
    check_device,
    check_device_owner,
    check_device_type_read,
    check_onboard,
    check_user,
    device_type_filter,
    require_application,
)
from thingcloud.auth.tokens import announce_revoked, drop_device_tokens, issue_device_token
from thingcloud.errors import FieldError, NotFound, ValidationFailed
from thingcloud.feed import FeedEntry
from thingcloud.ids import new_id
from thingcloud.runtime import Runtime

POLICIES = ("LATEST", "DEVICE")
OWNER_FILTERS = ("ALL", "ME", "SHARED_WITH_ME")
NAME_MIN, NAME_MAX = 5, 36
MAX_PAGE = 100

_dt = t.device_types
_status = t.device_status


def page_bounds(count: int | None, offset: int | None) -> tuple[int, int]:
    """``count`` clamped to [1, 100] (REFERENCE.md §2.3), ``offset`` ≥ 0."""
    if offset is not None and offset < 0:
        raise ValidationFailed.field("offset", "Minimum value 0")
    return max(1, min(MAX_PAGE, count if count is not None else MAX_PAGE)), offset or 0


def validate_device_fields(
    name: str | None, policy: str | None, version: int | None, *, creating: bool
) -> list[FieldError]:
    problems: list[FieldError] = []
    if name is None and creating:
        problems.append(FieldError("name", ("Required parameter",)))
    elif name is not None and len(name.strip()) < NAME_MIN:
        problems.append(FieldError("name", (f"Minimum length {NAME_MIN}",)))
    elif name is not None and len(name.strip()) > NAME_MAX:
        problems.append(FieldError("name", (f"Maximum length {NAME_MAX}",)))
    if policy is not None and policy not in POLICIES:
        problems.append(FieldError("manifestVersionPolicy", ("Must be LATEST or DEVICE",)))
    if version is not None and version < 1:
        problems.append(FieldError("manifestVersion", ("Minimum value 1",)))
    return problems


async def _manifest_exists(rt: Runtime, dtid: str, version: int) -> bool:
    async with rt.db.read() as conn:
        found = await conn.execute(
            select(t.manifests.c.version).where(t.manifests.c.dtid == dtid, t.manifests.c.version == version)
        )
        return found.first() is not None


def _device_query() -> Select[Any]:
    """A device with what its public form needs from its type and its status row."""
    return select(
        t.devices,
        _dt.c.latest_version.label("dt_latest_version"),
        _dt.c.name.label("dt_name"),
        _dt.c.published.label("dt_published"),
        _dt.c.protected.label("dt_protected"),
        _status.c.connected.label("status_connected"),
    ).select_from(
        t.devices.join(_dt, _dt.c.id == t.devices.c.dtid).outerjoin(_status, _status.c.did == t.devices.c.id)
    )


def to_device(
    row: Any,
    *,
    include_properties: bool = False,
    include_type_info: bool = False,
    share_info: tuple[bool, str | None] | None = None,
) -> Device:
    latest = row["dt_latest_version"] or None
    version = latest if row["manifest_version_policy"] == "LATEST" and latest else row["manifest_version"]
    return Device(
        id=row["id"],
        uid=row["uid"],
        dtid=row["dtid"],
        name=row["name"],
        manifestVersion=version,
        manifestVersionPolicy=row["manifest_version_policy"],
        needProviderAuth=row["need_provider_auth"],
        cloudAuthorization=row["cloud_authorization"],
        properties=(row["properties"] or {}) if include_properties else None,
        createdOn=row["created_on"],
        connected=bool(row["status_connected"]),
        certificateInfo=row["certificate_info"],
        certificateSignature=row["certificate_signature"],
        eid=row["eid"],
        providerCredentials=None,
        sharedWithOthers=share_info[0] if share_info else None,
        sharedWithMe=share_info[1] if share_info else None,
        deviceTypeName=row["dt_name"] if include_type_info else None,
        deviceTypeIsPublished=row["dt_published"] if include_type_info else None,
        deviceTypeIsProtected=row["dt_protected"] if include_type_info else None,
    )


async def device_row(rt: Runtime, did: str) -> dict[str, Any]:
    """The device with its type and status columns (see ``_device_query``), or 404."""
    async with rt.db.read() as conn:
        row = (await conn.execute(_device_query().where(t.devices.c.id == did))).mappings().first()
    if row is None:
        raise NotFound(f"Device {did} not found")
    return dict(row)


async def get_device(rt: Runtime, principal: Principal, did: str, include_properties: bool) -> Device:
    row = await device_row(rt, did)
    await check_device(rt, principal, row, Access.READ)
    return to_device(row, include_properties=include_properties)


async def create_device(rt: Runtime, principal: Principal, body: DeviceCreate) -> Device:
    """``POST /devices``: validate, check the owner and the device type, then store (S12)."""
    require_application(principal)  # device tokens never create devices
    problems = validate_device_fields(
        body.name, body.manifestVersionPolicy, body.manifestVersion, creating=True
    )
    if not body.dtid:
        problems.append(FieldError("dtid", ("Required parameter",)))
    uid = body.uid or (principal.uid if principal.kind == "user" else None)
    if not uid:
        problems.append(FieldError("uid", ("Required parameter",)))
    if problems:
        raise ValidationFailed("Validation Error", problems)
    assert body.dtid is not None and body.name is not None and uid is not None
    await check_user(rt, principal, uid, Access.WRITE)
    dt = await device_type_row(rt, body.dtid)  # 404 1101
    await check_device_type_read(rt, principal, dt)
    check_onboard(principal, dt["id"])
    version = body.manifestVersion
    if version is not None and not await _manifest_exists(rt, dt["id"], version):
        raise ValidationFailed.field("manifestVersion", f"Manifest version {version} does not exist")
    now = rt.clock.now_ms()
    did = new_id()
    async with rt.db.write() as conn:
        await conn.execute(
            insert(t.devices).values(
                id=did,
                uid=uid,
                dtid=dt["id"],
                name=body.name.strip(),
                manifest_version=version or (int(dt["latest_version"]) or None),
                manifest_version_policy=body.manifestVersionPolicy or "LATEST",
                need_provider_auth=bool(dt["has_cloud_connector"]),
                cloud_authorization="UNAUTHORIZED" if dt["has_cloud_connector"] else "NO_AUTHORIZATION",
                properties={},
                created_on=now,
                modified_on=now,
            )
        )
    await rt.bus.publish("device.new", {"did": did, "uid": uid, "dtid": dt["id"]})
    return to_device(await device_row(rt, did))


async def update_device(rt: Runtime, principal: Principal, did: str, body: DeviceUpdate) -> Device:
    """``PUT /devices/{did}``: name, manifest version and policy (S13); owner only."""
    row = await device_row(rt, did)
    await check_device_owner(rt, principal, row, Access.WRITE)
    problems = validate_device_fields(
        body.name, body.manifestVersionPolicy, body.manifestVersion, creating=False
    )
    if problems:
        raise ValidationFailed("Validation Error", problems)
    changes: dict[str, Any] = {}
    if body.name is not None:
        changes["name"] = body.name.strip()
    if body.manifestVersion is not None:
        if not await _manifest_exists(rt, row["dtid"], body.manifestVersion):
            raise ValidationFailed.field(
                "manifestVersion", f"Manifest version {body.manifestVersion} does not exist"
            )
        changes["manifest_version"] = body.manifestVersion
    if body.manifestVersionPolicy is not None:
        changes["manifest_version_policy"] = body.manifestVersionPolicy
        if body.manifestVersionPolicy == "DEVICE" and "manifest_version" not in changes:
            # Pinning without naming a version pins the version the device uses right now.
            changes["manifest_version"] = to_device(row).manifestVersion
    if changes:
        changes["modified_on"] = rt.clock.now_ms()
        async with rt.db.write() as conn:
            await conn.execute(update(t.devices).where(t.devices.c.id == did).values(**changes))
        await rt.bus.publish("device.updated", {"did": did, "uid": row["uid"], "dtid": row["dtid"]})
    return to_device(await device_row(rt, did))


async def delete_device(rt: Runtime, principal: Principal, did: str) -> Device:
    """``DELETE /devices/{did}`` (S14): the device, its token, shares, status and snapshot go at once."""
    row = await device_row(rt, did)
    await check_device_owner(rt, principal, row, Access.WRITE)
    async with rt.db.write() as conn:
        removal = await remove_devices(rt, conn, [row])
        await record_removal(rt, conn, removal)
    await announce_removal(rt, removal)
    return to_device(row)


DeviceRemoval = tuple[list[str], list[dict[str, Any]]]


async def remove_devices(rt: Runtime, conn: AsyncConnection, rows: list[Any]) -> DeviceRemoval:
    """Delete devices in the caller's transaction (device deletion, user deletion): tokens, shares,
    status, snapshot and retention go at once; their messages and actions in the background, durably
    (the job commits with the delete). Then ``record_removal`` (last in the transaction) and, after
    the commit, ``announce_removal``."""
    revoked: list[str] = []
    events: list[dict[str, Any]] = []
    for row in rows:
        did = row["id"]
        revoked += await drop_device_tokens(conn, did)
        for table in (t.device_shares, t.device_snapshots, t.device_status, t.device_retention):
            await conn.execute(delete(table).where(table.c.did == did))
        await conn.execute(delete(t.devices).where(t.devices.c.id == did))
        await jobs.enqueue(
            rt, "messages.delete_device", {"did": did}, unique_key=f"delete-device:{did}", conn=conn
        )
        events.append({"did": did, "uid": row["uid"], "dtid": row["dtid"]})
    return revoked, events


async def record_removal(rt: Runtime, conn: AsyncConnection, removal: DeviceRemoval) -> None:
    """``device.deleted`` on the durable feed; the last statement of the transaction (thingcloud/feed.py)."""
    entries = [FeedEntry(kind="device.deleted", payload=e, ref=e["did"], did=e["did"]) for e in removal[1]]
    await feed.append(rt, conn, entries)


async def announce_removal(rt: Runtime, removal: DeviceRemoval) -> None:
    revoked, events = removal
    if events:
        await feed.announce(rt)
    if revoked:
        await announce_revoked(rt, revoked)
    for event in events:
        await rt.bus.publish("device.token.revoked", {"did": event["did"]})
        await rt.bus.publish("device.deleted", event)


async def list_user_devices(
    rt: Runtime,
    principal: Principal,
    uid: str,
    *,
    owner: str = "ALL",
    dtid: str | None = None,
    include_properties: bool = False,
    include_share_info: bool = False,
    include_type_info: bool = False,
    count: int | None = None,
    offset: int | None = None,
) -> tuple[list[Device], int, int]:
    """``GET /users/{uid}/devices`` (S6): owned and/or accepted-shared devices, in creation order,
    limited to the device types the token's application may read. Returns (page, total, offset)."""
    owner = owner.upper()
    if owner not in OWNER_FILTERS:
        raise ValidationFailed.field("owner", "Must be ALL, ME or SHARED_WITH_ME")
    limit, offset = page_bounds(count, offset)
    await check_user(rt, principal, uid, Access.READ)
    shared_with_user = select(t.device_shares.c.did).where(
        t.device_shares.c.recipient_uid == uid, t.device_shares.c.status == "ACCEPTED"
    )
    whose = {
        "ME": t.devices.c.uid == uid,
        "SHARED_WITH_ME": t.devices.c.id.in_(shared_with_user),
        "ALL": or_(t.devices.c.uid == uid, t.devices.c.id.in_(shared_with_user)),
    }[owner]
    conditions = [whose]
    if dtid:
        conditions.append(t.devices.c.dtid == dtid)
    all_but, dtids = device_type_filter(principal, Access.READ)
    if all_but and dtids:
        conditions.append(t.devices.c.dtid.not_in(dtids))
    elif not all_but:
        conditions.append(t.devices.c.dtid.in_(dtids))
    where = and_(*conditions)
    async with rt.db.read() as conn:
        total = (await conn.execute(select(func.count()).select_from(t.devices).where(where))).scalar_one()
        rows = (
            (
                await conn.execute(
                    _device_query()
                    .where(where)
                    .order_by(t.devices.c.created_on, t.devices.c.id)
                    .limit(limit)
                    .offset(offset)
                )
            )
            .mappings()
            .all()
        )
        shares = await _share_info(conn, uid, [r["id"] for r in rows]) if include_share_info else {}
    devices = [
        to_device(
            r,
            include_properties=include_properties,
            include_type_info=include_type_info,
            share_info=shares.get(r["id"], (False, None)) if include_share_info else None,
        )
        for r in rows
    ]
    return devices, int(total), offset


async def _share_info(conn: Any, uid: str, dids: list[str]) -> dict[str, tuple[bool, str | None]]:
    """did → (shared with others: a PENDING or ACCEPTED share exists, id of the share to ``uid``)."""
    if not dids:
        return {}
    rows = await conn.execute(
        select(
            t.device_shares.c.id,
            t.device_shares.c.did,
            t.device_shares.c.recipient_uid,
            t.device_shares.c.status,
            t.devices.c.uid,
        )
        .select_from(t.device_shares.join(t.devices, t.devices.c.id == t.device_shares.c.did))
        .where(t.device_shares.c.did.in_(dids), t.device_shares.c.status != "REJECTED")
    )
    info: dict[str, tuple[bool, str | None]] = {}
    for share_id, did, recipient, status, owner_uid in rows:
        others, mine = info.get(did, (False, None))
        if owner_uid == uid:
            others = True
        if recipient == uid and status == "ACCEPTED":
            mine = share_id
        info[did] = (others, mine)
    return info


# --- Device tokens ---------------------------------------------------------------------------------


async def _token_of(rt: Runtime, did: str) -> DeviceToken | None:
    async with rt.db.read() as conn:
        row = (
            (
                await conn.execute(
                    select(t.tokens.c.uid, t.tokens.c.aid, t.tokens.c.secret_encrypted)
                    .where(t.tokens.c.kind == "device", t.tokens.c.did == did)
                    .order_by(t.tokens.c.created_on.desc())
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        return None
    return DeviceToken(
        accessToken=rt.box.decrypt(row["secret_encrypted"]), uid=row["uid"], did=did, cid=row["aid"] or ""
    )


async def get_device_token(rt: Runtime, principal: Principal, did: str) -> DeviceToken:
    """``GET /devices/{did}/tokens`` (S15): shown again to the owner; 404 when there is none."""
    row = await device_row(rt, did)
    await check_device_owner(rt, principal, row, Access.READ)
    token = await _token_of(rt, did)
    if token is None:
        raise NotFound(f"Device {did} has no token")
    return token


async def renew_device_token(rt: Runtime, principal: Principal, did: str) -> DeviceToken:
    """``PUT /devices/{did}/tokens`` (S16): a new token; the old one stops working on every node."""
    row = await device_row(rt, did)
    await check_device_owner(rt, principal, row, Access.WRITE)
    aid = str(principal.aid)
    async with rt.db.write() as conn:
        access, revoked = await issue_device_token(rt, conn, did, row["uid"], aid)
    if revoked:
        await announce_revoked(rt, revoked)
        await rt.bus.publish("device.token.revoked", {"did": did})
    return DeviceToken(accessToken=access, uid=row["uid"], did=did, cid=aid)


async def revoke_device_token(rt: Runtime, principal: Principal, did: str) -> DeviceToken:
    """``DELETE /devices/{did}/tokens`` (S17): returns the revoked token; 404 when there is none."""
    row = await device_row(rt, did)
    await check_device_owner(rt, principal, row, Access.WRITE)
    token = await _token_of(rt, did)
    if token is None:
        raise NotFound(f"Device {did} has no token")
    async with rt.db.write() as conn:
        revoked = await drop_device_tokens(conn, did)
    if revoked:
        await announce_revoked(rt, revoked)
        await rt.bus.publish("device.token.revoked", {"did": did})
    return token
