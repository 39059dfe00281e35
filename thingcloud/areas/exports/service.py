"""Message exports (S56–S59): checking and recording an export request, its status, the download of
its archive, the requester's history, and the expiry of old archives.

A request is validated whole (limits, ids, READ on every user and device named) before anything is
written; then the export row and its job are inserted in one transaction, so an export never exists
without the job that makes it. The job (``jobs.py``) writes the archive (``archive.py``). An export
belongs to whoever asked: the user of a user token, the application of an application token, or the
device of a device token; anyone else is told it does not exist.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, func, select, update

from thingcloud import tables as t
from thingcloud.areas.devices.service import page_bounds
from thingcloud.areas.exports.schemas import ExportRequestInfo
from thingcloud.auth.permissions import Access, Principal, check_device, check_user, device_type_filter
from thingcloud.errors import (
    Conflict,
    DeviceTypeNotFound,
    FieldError,
    Forbidden,
    Gone,
    NotFound,
    UserNotFound,
    ValidationFailed,
)
from thingcloud.ids import new_id
from thingcloud.jobs import JOBS_ENQUEUED, enqueue
from thingcloud.runtime import Runtime

DAY_MS = 86_400_000
MAX_IDS = 30
MAX_RANGE_MS = 31 * DAY_MS
EXPORT_JOB = "exports.run"
UNFINISHED = ("Received", "InProgress")
DOWNLOADABLE = ("Success", "Served")


def export_dir(rt: Runtime) -> Path:
    return rt.settings.export_dir or rt.settings.data_dir / "exports"


def archive_path(rt: Runtime, export_id: str) -> Path:
    return export_dir(rt) / f"{export_id}.tgz"


# --- the request --------------------------------------------------------------------------------------


def _ids(value: Any, name: str, problems: list[FieldError]) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        listed = [v.strip() for v in value]
    elif isinstance(value, str):
        listed = [v.strip() for v in value.split(",")]
    else:
        problems.append(FieldError(name, ("Comma-separated ids expected",)))
        return []
    ids = list(dict.fromkeys(v for v in listed if v))
    if len(ids) > MAX_IDS:
        problems.append(FieldError(name, (f"Maximum {MAX_IDS} ids",)))
    return ids


def _millis(value: Any, name: str, problems: list[FieldError]) -> int:
    if value is None:
        problems.append(FieldError(name, ("Required parameter",)))
    elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(FieldError(name, ("Epoch milliseconds expected",)))
    else:
        return value
    return 0


def _csv_headers(value: Any, problems: list[FieldError]) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    problems.append(FieldError("csvHeaders", ("Boolean field only",)))
    return None


def parse_request(body: ExportRequestInfo) -> dict[str, Any]:
    """The request as stored and echoed, or ``ValidationFailed`` listing every problem."""
    if body.trialId not in (None, ""):
        raise ValidationFailed.field(
            "trialId",
            "Trials are not available on this server",
            message="Exports by trial are not available: this server has no trials",
        )
    problems: list[FieldError] = []
    uids = _ids(body.uids, "uids", problems)
    sdids = _ids(body.sdids, "sdids", problems)
    sdtids = _ids(body.sdtids, "sdtids", problems)
    if not uids and not sdids:
        problems.append(FieldError("uids", ("Required parameter: uids and/or sdids",)))
    if sdtids and not uids:
        problems.append(FieldError("sdtids", ("sdtids filters the devices of uids: give uids too",)))
    start = _millis(body.startDate, "startDate", problems)
    end = _millis(body.endDate, "endDate", problems)
    if start > end:
        problems.append(FieldError("endDate", ("endDate must not be before startDate",)))
    elif end - start > MAX_RANGE_MS:
        problems.append(FieldError("endDate", ("Maximum range 31 days",)))
    order = str(body.order or "asc").lower()
    if order not in ("asc", "desc"):
        problems.append(FieldError("order", ("Must be 'asc' or 'desc'",)))
    fmt = str(body.format or "json").lower()
    if fmt not in ("json", "csv1"):
        problems.append(FieldError("format", ("Must be 'json' or 'csv1'",)))
    csv_headers = _csv_headers(body.csvHeaders, problems)
    if body.url is not None and not isinstance(body.url, str):
        problems.append(FieldError("url", ("Text field only",)))
    if problems:
        raise ValidationFailed(errors=problems)
    return {
        "uids": uids,
        "sdids": sdids,
        "sdtids": sdtids,
        "startDate": start,
        "endDate": end,
        "order": order,
        "format": fmt,
        "url": body.url,
        "csvHeaders": csv_headers,
    }


async def check_sources(rt: Runtime, principal: Principal, request: dict[str, Any]) -> None:
    """404 for an unknown user, device or device type; 403 without READ on a user or device."""
    async with rt.db.read() as conn:
        users = set(
            (await conn.execute(select(t.users.c.id).where(t.users.c.id.in_(request["uids"])))).scalars()
        )
        types = set(
            (
                await conn.execute(
                    select(t.device_types.c.id).where(t.device_types.c.id.in_(request["sdtids"]))
                )
            ).scalars()
        )
    for uid in request["uids"]:
        if uid not in users:
            raise UserNotFound(f"User {uid} does not exist.")
    for dtid in request["sdtids"]:
        if dtid not in types:
            raise DeviceTypeNotFound(f"Device type {dtid} does not exist.")
    for uid in request["uids"]:
        await check_user(rt, principal, uid, Access.READ)
    for did in request["sdids"]:
        device = await rt.devices.get(did)  # 404 when unknown
        await check_device(rt, principal, device.as_row(), Access.READ)
    if request["uids"]:
        request["typeFilter"] = readable_types(principal, request["sdtids"])


def readable_types(principal: Principal, sdtids: list[str]) -> dict[str, list[str]]:
    """Which device types' messages a user's file may hold: those asked for (each must be readable
    by the token's application, or 403), else every type the application may read."""
    all_but, listed = device_type_filter(principal, Access.READ)
    if sdtids:
        refused = [d for d in sdtids if (d in listed) == all_but]
        if refused:
            raise Forbidden.missing("device_type", refused)
        return {"only": sdtids}
    return {"except": sorted(listed)} if all_but else {"only": sorted(listed)}


def _joined(ids: list[str]) -> str | None:
    return ",".join(ids) or None


def request_view(request: dict[str, Any]) -> dict[str, Any]:
    """The request as the contract echoes it (comma strings, ``null`` for what was not given)."""
    return {
        "uids": _joined(request["uids"]),
        "sdids": _joined(request["sdids"]),
        "sdtids": _joined(request["sdtids"]),
        "trialId": None,
        "startDate": request["startDate"],
        "endDate": request["endDate"],
        "order": request["order"],
        "format": request["format"],
        "url": request["url"],
        "csvHeaders": request["csvHeaders"],
    }


async def create_export(rt: Runtime, principal: Principal, body: ExportRequestInfo) -> dict[str, Any]:
    request = parse_request(body)
    await check_sources(rt, principal, request)
    now = rt.clock.now_ms()
    export_id = new_id()
    row = {
        "id": export_id,
        "uid": principal.uid if principal.kind == "user" else None,
        "aid": principal.aid if principal.kind == "app" else None,
        "did": principal.did if principal.kind == "device" else None,
        "request": {**request, "requestDate": now},
        "status": "Received",
        "created_on": now,
        "modified_on": now,
    }
    async with rt.db.write() as conn:
        await conn.execute(t.exports.insert().values(row))
        await enqueue(rt, EXPORT_JOB, {"exportId": export_id}, unique_key=f"export:{export_id}", conn=conn)
    await rt.bus.publish(JOBS_ENQUEUED, {"kind": EXPORT_JOB})
    return {"exportId": export_id, **request_view(request)}


# --- reading exports back -----------------------------------------------------------------------------


def _owned(principal: Principal) -> ColumnElement[bool]:
    e = t.exports
    if principal.kind == "user":
        return e.c.uid == principal.uid
    if principal.kind == "device":
        return e.c.did == principal.did
    return (e.c.aid == principal.aid) & e.c.uid.is_(None)


async def _export(rt: Runtime, principal: Principal, export_id: str) -> dict[str, Any]:
    async with rt.db.read() as conn:
        row = (
            (await conn.execute(select(t.exports).where(t.exports.c.id == export_id, _owned(principal))))
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"Export {export_id} not found")
    return dict(row)


def status_view(rt: Runtime, row: dict[str, Any]) -> dict[str, Any]:
    ttl = None
    if row["status"] in DOWNLOADABLE and row["expires_on"] is not None:
        ttl = str(max(0, (row["expires_on"] - rt.clock.now_ms()) // 1000))
    return {
        "exportId": row["id"],
        "status": row["status"],
        "md5": row["md5"],
        "expirationDate": row["expires_on"],
        "fileSize": row["file_size"],
        "totalMessages": row["total_messages"],
        "ttl": ttl,
    }


async def get_status(rt: Runtime, principal: Principal, export_id: str) -> dict[str, Any]:
    return status_view(rt, await _export(rt, principal, export_id))


async def open_result(rt: Runtime, principal: Principal, export_id: str) -> tuple[Path, int]:
    """The archive to send and its message count; the export becomes ``Served``."""
    row = await _export(rt, principal, export_id)
    status = row["status"]
    if status == "Expired":
        raise Gone(f"Export {export_id} has expired")
    if status == "Failure":
        # The cause (``error``) is for the operator's logs, not the client: it may name server paths.
        raise Conflict(f"Export {export_id} failed; please request it again")
    if status not in DOWNLOADABLE:
        raise Conflict(f"Export {export_id} is not ready yet (status {status})")
    path = archive_path(rt, export_id)
    if not path.exists():
        raise Gone(f"Export {export_id} has expired")
    if status == "Success":
        async with rt.db.write() as conn:
            await conn.execute(
                update(t.exports)
                .where(t.exports.c.id == export_id, t.exports.c.status == "Success")
                .values(status="Served", modified_on=rt.clock.now_ms())
            )
    return path, int(row["total_messages"] or 0)


async def history(rt: Runtime, principal: Principal, count: int | None, offset: int | None) -> dict[str, Any]:
    limit, skip = page_bounds(count, offset)
    e = t.exports
    async with rt.db.read() as conn:
        total = (
            await conn.execute(select(func.count()).select_from(e).where(_owned(principal)))
        ).scalar_one()
        rows = (
            await conn.execute(
                select(e)
                .where(_owned(principal))
                .order_by(e.c.created_on.desc(), e.c.id)
                .limit(limit)
                .offset(skip)
            )
        ).mappings()
        exports = [
            {
                **{k: v for k, v in status_view(rt, dict(r)).items() if k != "ttl"},
                "request": {**request_view(r["request"]), "requestDate": r["request"]["requestDate"]},
            }
            for r in rows
        ]
    return {"count": len(exports), "offset": skip, "total": total, "data": {"exports": exports}}


# --- expiry -------------------------------------------------------------------------------------------


async def expire(rt: Runtime) -> dict[str, int]:
    """Archives past their expiration date: file removed, status ``Expired``. Also closes exports
    whose job is gone or was given up (a crash loop), so none stays ``InProgress`` forever."""
    e, j = t.exports, t.jobs
    now = rt.clock.now_ms()
    async with rt.db.read() as conn:
        due = list(
            (
                await conn.execute(select(e.c.id).where(e.c.status.in_(DOWNLOADABLE), e.c.expires_on <= now))
            ).scalars()
        )
        job_status = select(j.c.status).where(j.c.unique_key == "export:" + e.c.id).scalar_subquery()
        orphans = list(
            (
                await conn.execute(
                    select(e.c.id).where(
                        e.c.status.in_(UNFINISHED),
                        func.coalesce(job_status, "missing").in_(("dead", "missing")),
                    )
                )
            ).scalars()
        )
    for export_id in due:
        archive_path(rt, export_id).unlink(missing_ok=True)
    async with rt.db.write() as conn:
        if due:
            await conn.execute(
                update(e)
                .where(e.c.id.in_(due), e.c.status.in_(DOWNLOADABLE))
                .values(status="Expired", modified_on=now)
            )
        if orphans:
            await conn.execute(
                update(e)
                .where(e.c.id.in_(orphans), e.c.status.in_(UNFINISHED))
                .values(status="Failure", error="The export job was given up", modified_on=now)
            )
    for export_id in orphans:
        shutil.rmtree(export_dir(rt) / f"{export_id}.work", ignore_errors=True)
    return {"expired": len(due), "failed": len(orphans)}
