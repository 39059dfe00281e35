"""Delivery jobs: the confirmation POST, notification POSTs (or Kinesis puts), and the cleanup.

Each notification is one durable job (``subscriptions.deliver``) on the job runner, so deliveries
survive restarts (at least once: a node dying mid-POST has its lease expire and the job is retried),
run concurrently in slots of their own (``notification_concurrency``, 32 by default: one slow
subscriber holds one slot for at most ``notification_timeout``, and deliveries neither wait behind
exports and other jobs nor hold them up; with the runner's 4 shared slots, SQLite delivered only
25-30 notifications/s), and
a failed attempt is retried by the runner with exponential backoff and jitter.

Failures are also counted per subscription: after ``notification_max_failures`` consecutive failed
attempts (whatever the notification) the subscription becomes ``SUSPENDED`` and its pending
notifications are dropped, instead of retrying forever; a successful delivery resets the count.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, func, select, update

from thingcloud import tables as t
from thingcloud.areas.subscriptions import callbacks, signing, sinks
from thingcloud.areas.subscriptions.matching import DELIVER_JOB
from thingcloud.areas.subscriptions.service import (
    ACTIVE,
    CONFIRM_JOB,
    KINESIS,
    PENDING,
    SUSPENDED,
    announce,
    remove,
)
from thingcloud.auth.applications import client_secret, get_application
from thingcloud.jobs import Job, PermanentJobError, job

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

EXPIRE_EVERY = 3600.0
KINESIS_PAGE = 500
_s, _n, _items = t.subscriptions, t.notifications, t.notification_items


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


async def _subscription(rt: Runtime, sid: str) -> dict[str, Any] | None:
    async with rt.db.read() as conn:
        row = (await conn.execute(select(_s).where(_s.c.id == sid))).mappings().first()
    return None if row is None else dict(row)


@job(CONFIRM_JOB)
async def confirm(rt: Runtime, job: Job) -> dict[str, Any] | None:
    """POST ``{"aid", "subscriptionId", "nonce"}`` (unsigned, REFERENCE.md §3.11) until it is taken."""
    sub = await _subscription(rt, job.payload["sid"])
    if sub is None or sub["status"] != PENDING:
        return {"skipped": "not pending"}
    body = {"aid": sub["aid"], "subscriptionId": sub["id"], "nonce": rt.box.decrypt(sub["nonce_encrypted"])}
    try:
        answer = await callbacks.post(
            rt.settings, sub["callback_url"], _json(body), {"Content-Type": signing.JSON}
        )
    except callbacks.CallbackRefused as exc:
        raise PermanentJobError(str(exc)) from exc
    return {"status": answer.status}


def subscription_query(sub: dict[str, Any]) -> dict[str, Any]:
    query: dict[str, Any] = {"uid": sub["uid"]}
    for key in ("sdid", "sdtid", "ddid"):
        if sub[key]:
            query[key] = sub[key]
    if sub["include_shared"]:
        query["includeSharedDevices"] = True
    return query


@job(DELIVER_JOB, slots=lambda settings: settings.notification_concurrency)
async def deliver(rt: Runtime, job: Job) -> dict[str, Any] | None:
    nid = job.payload["nid"]
    async with rt.db.read() as conn:
        notification = (await conn.execute(select(_n).where(_n.c.id == nid))).mappings().first()
    if notification is not None and notification["status"] == "open":
        async with rt.db.write() as conn:
            # Close the batch: from here on new messages open the subscription's next notification.
            await conn.execute(
                update(_n).where(_n.c.id == nid, _n.c.status == "open").values(status="sending")
            )
            notification = (await conn.execute(select(_n).where(_n.c.id == nid))).mappings().first()
    if notification is None or notification["status"] != "sending":
        return {"skipped": "gone or done"}
    sub = await _subscription(rt, notification["sid"])
    if sub is None or sub["status"] != ACTIVE:
        await _set_status(rt, [nid], "dropped")
        return {"skipped": "subscription not active"}
    async with rt.db.read() as conn:
        start, end = (
            await conn.execute(
                select(func.min(_items.c.ts), func.max(_items.c.ts)).where(_items.c.nid == nid)
            )
        ).one()
    try:
        if sub["subscription_type"] == KINESIS:
            await _put_kinesis(rt, sub, notification)
        else:
            payload = {
                "id": nid,
                "ts": notification["created_on"],
                "type": notification["kind"],
                "subscriptionId": sub["id"],
                "subscriptionQuery": subscription_query(sub),
                "startDate": int(start if start is not None else notification["start_date"]),
                "endDate": int(end if end is not None else notification["end_date"]),
            }
            app = await get_application(rt, sub["aid"])
            body = _json(payload)
            headers = signing.signed_headers(sub["callback_url"], body, app.id, client_secret(rt, app))
            await callbacks.post(rt.settings, sub["callback_url"], body, headers)
    except Exception as exc:
        await _failed(rt, sub, nid, exc)
        raise
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        await conn.execute(update(_n).where(_n.c.id == nid).values(status="delivered", delivered_on=now))
        await conn.execute(update(_s).where(_s.c.id == sub["id"], _s.c.failures != 0).values(failures=0))
    return {"delivered": nid, "latency_ms": now - notification["first_cts"]}


async def _failed(rt: Runtime, sub: dict[str, Any], nid: str, exc: Exception) -> None:
    """Count a consecutive failure; suspend the subscription at the limit (the job then stops)."""
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        counted = (
            await conn.execute(
                update(_s)
                .where(_s.c.id == sub["id"])
                .values(failures=_s.c.failures + 1, modified_on=now)
                .returning(_s.c.failures, _s.c.status)
            )
        ).first()
        failures = int(counted[0]) if counted is not None else 0
        suspend = counted is not None and failures >= rt.settings.notification_max_failures
        if suspend:
            await conn.execute(
                update(_s).where(_s.c.id == sub["id"], _s.c.status == ACTIVE).values(status=SUSPENDED)
            )
            await conn.execute(
                update(_n)
                .where(_n.c.sid == sub["id"], _n.c.status.in_(("open", "sending")))
                .values(status="dropped")
            )
    log.warning("notification %s for subscription %s not delivered: %s", nid, sub["id"], exc)
    if suspend:
        log.warning("subscription %s suspended after %d failed deliveries", sub["id"], failures)
        await announce(rt, sub["id"])
        raise PermanentJobError(f"subscription suspended: {exc}") from exc
    if isinstance(exc, callbacks.CallbackRefused):  # retrying cannot help: drop this one
        await _set_status(rt, [nid], "dropped")
        raise PermanentJobError(str(exc)) from exc


async def _set_status(rt: Runtime, nids: list[str], status: str) -> None:
    async with rt.db.write() as conn:
        await conn.execute(update(_n).where(_n.c.id.in_(nids)).values(status=status))


async def _put_kinesis(rt: Runtime, sub: dict[str, Any], notification: Any) -> None:
    """Kinesis subscriptions get the normalized messages themselves (REFERENCE.md §5.6)."""
    sink = sinks.kinesis_sink(rt)
    target = sinks.KinesisTarget(
        stream=sub["aws_stream"],
        region=sub["aws_region"],
        key=sub["aws_key"],
        secret=rt.box.decrypt(sub["aws_secret_encrypted"]),
    )
    if notification["kind"] == "action":
        table, device = t.actions, t.actions.c.ddid
    else:
        table, device = t.messages, t.messages.c.sdid
    joined = _items.join(
        table, and_(device == _items.c.did, table.c.ts == _items.c.ts, table.c.mid == _items.c.mid)
    )
    offset = 0
    while True:
        async with rt.db.read() as conn:
            rows = (
                (
                    await conn.execute(
                        select(table)
                        .select_from(joined)
                        .where(_items.c.nid == notification["id"])
                        .order_by(_items.c.ts, _items.c.mid)
                        .offset(offset)
                        .limit(KINESIS_PAGE)
                    )
                )
                .mappings()
                .all()
            )
        if rows:
            await sink.put_records(target, [dict(r) for r in rows])
        if len(rows) < KINESIS_PAGE:
            return
        offset += len(rows)


@job("subscriptions.expire", every=EXPIRE_EVERY)
async def expire(rt: Runtime, _job: Job) -> dict[str, Any]:
    """Delete subscriptions never validated within ``subscription_validation_ttl``, and delivered or
    dropped notifications older than ``job_retention``."""
    now = rt.clock.now_ms()
    cutoff = now - rt.settings.subscription_validation_ttl * 1000
    async with rt.db.read() as conn:
        stale = list(
            (
                await conn.execute(select(_s.c.id).where(_s.c.status == PENDING, _s.c.created_on < cutoff))
            ).scalars()
        )
    await remove(rt, stale)
    old = now - rt.settings.job_retention * 1000
    done = select(_n.c.id).where(_n.c.status.in_(("delivered", "dropped")), _n.c.created_on < old)
    async with rt.db.write() as conn:
        await conn.execute(delete(_items).where(_items.c.nid.in_(done)))
        purged = await conn.execute(
            delete(_n).where(_n.c.status.in_(("delivered", "dropped")), _n.c.created_on < old)
        )
    return {"expired": len(stale), "notifications_purged": max(purged.rowcount or 0, 0)}
