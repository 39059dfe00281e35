"""The background jobs of this area, on the durable job runner (``thingcloud/jobs``): making an export
archive, expiring old ones (recurring), and importing a file of historical messages.

Every handler is idempotent, because a job whose node died is run again once its lease runs out: an
export rebuilds its archive from scratch (its row still says ``InProgress``), an import replays its
file and the dedup keys turn what the lost attempt already stored into duplicates. Once attempts
are exhausted the export or import is marked ``Failure``; the recurring expiry also closes any whose
job is gone, so nothing stays ``InProgress`` forever.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update

from thingcloud import tables as t
from thingcloud.areas.exports import archive, imports, mail, worker
from thingcloud.areas.exports.service import EXPORT_JOB, UNFINISHED, expire, export_dir
from thingcloud.jobs import Job, job
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

EXPIRE_EVERY = 300.0


async def _set_export(rt: Runtime, export_id: str, **values: Any) -> None:
    async with rt.db.write() as conn:
        await conn.execute(
            update(t.exports)
            .where(t.exports.c.id == export_id, t.exports.c.status.in_(UNFINISHED))
            .values(modified_on=rt.clock.now_ms(), **values)
        )


@job(EXPORT_JOB)
async def run_export(rt: Runtime, job: Job) -> dict[str, Any]:
    export_id = str(job.payload["exportId"])
    async with rt.db.read() as conn:
        row = (await conn.execute(select(t.exports).where(t.exports.c.id == export_id))).mappings().first()
    if row is None or row["status"] not in UNFINISHED:
        return {"skipped": None if row is None else row["status"]}  # finished by an earlier attempt
    request = row["request"]
    await _set_export(rt, export_id, status="InProgress")
    plan = archive.Plan(
        sources=archive.sources_of(request),
        start=request["startDate"],
        end=request["endDate"],
        order=request["order"],
        format=request["format"],
        csv_headers=request["csvHeaders"] is not False,
    )
    directory = export_dir(rt)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        made = await worker.make_archive(rt, export_id, plan, directory)
    except Exception as exc:
        log.warning("export %s attempt %d failed: %s", export_id, job.attempts, type(exc).__name__)
        if job.attempts >= job.max_attempts:
            await _set_export(rt, export_id, status="Failure", error=f"{type(exc).__name__}: {exc}"[:2000])
            await mail.notify_export(rt, export_id, row["uid"], "Failure", 0, request.get("url"))
        raise
    now = rt.clock.now_ms()
    await _set_export(
        rt,
        export_id,
        status="Success",
        md5=made.md5,
        file_size=made.size,
        total_messages=made.total,
        expires_on=now + rt.settings.export_ttl * 1000,
    )
    await mail.notify_export(rt, export_id, row["uid"], "Success", made.total, request.get("url"))
    return {"messages": made.total, "bytes": made.size}


@job("exports.expire", every=EXPIRE_EVERY)
async def expire_exports(rt: Runtime, _job: Job) -> dict[str, Any]:
    return {**await expire(rt), "importsClosed": await imports.close_abandoned(rt)}


@job(imports.IMPORT_JOB)
async def run_import(rt: Runtime, job: Job) -> dict[str, Any]:
    return await imports.process(
        rt, str(job.payload["importId"]), last_attempt=job.attempts >= job.max_attempts
    )
