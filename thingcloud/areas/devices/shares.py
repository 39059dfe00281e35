"""Device shares (S24–S27, §5.1): an owner invites a recipient by email; the share is PENDING until
the recipient accepts it (then the recipient has READ and WRITE on the device) or rejects it.

Only the owner shares, lists and revokes; recipients cannot re-share. Devices of an unpublished
device type are shared only among the type's owners. Access is decided from the share rows on every
request, so revoking (or rejecting) takes effect at once; ``device.share.revoked`` tells the live
channels to cut what is already open.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from thingcloud import tables as t
from thingcloud.areas.devices.schemas import DeviceSharing
from thingcloud.areas.devices.service import device_row, page_bounds
from thingcloud.areas.devicetypes.service import device_type_row
from thingcloud.areas.users.service import EMAIL
from thingcloud.auth.permissions import (
    Access,
    Principal,
    check_device_owner,
    check_share_read,
    check_share_recipient,
    check_shareable,
    check_user,
)
from thingcloud.errors import Conflict, NotFound, ValidationFailed
from thingcloud.ids import new_id
from thingcloud.runtime import Runtime

STATUSES = ("PENDING", "ACCEPTED", "REJECTED")
DECISIONS = ("ACCEPTED", "REJECTED")
FILTERS = {
    "ALL": None,
    "WAITING": "PENDING",
    "PENDING": "PENDING",
    "ACCEPTED": "ACCEPTED",
    "REJECTED": "REJECTED",
}

_shares = t.device_shares


def to_sharing(row: Any) -> DeviceSharing:
    return DeviceSharing(
        id=row["id"], email=row["email"], status=row["status"], sharedOn=row["shared_on"], did=row["did"]
    )


async def _user_email(rt: Runtime, uid: str) -> str | None:
    async with rt.db.read() as conn:
        return (await conn.execute(select(t.users.c.email).where(t.users.c.id == uid))).scalar()


async def share_row(rt: Runtime, did: str, share_id: str) -> dict[str, Any]:
    async with rt.db.read() as conn:
        row = (
            (await conn.execute(select(_shares).where(_shares.c.id == share_id, _shares.c.did == did)))
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"Share {share_id} not found")
    return dict(row)


async def create_share(rt: Runtime, principal: Principal, did: str, email: str | None) -> str:
    """``POST /devices/{did}/shares`` (S26): a PENDING share for ``email``; returns its id."""
    email = (email or "").strip().lower()
    if not email:
        raise ValidationFailed.field("email", "Required parameter")
    if len(email) > 254 or not EMAIL.match(email):
        raise ValidationFailed.field("email", "Invalid email")
    device = await device_row(rt, did)
    await check_device_owner(rt, principal, device, Access.WRITE)
    if email == await _user_email(rt, device["uid"]):
        raise ValidationFailed.field("email", "A device cannot be shared with its owner")
    async with rt.db.read() as conn:
        recipient = (await conn.execute(select(t.users.c.id).where(t.users.c.email == email))).scalar()
    await check_shareable(rt, await device_type_row(rt, device["dtid"]), recipient)
    share_id = new_id()
    async with rt.db.write() as conn:
        taken = await conn.execute(select(_shares.c.id).where(_shares.c.did == did, _shares.c.email == email))
        if taken.first():
            raise Conflict(f"The device is already shared with {email}")
        try:
            await conn.execute(
                insert(_shares).values(
                    id=share_id,
                    did=did,
                    owner_uid=device["uid"],
                    email=email,
                    recipient_uid=recipient,
                    status="PENDING",
                    shared_on=rt.clock.now_ms(),
                )
            )
        except IntegrityError as exc:
            raise Conflict(f"The device is already shared with {email}") from exc
    await rt.bus.publish("device.share.new", {"did": did, "id": share_id, "email": email, "uid": recipient})
    return share_id


async def list_device_shares(
    rt: Runtime, principal: Principal, did: str, count: int | None, offset: int | None
) -> tuple[list[DeviceSharing], int, int]:
    """``GET /devices/{did}/shares`` (S24): every share of the device, oldest first; owner only."""
    limit, offset = page_bounds(count, offset)
    await check_device_owner(rt, principal, await device_row(rt, did), Access.READ)
    async with rt.db.read() as conn:
        total = (
            await conn.execute(select(func.count()).select_from(_shares).where(_shares.c.did == did))
        ).scalar_one()
        rows = (
            await conn.execute(
                select(_shares)
                .where(_shares.c.did == did)
                .order_by(_shares.c.shared_on, _shares.c.id)
                .limit(limit)
                .offset(offset)
            )
        ).mappings()
        return [to_sharing(r) for r in rows], int(total), offset


async def get_share(rt: Runtime, principal: Principal, did: str, share_id: str) -> DeviceSharing:
    """``GET /devices/{did}/shares/{shareId}`` (S25): for the owner and for the recipient."""
    device = await device_row(rt, did)
    share = await share_row(rt, did, share_id)
    await check_share_read(rt, principal, device, share)
    return to_sharing(share)


async def delete_share(rt: Runtime, principal: Principal, did: str, share_id: str) -> str:
    """``DELETE /devices/{did}/shares/{shareId}`` (§5.1): the owner revokes; effective at once."""
    device = await device_row(rt, did)
    await check_device_owner(rt, principal, device, Access.WRITE)
    share = await share_row(rt, did, share_id)
    async with rt.db.write() as conn:
        await conn.execute(delete(_shares).where(_shares.c.id == share_id))
    await rt.bus.publish("device.share.revoked", {"did": did, "uid": share["recipient_uid"]})
    return share_id


async def decide_share(
    rt: Runtime, principal: Principal, did: str, share_id: str, status: str
) -> DeviceSharing:
    """Extension ``PUT /devices/{did}/shares/{shareId}``: the recipient accepts or rejects. Rejecting
    an accepted share withdraws the recipient's access at once."""
    status = status.strip().upper()
    if status not in DECISIONS:
        raise ValidationFailed.field("status", "Must be ACCEPTED or REJECTED")
    await device_row(rt, did)
    share = await share_row(rt, did, share_id)
    recipient = await check_share_recipient(rt, principal, share, Access.WRITE)
    async with rt.db.write() as conn:
        await conn.execute(
            update(_shares)
            .where(_shares.c.id == share_id)
            .values(status=status, recipient_uid=recipient, decided_on=rt.clock.now_ms())
        )
    if share["status"] == "ACCEPTED" and status == "REJECTED":
        await rt.bus.publish("device.share.revoked", {"did": did, "uid": recipient})
    elif status == "ACCEPTED" and share["status"] != "ACCEPTED":
        await rt.bus.publish("device.share.accepted", {"did": did, "uid": recipient})
    return to_sharing(await share_row(rt, did, share_id))


async def list_user_shares(
    rt: Runtime,
    principal: Principal,
    uid: str,
    share_filter: str | None,
    count: int | None,
    offset: int | None,
) -> tuple[list[DeviceSharing], int, int]:
    """``GET /users/{uid}/shares`` (S27): devices shared with user ``uid``. Each entry's ``email`` is
    the email of the user who shared the device (the recipient knows their own); ``did``, ``dtid``
    and ``uid`` (the owner) name the device."""
    key = (share_filter or "ALL").strip().upper()
    if key not in FILTERS:
        raise ValidationFailed.field("filter", "Must be ALL, WAITING, ACCEPTED or REJECTED")
    limit, offset = page_bounds(count, offset)
    await check_user(rt, principal, uid, Access.READ)
    email = await _user_email(rt, uid)
    mine = or_(
        _shares.c.recipient_uid == uid, and_(_shares.c.recipient_uid.is_(None), _shares.c.email == email)
    )
    conditions = [mine]
    if FILTERS[key] is not None:
        conditions.append(_shares.c.status == FILTERS[key])
    where = and_(*conditions)
    owners = t.users.alias("owners")
    async with rt.db.read() as conn:
        total = (await conn.execute(select(func.count()).select_from(_shares).where(where))).scalar_one()
        rows = (
            await conn.execute(
                select(_shares, t.devices.c.dtid, owners.c.email.label("owner_email"))
                .select_from(
                    _shares.join(t.devices, t.devices.c.id == _shares.c.did).join(
                        owners, owners.c.id == _shares.c.owner_uid
                    )
                )
                .where(where)
                .order_by(_shares.c.shared_on, _shares.c.id)
                .limit(limit)
                .offset(offset)
            )
        ).mappings()
        shares = [
            DeviceSharing(
                id=r["id"],
                email=r["owner_email"],
                status=r["status"],
                sharedOn=r["shared_on"],
                did=r["did"],
                dtid=r["dtid"],
                uid=r["owner_uid"],
            )
            for r in rows
        ]
    return shares, int(total), offset
