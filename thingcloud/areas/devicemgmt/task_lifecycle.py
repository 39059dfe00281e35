"""What moves a device-management task after it is created: the durable jobs (dispatch at creation or
``scheduledOn``, expiry at ``expiresAfter``, the sweep that re-sends unanswered tasks with backoff),
cancellation (whole task, one device), the owner's acceptance of an OTA update, and the immediate
server-property writes.

Every per-device change goes through ``move``: one ``UPDATE … WHERE status IN (…) RETURNING`` (so
two nodes, or a late answer and an expiry, never both win) plus one history row per device changed.
A task is COMPLETE once none of its devices is open (``finish_if_done``). What reaches the devices
goes on the bus: ``devicemgmt.deliver`` / ``devicemgmt.cancel`` ``{"tid", "dids"}``; the node holding a
device's connection sends it (thingcloud/channels/devicemgmt.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import tables as t
from thingcloud.areas.devicemgmt import properties as dm_properties
from thingcloud.areas.devicemgmt.tasks import (
    DEVICE_OPEN,
    DISPATCH_JOB,
    check_task_access,
    device_status_wire,
    get_task,
    task_row,
)
from thingcloud.auth.permissions import Access, Principal, check_device_owner
from thingcloud.errors import ApiError, BadRequest, NotFound, ValidationFailed
from thingcloud.jobs import Job, enqueue, job

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

EXPIRE_JOB = "devicemgmt.tasks.expire"
SWEEP_JOB = "devicemgmt.tasks.sweep"
DELIVER = "devicemgmt.deliver"
CANCEL = "devicemgmt.cancel"
BUS_CHUNK = 1000
SWEEP_BATCH = 5000

# Error codes of failed device tasks (errorCode is a string in the SDK models).
EXPIRED = ("TASK_EXPIRED", "The task expired before the device completed it")
NO_ANSWER = ("NO_ANSWER", "The device did not answer after {n} attempts")
REJECTED = ("REJECTED", "The device owner rejected the update")
SERVER_WRITE_FAILED = "SERVER_PROPERTY_WRITE_FAILED"

_task = t.dm_tasks
_dev = t.dm_device_tasks
_hist = t.dm_task_history


async def move(
    conn: AsyncConnection,
    tid: str,
    dids: Sequence[str] | None,
    frm: Sequence[str],
    to: str,
    now: int,
    *,
    error: tuple[str, str] | None = None,
    acceptance: Sequence[str] | None = None,
    **values: Any,
) -> list[str]:
    """Per-device status ``frm`` → ``to`` for ``dids`` (all the task's devices when None); returns
    the devices that moved, each with a history row."""
    moved: list[str] = []
    chunks: list[Sequence[str] | None] = (
        [None] if dids is None else [dids[i : i + BUS_CHUNK] for i in range(0, len(dids), BUS_CHUNK)]
    )
    code, message = error if error is not None else (None, None)
    for chunk in chunks:
        where = [_dev.c.tid == tid, _dev.c.status.in_(list(frm))]
        if chunk is not None:
            where.append(_dev.c.did.in_(list(chunk)))
        if acceptance is not None:
            where.append(_dev.c.acceptance.in_(list(acceptance)))
        if error is not None:
            values.update(error_code=code, error_message=message)
        rows = (
            await conn.execute(
                update(_dev)
                .where(*where)
                .values(status=to, ts=now, **values)
                .returning(_dev.c.did, _dev.c.attempts)
            )
        ).all()
        if rows:
            await conn.execute(
                insert(_hist),
                [
                    {
                        "tid": tid,
                        "did": r.did,
                        "status": to,
                        "ts": now,
                        "attempts": r.attempts,
                        "error_code": code,
                        "error_message": message,
                    }
                    for r in rows
                ],
            )
            moved.extend(r.did for r in rows)
    return moved


async def finish_if_done(rt: Runtime, tids: list[str] | None) -> None:
    """COMPLETE once no device of the task is open (a CANCELLED task stays CANCELLED).

    Called after the transaction that changed device statuses committed, never inside it: two
    answers committing at the same time (PostgreSQL, read committed) would each still see the other
    device open and neither would complete the task; checked after each commit, the last one to
    commit sees them all. ``None``: every task still running (the sweep's safety net, for a node
    that died between a commit and this check)."""
    open_devices = select(_dev.c.did).where(_dev.c.tid == _task.c.id, _dev.c.status.in_(DEVICE_OPEN))
    where = [~open_devices.exists()]
    if tids is None:
        where.append(_task.c.status.in_(("QUEUING", "PROCESSING")))
    else:
        where += [_task.c.id.in_(tids), _task.c.status.not_in(("COMPLETE", "CANCELLED"))]
    async with rt.db.write() as conn:
        await conn.execute(
            update(_task).where(*where).values(status="COMPLETE", modified_on=rt.clock.now_ms())
        )


async def publish(rt: Runtime, subject: str, tid: str, dids: list[str]) -> None:
    for start in range(0, len(dids), BUS_CHUNK):
        await rt.bus.publish(subject, {"tid": tid, "dids": dids[start : start + BUS_CHUNK]})


# --- jobs ------------------------------------------------------------------------------------------


@job(DISPATCH_JOB)
async def dispatch(rt: Runtime, work: Job) -> dict[str, Any] | None:
    """REQUESTED → QUEUING: devices that need no acceptance (or have it) are QUEUED and offered to
    the nodes holding their connections; then PROCESSING, with the expiry job scheduled."""
    tid = str(work.payload["tid"])
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        row = (
            (await conn.execute(select(_task.c.status, _task.c.expires_on).where(_task.c.id == tid)))
            .mappings()
            .first()
        )
        if row is None or row["status"] in ("COMPLETE", "CANCELLED"):
            return None
        await conn.execute(
            update(_task)
            .where(_task.c.id == tid, _task.c.status.in_(("SCHEDULED", "REQUESTED")))
            .values(status="QUEUING", modified_on=now)
        )
        await move(conn, tid, None, ("REQUESTED",), "QUEUED", now, acceptance=("NOT_REQUIRED", "ACCEPTED"))
        # Every queued device, not only those just moved: a retried dispatch offers them again.
        queued = list(
            (
                await conn.execute(select(_dev.c.did).where(_dev.c.tid == tid, _dev.c.status == "QUEUED"))
            ).scalars()
        )
        await enqueue(
            rt, EXPIRE_JOB, {"tid": tid}, run_at=row["expires_on"], unique_key=f"dm-expire:{tid}", conn=conn
        )
    await publish(rt, DELIVER, tid, queued)
    async with rt.db.write() as conn:
        await conn.execute(
            update(_task)
            .where(_task.c.id == tid, _task.c.status == "QUEUING")
            .values(status="PROCESSING", modified_on=now)
        )
    await finish_if_done(rt, [tid])
    return {"queued": len(queued)}


@job(EXPIRE_JOB)
async def expire(rt: Runtime, work: Job) -> dict[str, Any] | None:
    """``expiresAfter`` has passed: every device not done is FAILED (TASK_EXPIRED)."""
    tid = str(work.payload["tid"])
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        row = (await conn.execute(select(_task.c.expires_on).where(_task.c.id == tid))).first()
        if row is None:
            return None
        sent = [
            r.did
            for r in await conn.execute(
                select(_dev.c.did).where(_dev.c.tid == tid, _dev.c.status == "PROCESSING")
            )
        ]
        failed = await move(
            conn, tid, None, ("REQUESTED", "QUEUED", "PROCESSING"), "FAILED", now, error=EXPIRED
        )
        await move(conn, tid, None, ("CANCEL_REQUESTED",), "CANCELLED", now)
    await finish_if_done(rt, [tid])
    await publish(rt, CANCEL, tid, sent)  # devices still working on it may stop
    return {"expired": len(failed)}


async def sweep(rt: Runtime, work: Job) -> dict[str, Any] | None:
    """Unanswered sends: again after ``dm_task_answer_timeout`` × 2^(attempt−1) (backoff), FAILED
    (NO_ANSWER) once ``dm_task_max_attempts`` sends went unanswered. Unanswered cancels: CANCELLED.
    Connected devices still QUEUED after a timeout (their offer was lost): offered again."""
    s = rt.settings
    now = rt.clock.now_ms()
    base_ms = int(s.dm_task_answer_timeout * 1000)
    async with rt.db.read() as conn:
        rows = (
            await conn.execute(
                select(_dev.c.tid, _dev.c.did, _dev.c.status, _dev.c.attempts, _dev.c.sent_at)
                .where(_dev.c.status.in_(("PROCESSING", "CANCEL_REQUESTED")), _dev.c.sent_at < now - base_ms)
                .limit(SWEEP_BATCH)
            )
        ).all()
    retry: dict[str, list[str]] = {}
    give_up: dict[str, list[str]] = {}
    cancelled: dict[str, list[str]] = {}
    for r in rows:
        if r.status == "CANCEL_REQUESTED":
            cancelled.setdefault(r.tid, []).append(r.did)
        elif r.sent_at + base_ms * 2 ** max(r.attempts - 1, 0) > now:
            continue
        elif r.attempts >= s.dm_task_max_attempts:
            give_up.setdefault(r.tid, []).append(r.did)
        else:
            retry.setdefault(r.tid, []).append(r.did)
    resend: dict[str, list[str]] = await _connected_but_queued(rt, now - base_ms)
    for tid in {*retry, *give_up, *cancelled}:
        async with rt.db.write() as conn:
            if tid in retry:
                moved = await move(conn, tid, retry[tid], ("PROCESSING",), "QUEUED", now)
                resend.setdefault(tid, []).extend(moved)
            if tid in give_up:
                code, text = NO_ANSWER
                await move(
                    conn,
                    tid,
                    give_up[tid],
                    ("PROCESSING",),
                    "FAILED",
                    now,
                    error=(code, text.format(n=s.dm_task_max_attempts)),
                )
            if tid in cancelled:
                await move(conn, tid, cancelled[tid], ("CANCEL_REQUESTED",), "CANCELLED", now)
    await finish_if_done(rt, None)
    for tid, dids in resend.items():
        await publish(rt, DELIVER, tid, dids)
    return {"offered": sum(map(len, resend.values())), "failed": sum(map(len, give_up.values()))}


async def _connected_but_queued(rt: Runtime, before: int) -> dict[str, list[str]]:
    """Devices connected now whose device task has waited in QUEUED since ``before``: their offer
    was lost (a bus message dropped, a node gone between the offer and the send); offered again."""
    status = t.device_status
    async with rt.db.read() as conn:
        rows = await conn.execute(
            select(_dev.c.tid, _dev.c.did)
            .select_from(_dev.join(status, status.c.did == _dev.c.did).join(_task, _task.c.id == _dev.c.tid))
            .where(
                _dev.c.status == "QUEUED",
                _dev.c.ts < before,
                status.c.connected.is_(True),
                _task.c.status.in_(("QUEUING", "PROCESSING")),
            )
            .limit(SWEEP_BATCH)
        )
        found: dict[str, list[str]] = {}
        for tid, did in rows:
            found.setdefault(tid, []).append(did)
        return found


def register(rt: Runtime) -> None:
    """The sweep runs every ``dm_task_sweep_interval``, a setting, so it is registered per node, before
    the node's job runner starts (whose first cycle schedules the recurring kinds)."""
    rt.jobs.handle(SWEEP_JOB, sweep, every=rt.settings.dm_task_sweep_interval)


# --- server properties: written at once ------------------------------------------------------------


async def apply_server_write(rt: Runtime, tid: str, dids: list[str], name: str, value: Any) -> None:
    """A W task on ``serverProperties.<name>``: written now for each device (validated already)."""
    nested: Any = value
    for part in reversed(name.split(".")):
        nested = {part: nested}
    ok: list[str] = []
    failed: dict[str, str] = {}
    for did in dids:
        try:
            await dm_properties.write_server_properties(rt, did, nested)
            ok.append(did)
        except ApiError as exc:
            failed[did] = exc.message
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        await conn.execute(
            update(_task).where(_task.c.id == tid).values(status="PROCESSING", modified_on=now)
        )
        await move(conn, tid, ok, ("REQUESTED",), "SUCCEEDED", now, attempts=1)
        for did, message in failed.items():
            await move(
                conn,
                tid,
                [did],
                ("REQUESTED",),
                "FAILED",
                now,
                error=(SERVER_WRITE_FAILED, message),
                attempts=1,
            )
    await finish_if_done(rt, [tid])


# --- cancellation ----------------------------------------------------------------------------------


def _cancel_body(status: str | None) -> None:
    if (status or "").upper() != "CANCELLED":
        raise ValidationFailed.field("status", "Only CANCELLED is supported")


async def cancel_task(rt: Runtime, principal: Principal, tid: str, status: str | None) -> dict[str, Any]:
    """S97: devices not started are CANCELLED; devices working on it are CANCEL_REQUESTED (and told)."""
    row = await task_row(rt, tid)
    await check_task_access(rt, principal, row["dtid"], Access.WRITE)
    _cancel_body(status)
    if row["status"] in ("COMPLETE", "CANCELLED"):
        raise BadRequest(f"Task {tid} is {row['status']} already")
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        await move(conn, tid, None, ("REQUESTED", "QUEUED"), "CANCELLED", now)
        asked = await move(conn, tid, None, ("PROCESSING",), "CANCEL_REQUESTED", now, sent_at=now)
        await conn.execute(
            update(_task)
            .where(_task.c.id == tid, _task.c.status.not_in(("COMPLETE", "CANCELLED")))
            .values(status="CANCELLED", modified_on=now)
        )
    await publish(rt, CANCEL, tid, asked)
    return await get_task(rt, principal, tid)


async def _device_task(conn: AsyncConnection, tid: str, did: str) -> dict[str, Any]:
    row = (await conn.execute(select(_dev).where(_dev.c.tid == tid, _dev.c.did == did))).mappings().first()
    if row is None:
        raise NotFound(f"Device {did} is not part of task {tid}")
    return dict(row)


async def cancel_device(
    rt: Runtime, principal: Principal, tid: str, did: str, status: str | None
) -> dict[str, Any]:
    """S98: cancel the task for one device; answers that device's status."""
    row = await task_row(rt, tid)
    await check_task_access(rt, principal, row["dtid"], Access.WRITE)
    _cancel_body(status)
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        current = await _device_task(conn, tid, did)
        if current["status"] not in DEVICE_OPEN:
            raise BadRequest(f"The task is {current['status']} for device {did} already")
        await move(conn, tid, [did], ("REQUESTED", "QUEUED"), "CANCELLED", now)
        asked = await move(conn, tid, [did], ("PROCESSING",), "CANCEL_REQUESTED", now, sent_at=now)
        after = await _device_task(conn, tid, did)
    await finish_if_done(rt, [tid])
    await publish(rt, CANCEL, tid, asked)
    return device_status_wire(after)


# --- OTA acceptance by the device's owner ---------------------------------------------------------------


async def _owner_check(rt: Runtime, principal: Principal, did: str, access: Access) -> None:
    from thingcloud.areas.devices.service import device_row

    device = await device_row(rt, did)
    if principal.kind == "device":
        raise BadRequest("A device token cannot accept updates")
    await check_device_owner(rt, principal, device, access)  # share recipients do not decide


async def pending_tasks(rt: Runtime, principal: Principal, did: str) -> list[str]:
    """S96: ids of the update tasks waiting for the owner's acceptance on this device."""
    await _owner_check(rt, principal, did, Access.READ)
    async with rt.db.read() as conn:
        rows = await conn.execute(
            select(_dev.c.tid)
            .select_from(_dev.join(_task, _task.c.id == _dev.c.tid))
            .where(
                _dev.c.did == did,
                _dev.c.acceptance == "WAITING",
                _dev.c.status == "REQUESTED",
                _task.c.status.not_in(("COMPLETE", "CANCELLED")),
            )
            .order_by(_task.c.created_on)
        )
        return [r.tid for r in rows]


async def set_acceptance(rt: Runtime, principal: Principal, tid: str, did: str, answer: str | None) -> str:
    """S94: ACCEPTED queues the update for the device; REJECTED fails it (REJECTED)."""
    await _owner_check(rt, principal, did, Access.WRITE)
    decision = (answer or "").upper()
    if decision not in ("ACCEPTED", "REJECTED"):
        raise ValidationFailed.field("acceptanceStatus", "ACCEPTED or REJECTED")
    row = await task_row(rt, tid)
    if not row["needs_acceptance"]:
        raise ValidationFailed.field("acceptanceStatus", f"Task {tid} does not need acceptance")
    now = rt.clock.now_ms()
    queued: list[str] = []
    async with rt.db.write() as conn:
        current = await _device_task(conn, tid, did)
        if current["acceptance"] != "WAITING" or current["status"] != "REQUESTED":
            raise ValidationFailed.field(
                "acceptanceStatus", f"Task {tid} is not waiting for acceptance on {did}"
            )
        await conn.execute(
            update(_dev).where(and_(_dev.c.tid == tid, _dev.c.did == did)).values(acceptance=decision, ts=now)
        )
        dispatched = row["status"] not in ("SCHEDULED", "REQUESTED")
        if decision == "REJECTED":
            await move(conn, tid, [did], ("REQUESTED",), "FAILED", now, error=REJECTED)
        elif dispatched:
            queued = await move(conn, tid, [did], ("REQUESTED",), "QUEUED", now)
    await finish_if_done(rt, [tid])
    await publish(rt, DELIVER, tid, queued)
    return decision
