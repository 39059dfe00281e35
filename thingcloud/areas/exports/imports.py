"""Importing historical messages (beyond ARTIK): ``POST /v1.1/messages/import`` takes a JSON-lines or
CSV file of one device's past messages, each with its own ``ts``, and a job stores them.

Every row goes through the ingest path's own checks and normalization (``history_message``) and the
group-commit writer, flagged ``history``: deduplicated like a re-sent live message (same device, ts
and data), folded into the snapshot only where it is newer than the stored value, but without feed
entries — no rules, notifications or /live frames — and without marking the device as heard from.
The file is spooled to disk as it arrives (never held in memory) and read back in chunks; the row
``message_imports`` shows progress and the first bad rows.

Row formats: JSON lines ``{"ts": ms, "data": {...}}`` (other keys ignored; ``sdid``, if present, must
be the device's); CSV with a header naming at least ``ts`` and ``data`` (the JSON payload) — the
``csv1`` export format, so an export can be imported again.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, select, update

from thingcloud import tables as t
from thingcloud.areas.exports.service import export_dir
from thingcloud.areas.messages.service import history_message, manifest_for
from thingcloud.areas.messages.writer import Pending
from thingcloud.auth.permissions import Access, Principal, check_device
from thingcloud.errors import ApiError, NotFound, PayloadTooLarge, ValidationFailed
from thingcloud.ids import new_id
from thingcloud.jobs import enqueue
from thingcloud.runtime import Runtime

IMPORT_JOB = "messages.import"
CHUNK_ROWS = 1000
MAX_LISTED_ERRORS = 100
FORMATS = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl", "csv": "csv"}
CONTENT_TYPES = {
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/json": "jsonl",
    "text/csv": "csv",
}

Row = tuple[int, Any]  # (line, parsed row or the ValidationFailed explaining why it is bad)


def import_path(rt: Runtime, import_id: str) -> Path:
    return export_dir(rt) / f"import-{import_id}.upload"


def file_format(fmt: str | None, content_type: str | None) -> str:
    if fmt:
        found = FORMATS.get(fmt.lower())
        if found is None:
            raise ValidationFailed.field("format", "Must be 'jsonl' or 'csv'")
        return found
    media = (content_type or "").split(";")[0].strip().lower()
    found = CONTENT_TYPES.get(media)
    if found is None:
        raise ValidationFailed.field(
            "format", "Required parameter: format=jsonl|csv or a text/csv or application/x-ndjson body"
        )
    return found


async def accept(
    rt: Runtime,
    principal: Principal,
    sdid: str | None,
    fmt: str | None,
    content_type: str | None,
    body: AsyncIterator[bytes],
) -> dict[str, Any]:
    """Check, spool the file to disk, record the import and schedule its job; its status is returned."""
    if not sdid:
        raise ValidationFailed.field("sdid", "Required parameter")
    kind = file_format(fmt, content_type)
    device = await rt.devices.get(sdid)
    await check_device(rt, principal, device.as_row(), Access.WRITE)
    import_id = new_id()
    path = import_path(rt, import_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    try:
        with path.open("wb") as spool:
            async for block in body:
                size += len(block)
                if size > rt.settings.import_max_bytes:
                    raise PayloadTooLarge(f"Import files are limited to {rt.settings.import_max_bytes} bytes")
                await asyncio.to_thread(spool.write, block)
        if size == 0:
            raise ValidationFailed.field("body", "The file is empty")
        now = rt.clock.now_ms()
        row: dict[str, Any] = {
            "id": import_id,
            "sdid": sdid,
            "uid": principal.uid if principal.kind == "user" else None,
            "aid": principal.aid if principal.kind == "app" else None,
            "did": principal.did if principal.kind == "device" else None,
            "format": kind,
            "status": "Received",
            "total_rows": 0,
            "imported": 0,
            "duplicates": 0,
            "failed": 0,
            "errors": [],
            "created_on": now,
            "modified_on": now,
        }
        async with rt.db.write() as conn:
            await conn.execute(t.message_imports.insert().values(row))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    await enqueue(rt, IMPORT_JOB, {"importId": import_id}, unique_key=f"import:{import_id}")
    return view(row)


def view(row: Any) -> dict[str, Any]:
    return {
        "importId": row["id"],
        "sdid": row["sdid"],
        "format": row["format"],
        "status": row["status"],
        "totalRows": row["total_rows"],
        "imported": row["imported"],
        "duplicates": row["duplicates"],
        "failed": row["failed"],
        "errors": row["errors"],
        "error": row.get("error"),
        "createdOn": row["created_on"],
        "modifiedOn": row["modified_on"],
    }


async def get_import(rt: Runtime, principal: Principal, import_id: str) -> dict[str, Any]:
    i = t.message_imports
    if principal.kind == "user":
        mine = i.c.uid == principal.uid
    elif principal.kind == "device":
        mine = i.c.did == principal.did
    else:
        mine = (i.c.aid == principal.aid) & i.c.uid.is_(None)
    async with rt.db.read() as conn:
        row = (await conn.execute(select(i).where(i.c.id == import_id, mine))).mappings().first()
    if row is None:
        raise NotFound(f"Import {import_id} not found")
    return view(dict(row))


async def close_abandoned(rt: Runtime) -> int:
    """Imports whose job was given up without the handler's say (its runner died on the last attempt)
    or is gone: ``Failure``, their file removed. Run by the recurring expiry job."""
    i, j = t.message_imports, t.jobs
    job_status = select(j.c.status).where(j.c.unique_key == "import:" + i.c.id).scalar_subquery()
    abandoned = (i.c.status.in_(("Received", "InProgress"))) & func.coalesce(job_status, "missing").in_(
        ("dead", "missing")
    )
    async with rt.db.read() as conn:
        ids = list((await conn.execute(select(i.c.id).where(abandoned))).scalars())
    if not ids:
        return 0
    async with rt.db.write() as conn:
        await conn.execute(
            update(i)
            .where(i.c.id.in_(ids), i.c.status.in_(("Received", "InProgress")))
            .values(status="Failure", error="The import job was given up", modified_on=rt.clock.now_ms())
        )
    for import_id in ids:
        import_path(rt, import_id).unlink(missing_ok=True)
    return len(ids)


# --- the job ------------------------------------------------------------------------------------------


def _jsonl_rows(path: Path, sdid: str) -> Iterator[Row]:
    with path.open("rb") as lines:
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                parsed = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield line_no, ValidationFailed("Not a JSON object")
                continue
            if isinstance(parsed, dict) and parsed.get("sdid") not in (None, sdid):
                yield line_no, ValidationFailed(f"sdid {parsed.get('sdid')} is not the imported device")
                continue
            yield line_no, parsed


def _csv_rows(path: Path, sdid: str) -> Iterator[Row]:
    with path.open(newline="", encoding="utf-8", errors="replace") as text:
        reader = csv.DictReader(text)
        missing = {"ts", "data"} - set(reader.fieldnames or ())
        if missing:
            yield (
                1,
                ValidationFailed(
                    "The CSV header must name the columns ts and data "
                    f"(missing: {', '.join(sorted(missing))})"
                ),
            )
            return
        for record in reader:
            line_no = reader.line_num
            if record.get("sdid") not in (None, "", sdid):
                yield line_no, ValidationFailed(f"sdid {record.get('sdid')} is not the imported device")
                continue
            try:
                ts: Any = int(record["ts"] or "")
                data = orjson.loads(record["data"] or "")
            except (ValueError, orjson.JSONDecodeError):
                yield line_no, ValidationFailed("ts must be an integer and data a JSON object")
                continue
            yield line_no, {"ts": ts, "data": data}


def _message(error: ApiError) -> str:
    if isinstance(error, ValidationFailed) and error.errors:
        first = error.errors[0]
        return f"{first.field}: {'; '.join(first.messages)}"
    return error.message


async def process(rt: Runtime, import_id: str, *, last_attempt: bool) -> dict[str, Any]:
    i = t.message_imports
    async with rt.db.read() as conn:
        row = (await conn.execute(select(i).where(i.c.id == import_id))).mappings().first()
    if row is None or row["status"] not in ("Received", "InProgress"):
        return {"skipped": None if row is None else row["status"]}
    path = import_path(rt, import_id)
    counts = {"total_rows": 0, "imported": 0, "duplicates": 0, "failed": 0}
    errors: list[dict[str, Any]] = []

    async def save(**values: Any) -> None:
        async with rt.db.write() as conn:
            await conn.execute(
                update(i)
                .where(i.c.id == import_id)
                .values(**counts, errors=errors, modified_on=rt.clock.now_ms(), **values)
            )

    await save(status="InProgress")  # a retry starts counting again; rows stored before are duplicates
    try:
        device = await rt.devices.get(row["sdid"])
        manifest = await manifest_for(rt, device)
        reader = _jsonl_rows if row["format"] == "jsonl" else _csv_rows
        rows = reader(path, row["sdid"])
        while chunk := await asyncio.to_thread(lambda: list(itertools.islice(rows, CHUNK_ROWS))):
            await _store_chunk(rt, device, manifest, chunk, counts, errors)
            await save()
    except NotFound as exc:  # the device was deleted meanwhile: nothing more can be stored
        await save(status="Failure", error=exc.message)
        path.unlink(missing_ok=True)
        return {"failed": exc.message}
    except Exception as exc:
        if last_attempt:
            # The client sees the kind of failure; its details (server paths, SQL) stay in the logs.
            await save(
                status="Failure", error=f"Internal error ({type(exc).__name__}); import the file again"
            )
            path.unlink(missing_ok=True)
        raise
    await save(status="Success")
    path.unlink(missing_ok=True)
    return dict(counts)


async def _store_chunk(
    rt: Runtime,
    device: Any,
    manifest: Any,
    chunk: list[Row],
    counts: dict[str, int],
    errors: list[dict[str, Any]],
) -> None:
    now = rt.clock.now_ms()
    pending: list[Pending] = []
    for line, parsed in chunk:
        counts["total_rows"] += 1
        try:
            if isinstance(parsed, ApiError):
                raise parsed
            pending.append(history_message(rt, device, manifest, parsed, now))
        except ApiError as exc:
            counts["failed"] += 1
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append({"line": line, "message": _message(exc)})
    # Submitted together, the chunk shares the writer's group commits.
    results = await asyncio.gather(*(rt.writer.submit(p) for p in pending), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    duplicates = sum(1 for p in pending if p.duplicate)
    counts["duplicates"] += duplicates
    counts["imported"] += len(pending) - duplicates
