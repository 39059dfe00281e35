"""Reading device-management tasks (S92, S93, S95, §5.1 history): a device type's tasks with the
counts per task status, one task's per-device statuses, its history, and the tasks of one device.
Paging (``count`` ≤ 100, ``offset``), status filters and ordering by ``createdOn`` are checked here
(400 naming the parameter)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select

from thingcloud import tables as t
from thingcloud.areas.devicemgmt.tasks import (
    DEVICE_STATUSES,
    TASK_STATUSES,
    check_task_access,
    device_status_wire,
    status_counts,
    task_row,
    task_wire,
)
from thingcloud.areas.devices.service import device_row
from thingcloud.auth.permissions import Access, Principal, check_device_owner
from thingcloud.errors import Forbidden, ValidationFailed
from thingcloud.runtime import Runtime

_task = t.dm_tasks
_dev = t.dm_device_tasks
_hist = t.dm_task_history


def _bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed.field(field, message)


def _statuses(value: str | None, allowed: tuple[str, ...], field: str = "status") -> list[str]:
    wanted = [s.strip().upper() for s in (value or "").split(",") if s.strip()]
    bad = [s for s in wanted if s not in allowed]
    if bad:
        raise _bad(field, f"Unknown status {bad[0]}; one of {', '.join(allowed)}")
    return wanted


def _page(count: int | None, offset: int | None) -> tuple[int, int]:
    if count is not None and count < 1:
        raise _bad("count", "Minimum value 1")
    if offset is not None and offset < 0:
        raise _bad("offset", "Minimum value 0")
    return min(count or 100, 100), offset or 0


def _ordering(order: str | None, sort: str | None) -> Any:
    if order not in (None, "", "createdOn"):
        raise _bad("order", "Only createdOn")
    direction = (sort or "desc").lower()
    if direction not in ("asc", "desc"):
        raise _bad("sort", "asc or desc")
    column = _task.c.created_on
    return (column.asc(), _task.c.id.asc()) if direction == "asc" else (column.desc(), _task.c.id.desc())


async def list_tasks(
    rt: Runtime,
    principal: Principal,
    dtid: str | None,
    status: str | None,
    order: str | None,
    sort: str | None,
    count: int | None,
    offset: int | None,
) -> tuple[list[dict[str, Any]], dict[str, int], int, int]:
    """S92: tasks of a device type, and how many are in each of the six task statuses."""
    if not dtid:
        raise _bad("dtid", "Required parameter")
    await check_task_access(rt, principal, dtid, Access.READ)
    wanted = _statuses(status, TASK_STATUSES)
    limit, skip = _page(count, offset)
    where = [_task.c.dtid == dtid]
    if wanted:
        where.append(_task.c.status.in_(wanted))
    async with rt.db.read() as conn:
        totals = {s: 0 for s in TASK_STATUSES}
        for st, n in await conn.execute(
            select(_task.c.status, func.count()).where(_task.c.dtid == dtid).group_by(_task.c.status)
        ):
            totals[st] = n
        total = await conn.scalar(select(func.count()).select_from(_task).where(*where)) or 0
        rows = [
            dict(r)
            for r in (
                await conn.execute(
                    select(_task).where(*where).order_by(*_ordering(order, sort)).limit(limit).offset(skip)
                )
            ).mappings()
        ]
        counts = await status_counts(conn, [r["id"] for r in rows])
    return [task_wire(r, counts[r["id"]]) for r in rows], totals, total, skip


async def task_statuses(
    rt: Runtime,
    principal: Principal,
    tid: str,
    status: str | None,
    dids: str | None,
    count: int | None,
    offset: int | None,
) -> tuple[dict[str, Any], int, int]:
    """S93: the task with one page of its per-device statuses."""
    row = await task_row(rt, tid)
    await check_task_access(rt, principal, row["dtid"], Access.READ)
    wanted = _statuses(status, DEVICE_STATUSES)
    only = [d.strip() for d in (dids or "").split(",") if d.strip()]
    limit, skip = _page(count, offset)
    where = [_dev.c.tid == tid]
    if wanted:
        where.append(_dev.c.status.in_(wanted))
    if only:
        where.append(_dev.c.did.in_(only))
    async with rt.db.read() as conn:
        total = await conn.scalar(select(func.count()).select_from(_dev).where(*where)) or 0
        rows = (
            await conn.execute(select(_dev).where(*where).order_by(_dev.c.did).limit(limit).offset(skip))
        ).mappings()
        statuses = [device_status_wire(r) for r in rows]
        counts = await status_counts(conn, [tid])
    return {**task_wire(row, counts[tid]), "statuses": statuses}, total, skip


async def task_history(rt: Runtime, principal: Principal, tid: str, did: str | None) -> list[dict[str, Any]]:
    """§5.1 ``GET /devicemgmt/tasks/{tid}/statuses/history``: every status change, oldest first."""
    row = await task_row(rt, tid)
    await check_task_access(rt, principal, row["dtid"], Access.READ)
    where = [_hist.c.tid == tid]
    if did:
        where.append(_hist.c.did == did)
    async with rt.db.read() as conn:
        rows = (await conn.execute(select(_hist).where(*where).order_by(_hist.c.id))).mappings()
        return [
            {
                "did": r["did"],
                "status": r["status"],
                "ts": r["ts"],
                "numAttempts": r["attempts"],
                "errorCode": r["error_code"],
                "errorMessage": r["error_message"],
            }
            for r in rows
        ]


async def device_tasks(
    rt: Runtime,
    principal: Principal,
    did: str,
    status: str | None,
    order: str | None,
    sort: str | None,
    count: int | None,
    offset: int | None,
) -> tuple[list[dict[str, Any]], int, int]:
    """S95: the tasks that name one device, each with that device's status. For the type's
    device-management administrators, and for the device's owner (not share recipients)."""
    device = await device_row(rt, did)
    try:
        await check_task_access(rt, principal, device["dtid"], Access.READ)
    except Forbidden:
        if principal.kind == "device":
            raise
        await check_device_owner(rt, principal, device, Access.READ)
    wanted = _statuses(status, TASK_STATUSES)
    limit, skip = _page(count, offset)
    where = [_dev.c.did == device["id"]]
    if wanted:
        where.append(_task.c.status.in_(wanted))
    joined = _task.join(_dev, and_(_dev.c.tid == _task.c.id))
    async with rt.db.read() as conn:
        total = await conn.scalar(select(func.count()).select_from(joined).where(*where)) or 0
        query = (
            select(_task, *[c.label(f"dev_{c.name}") for c in _dev.c])
            .select_from(joined)
            .where(*where)
            .order_by(*_ordering(order, sort))
            .limit(limit)
            .offset(skip)
        )
        rows = [dict(r) for r in (await conn.execute(query)).mappings()]
        counts = await status_counts(conn, [r["id"] for r in rows])
    out = []
    for r in rows:
        mine = {name[4:]: value for name, value in r.items() if name.startswith("dev_")}
        out.append({**task_wire(r, counts[r["id"]]), "statuses": [device_status_wire(mine)]})
    return out, total, skip
