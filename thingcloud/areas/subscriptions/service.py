"""Subscriptions (S60–S63) and a notification's messages (S64): checks, storage, the public form.

A new ``httpCallback`` subscription is ``PENDING_CALLBACK_VALIDATION``; a durable job POSTs the
confirmation (``aid``, ``subscriptionId``, ``nonce``) and the client answers with ``validate``, which
makes it ``ACTIVE``. ``awsKinesis`` subscriptions are active at once (there is no callback to
confirm). Every change is announced on the bus (``subscriptions.changed``) so the matcher reloads.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update

from thingcloud import tables as t
from thingcloud.areas.devices.service import page_bounds
from thingcloud.areas.subscriptions import callbacks, sinks
from thingcloud.areas.subscriptions.schemas import SubscriptionInfo
from thingcloud.auth.applications import get_application
from thingcloud.auth.permissions import (
    Access,
    AppPermissions,
    Principal,
    accepted_share,
    has_granted,
)
from thingcloud.errors import DeviceTypeNotFound, FieldError, Forbidden, NotFound, ValidationFailed
from thingcloud.ids import new_id
from thingcloud.jobs import enqueue
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

CHANGED = "subscriptions.changed"
PENDING, ACTIVE, SUSPENDED = "PENDING_CALLBACK_VALIDATION", "ACTIVE", "SUSPENDED"
HTTP_CALLBACK, KINESIS = "httpCallback", "awsKinesis"
CONFIRM_JOB = "subscriptions.confirm"
_s = t.subscriptions


def public(row: Any) -> dict[str, Any]:
    """The Subscription as clients see it (REFERENCE.md §3.10); secrets never leave."""
    return {
        "id": row["id"],
        "aid": row["aid"],
        "uid": row["uid"],
        "messageType": row["message_type"],
        "subscriptionType": row["subscription_type"],
        "sdtid": row["sdtid"],
        "sdid": row["sdid"],
        "ddid": row["ddid"],
        "includeSharedDevices": bool(row["include_shared"]),
        "description": row["description"],
        "name": None,
        "callbackUrl": row["callback_url"],
        "awsKey": row["aws_key"],
        "awsSecret": None,
        "awsRegion": row["aws_region"],
        "awsKinesisStreamName": row["aws_stream"],
        "awsKinesisStream": row["aws_stream"],
        "status": row["status"],
        "failures": row["failures"],
        "createdOn": row["created_on"],
        "modifiedOn": row["modified_on"],
    }


async def announce(rt: Runtime, sid: str) -> None:
    try:
        await rt.bus.publish(CHANGED, {"sid": sid})
    except Exception as exc:  # the matcher also notices changes by itself (fingerprint)
        log.warning("subscription change not published: %s", type(exc).__name__)


def _application_of(principal: Principal) -> str:
    if principal.kind == "device" or principal.aid is None:
        raise Forbidden("Subscriptions need a user or application token")
    return principal.aid


async def _check_subscriber(rt: Runtime, principal: Principal, uid: str) -> None:
    """A user token subscribes to its own user; an application token to users who authorized it."""
    if Access.READ.scope not in principal.scope:
        raise Forbidden.missing("user", [uid])
    if principal.kind == "user":
        if principal.uid != uid:
            raise Forbidden.missing("user", [uid])
        return
    async with rt.db.read() as conn:
        known = await conn.scalar(select(t.users.c.id).where(t.users.c.id == uid))
    if known is None or not await has_granted(rt, uid, str(principal.aid)):
        raise Forbidden.missing("user", [uid])


async def _check_device(rt: Runtime, principal: Principal, uid: str, did: str) -> None:
    """The device belongs to (or is shared with) ``uid`` and the application may read its type."""
    async with rt.db.read() as conn:
        device = (
            (await conn.execute(select(t.devices.c.uid, t.devices.c.dtid).where(t.devices.c.id == did)))
            .mappings()
            .first()
        )
    if device is None:
        raise NotFound(f"Device {did} not found")
    if device["uid"] != uid and not await accepted_share(rt, uid, did):
        raise Forbidden.missing("device", [did])
    if not (principal.app or AppPermissions()).on_device_type(device["dtid"], Access.READ):
        raise Forbidden.missing("device_type", [device["dtid"]])


def _shape(body: SubscriptionInfo) -> tuple[str, str]:
    """The combination rules of S60, as one validation error listing every problem."""
    problems: list[FieldError] = []
    kind = body.messageType
    if kind not in ("message", "action"):
        problems.append(FieldError("messageType", ("Required parameter: message or action",)))
    if not body.uid:
        problems.append(FieldError("uid", ("Required parameter",)))
    sub_type = body.subscriptionType or HTTP_CALLBACK
    if sub_type not in (HTTP_CALLBACK, KINESIS):
        problems.append(FieldError("subscriptionType", ("Must be httpCallback or awsKinesis",)))
    if kind == "action":
        if not body.ddid:
            problems.append(FieldError("ddid", ("Required parameter with messageType action",)))
        for name in ("sdid", "sdtid"):
            if getattr(body, name):
                problems.append(FieldError(name, ("Only with messageType message",)))
    if kind == "message":
        if body.ddid:
            problems.append(FieldError("ddid", ("Only with messageType action",)))
        if body.sdid and body.sdtid:
            problems.append(FieldError("sdtid", ("sdid and sdtid cannot be combined",)))
    if body.description is not None and len(body.description) > 256:
        problems.append(FieldError("description", ("Maximum length 256",)))
    if sub_type == HTTP_CALLBACK and not body.callbackUrl:
        problems.append(FieldError("callbackUrl", ("Required parameter",)))
    if sub_type == KINESIS:
        stream = body.awsKinesisStreamName or body.awsKinesisStream
        for name, value in (
            ("awsKey", body.awsKey),
            ("awsSecret", body.awsSecret),
            ("awsRegion", body.awsRegion),
        ):
            if not value:
                problems.append(FieldError(name, ("Required parameter with subscriptionType awsKinesis",)))
        if not stream:
            problems.append(FieldError("awsKinesisStreamName", ("Required parameter",)))
    if problems:
        raise ValidationFailed("Validation Error", problems)
    return str(kind), sub_type


async def create_subscription(rt: Runtime, principal: Principal, body: SubscriptionInfo) -> dict[str, Any]:
    aid = _application_of(principal)
    kind, sub_type = _shape(body)
    uid = str(body.uid)
    await _check_subscriber(rt, principal, uid)
    app_permissions = principal.app or AppPermissions()
    if body.sdid:
        await _check_device(rt, principal, uid, body.sdid)
    if body.ddid:
        await _check_device(rt, principal, uid, body.ddid)
    if body.sdtid:
        async with rt.db.read() as conn:
            if (
                await conn.scalar(select(t.device_types.c.id).where(t.device_types.c.id == body.sdtid))
                is None
            ):
                raise DeviceTypeNotFound()
        if not app_permissions.on_device_type(body.sdtid, Access.READ):
            raise Forbidden.missing("device_type", [body.sdtid])
    if sub_type == KINESIS:
        sinks.kinesis_sink(rt)  # 400 when none is configured
    else:
        app = await get_application(rt, aid)
        await callbacks.check_callback_url(rt.settings, str(body.callbackUrl), app.redirect_uris)
    now = rt.clock.now_ms()
    nonce = secrets.token_hex(16)
    row = {
        "id": new_id(),
        "aid": aid,
        "uid": uid,
        "message_type": kind,
        "subscription_type": sub_type,
        "sdtid": body.sdtid or None,
        "sdid": body.sdid or None,
        "ddid": body.ddid or None,
        "include_shared": bool(body.includeSharedDevices),
        "description": body.description,
        "callback_url": body.callbackUrl if sub_type == HTTP_CALLBACK else None,
        "aws_key": body.awsKey if sub_type == KINESIS else None,
        "aws_secret_encrypted": rt.box.encrypt(str(body.awsSecret)) if sub_type == KINESIS else None,
        "aws_region": body.awsRegion if sub_type == KINESIS else None,
        "aws_stream": (body.awsKinesisStreamName or body.awsKinesisStream) if sub_type == KINESIS else None,
        "status": ACTIVE if sub_type == KINESIS else PENDING,
        "nonce_encrypted": rt.box.encrypt(nonce),
        "failures": 0,
        "created_on": now,
        "modified_on": now,
    }
    async with rt.db.write() as conn:
        await conn.execute(insert(_s).values(row))
    if sub_type == HTTP_CALLBACK:
        await enqueue(rt, CONFIRM_JOB, {"sid": row["id"]}, unique_key=f"subscription-confirm:{row['id']}")
    await announce(rt, str(row["id"]))
    return public(row)


async def subscription_row(rt: Runtime, sid: str) -> dict[str, Any]:
    async with rt.db.read() as conn:
        row = (await conn.execute(select(_s).where(_s.c.id == sid))).mappings().first()
    if row is None:
        raise NotFound(f"Subscription {sid} not found")
    return dict(row)


def check_owner(principal: Principal, row: Any) -> None:
    """A subscription belongs to its application, and (for a user token) to its user."""
    aid = _application_of(principal)
    if row["aid"] != aid or (principal.kind == "user" and principal.uid != row["uid"]):
        raise Forbidden.missing("subscription", [row["id"]])


async def get_subscription(rt: Runtime, principal: Principal, sid: str) -> dict[str, Any]:
    row = await subscription_row(rt, sid)
    check_owner(principal, row)
    return public(row)


async def delete_subscription(rt: Runtime, principal: Principal, sid: str) -> dict[str, Any]:
    row = await subscription_row(rt, sid)
    check_owner(principal, row)
    await remove(rt, [sid])
    return public(row)


async def remove(rt: Runtime, sids: list[str]) -> None:
    """Delete subscriptions with their notifications (explicitly: SQLite may run without cascades)."""
    if not sids:
        return
    async with rt.db.write() as conn:
        await conn.execute(delete(t.notification_items).where(t.notification_items.c.sid.in_(sids)))
        await conn.execute(delete(t.notifications).where(t.notifications.c.sid.in_(sids)))
        await conn.execute(delete(_s).where(_s.c.id.in_(sids)))
    for sid in sids:
        await announce(rt, sid)


async def list_subscriptions(
    rt: Runtime, principal: Principal, uid: str | None, count: int | None, offset: int | None
) -> tuple[list[dict[str, Any]], int, int]:
    """S61: every subscription of the calling application (an application token only)."""
    if principal.kind != "app" or principal.aid is None:
        raise Forbidden("GET /subscriptions needs an application token")
    limit, offset = page_bounds(count, offset)
    where = [_s.c.aid == principal.aid]
    if uid:
        where.append(_s.c.uid == uid)
    async with rt.db.read() as conn:
        total = int(await conn.scalar(select(func.count()).select_from(_s).where(*where)) or 0)
        rows = (
            (
                await conn.execute(
                    select(_s).where(*where).order_by(_s.c.created_on, _s.c.id).offset(offset).limit(limit)
                )
            )
            .mappings()
            .all()
        )
    return [public(r) for r in rows], total, offset


async def validate_subscription(rt: Runtime, sid: str, aid: str | None, nonce: str | None) -> dict[str, Any]:
    """S63 (no token): the right nonce (and aid, when given) makes the subscription ACTIVE. A
    SUSPENDED subscription is revived the same way (ThingCloud extension)."""
    row = await subscription_row(rt, sid)
    expected = rt.box.decrypt(row["nonce_encrypted"]) if row["nonce_encrypted"] else ""
    if not nonce:
        raise ValidationFailed.field("nonce", "Required parameter")
    if (
        (aid and aid != row["aid"])
        or not expected
        or not hmac.compare_digest(expected.encode(), nonce.encode())
    ):
        raise Forbidden("Invalid nonce or aid for this subscription")
    if row["status"] != ACTIVE:
        now = rt.clock.now_ms()
        async with rt.db.write() as conn:
            await conn.execute(
                update(_s).where(_s.c.id == sid).values(status=ACTIVE, failures=0, modified_on=now)
            )
        row.update(status=ACTIVE, failures=0, modified_on=now)
        await announce(rt, sid)
    return public(row)


async def notification_messages(
    rt: Runtime, principal: Principal, nid: str, order: str | None, count: int | None, offset: int | None
) -> dict[str, Any]:
    """S64: the messages (or actions) a notification stands for, by ``ts``, offset-paged."""
    order = (order or "asc").lower()
    if order not in ("asc", "desc"):
        raise ValidationFailed.field("order", "Must be asc or desc")
    limit, offset = page_bounds(count, offset)
    n, items = t.notifications, t.notification_items
    async with rt.db.read() as conn:
        found = (
            (
                await conn.execute(
                    select(n.c.kind, _s.c.id, _s.c.aid, _s.c.uid)
                    .join(_s, _s.c.id == n.c.sid)
                    .where(n.c.id == nid)
                )
            )
            .mappings()
            .first()
        )
        if found is None:
            raise NotFound(f"Notification {nid} not found")
        check_owner(principal, found)
        columns: tuple[str, ...]
        if found["kind"] == "action":
            table, device_col = t.actions, t.actions.c.ddid
            columns = ("mid", "ddid", "ddtid", "sdid", "uid", "ts", "cts", "mv", "data")
        else:
            table, device_col = t.messages, t.messages.c.sdid
            columns = ("mid", "sdid", "sdtid", "uid", "ts", "cts", "mv", "data")
        joined = items.join(
            table, and_(device_col == items.c.did, table.c.ts == items.c.ts, table.c.mid == items.c.mid)
        )
        total = int(
            await conn.scalar(select(func.count()).select_from(joined).where(items.c.nid == nid)) or 0
        )
        sort = (items.c.ts.desc(), items.c.mid.desc()) if order == "desc" else (items.c.ts, items.c.mid)
        rows = (
            (
                await conn.execute(
                    select(*(table.c[c] for c in columns))
                    .select_from(joined)
                    .where(items.c.nid == nid)
                    .order_by(*sort)
                    .offset(offset)
                    .limit(limit)
                )
            )
            .mappings()
            .all()
        )
    data = [dict(r) for r in rows]
    return {"order": order, "total": total, "offset": offset, "count": len(data), "data": data}
