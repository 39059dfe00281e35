"""Retention of messages and actions (beyond ARTIK): a global default, a per-device override, and
the background purge that enforces both without blocking ingest.

The purge works device by device on the primary key (``sdid``/``ddid``, ``ts``) in short chunks, so
each transaction is brief and the SQLite writer is never held for long. On PostgreSQL, whole monthly
partitions older than every retention in force are dropped instead of deleted row by row. SQLite
space is handed back with ``PRAGMA incremental_vacuum`` (the database is created with
``auto_vacuum=INCREMENTAL``). Deleting a device removes its messages through a job, too. Both
fix the rollups of what they delete (``rollup_maintenance.forget``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, text, tuple_

from thingcloud import tables as t
from thingcloud.areas.messages import rollup_maintenance as rollups
from thingcloud.areas.messages.writer import PARTITIONS_DROPPED
from thingcloud.auth.permissions import Access, Principal, check_device_owner
from thingcloud.errors import ValidationFailed
from thingcloud.jobs import Job, job
from thingcloud.runtime import Runtime

DAY_MS = 86_400_000
CHUNK = 5_000
MAX_DAYS = 36_500
PURGE_EVERY = 3600.0


async def device_row(rt: Runtime, did: str) -> dict[str, Any]:
    info = await rt.devices.get(did)
    return info.as_row()


async def get_retention(rt: Runtime, principal: Principal, did: str) -> dict[str, Any]:
    await check_device_owner(rt, principal, await device_row(rt, did), Access.READ)
    async with rt.db.read() as conn:
        days = (
            await conn.execute(select(t.device_retention.c.days).where(t.device_retention.c.did == did))
        ).scalar()
    return _view(rt, did, days)


async def set_retention(rt: Runtime, principal: Principal, did: str, days: int | None) -> dict[str, Any]:
    """Set (or, with None, clear) a device's retention in days."""
    if days is not None and not 1 <= days <= MAX_DAYS:
        raise ValidationFailed.field("days", f"Must be between 1 and {MAX_DAYS}, or null for the default")
    await check_device_owner(rt, principal, await device_row(rt, did), Access.WRITE)
    async with rt.db.write() as conn:
        await conn.execute(delete(t.device_retention).where(t.device_retention.c.did == did))
        if days is not None:
            await conn.execute(
                t.device_retention.insert().values(did=did, days=days, modified_on=rt.clock.now_ms())
            )
    return _view(rt, did, days)


def _view(rt: Runtime, did: str, days: int | None) -> dict[str, Any]:
    default = rt.settings.message_retention_days or None
    return {"did": did, "days": days, "defaultDays": default, "effectiveDays": days or default}


# --- Background work ---------------------------------------------------------------------------------


async def _delete_chunked(rt: Runtime, table: Any, key: str, did: str, before: int | None) -> int:
    """Delete a device's rows (older than ``before`` if given) in short transactions."""
    column = table.c[key]
    total = 0
    while True:
        where = [column == did]
        if before is not None:
            where.append(table.c.ts < before)
        chunk = select(table.c.mid).where(*where).limit(CHUNK).scalar_subquery()
        async with rt.db.write() as conn:
            result = await conn.execute(delete(table).where(column == did, table.c.mid.in_(chunk)))
        deleted = max(result.rowcount or 0, 0)
        total += deleted
        if deleted < CHUNK:
            return total


async def purge_device(rt: Runtime, did: str, before: int | None) -> int:
    # Rollups (rollups.py) of the range go before the messages do, so reads scan the raw rows
    # meanwhile, and are rebuilt after, over whatever a concurrent recompute saw mid-delete.
    m = t.messages
    where = [m.c.sdid == did] if before is None else [m.c.sdid == did, m.c.ts < before]
    async with rt.db.read() as conn:
        doomed = (await conn.execute(select(m.c.ts).where(*where).limit(1))).first() is not None
    if doomed:
        await rollups.forget(rt, did, before)
    deleted = await _delete_chunked(rt, t.messages, "sdid", did, before)
    if doomed:
        await rollups.forget(rt, did, before)
    deleted += await _delete_chunked(rt, t.actions, "ddid", did, before)
    return deleted


@job("messages.purge", every=PURGE_EVERY)
async def purge(rt: Runtime, _job: Job) -> dict[str, Any]:
    """Enforce retention everywhere, and forget dedup keys older than the dedup window."""
    now = rt.clock.now_ms()
    default = rt.settings.message_retention_days
    async with rt.db.read() as conn:
        overrides = dict(
            (await conn.execute(select(t.device_retention.c.did, t.device_retention.c.days))).all()
        )
        dids = [r[0] for r in await conn.execute(select(t.devices.c.id))] if default else list(overrides)
    deleted = 0
    for did in dids:
        days = overrides.get(did, default)
        if days:
            deleted += await purge_device(rt, did, now - int(days) * DAY_MS)
    dropped: list[str] = []
    longest = max([default, *overrides.values()]) if default else 0
    if longest and not rt.db.is_sqlite:
        dropped = await drop_partitions(rt, now - int(longest) * DAY_MS)
    dedup = await forget_dedup_keys(rt, now - rt.settings.dedup_window_seconds * 1000)
    if rt.db.is_sqlite and deleted:
        await reclaim_sqlite_space(rt)
    return {"deleted": deleted, "droppedPartitions": dropped, "dedupKeysForgotten": dedup}


async def reclaim_sqlite_space(rt: Runtime) -> None:
    """Hand the free pages back to the file system. ``PRAGMA incremental_vacuum`` frees one page per
    step, and the driver steps a statement without result columns only once (one page per call); a
    script is stepped to the end."""
    async with rt.db.write() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.executescript("PRAGMA incremental_vacuum")


async def forget_dedup_keys(rt: Runtime, before: int) -> int:
    d = t.message_dedup
    total = 0
    while True:
        chunk = select(d.c.sdid, d.c.ts, d.c.digest).where(d.c.created_on < before).limit(CHUNK)
        async with rt.db.write() as conn:
            keys = [tuple(k) for k in (await conn.execute(chunk)).all()]
            if keys:
                await conn.execute(delete(d).where(tuple_(d.c.sdid, d.c.ts, d.c.digest).in_(keys)))
        total += len(keys)
        if len(keys) < CHUNK:
            return total


async def drop_partitions(rt: Runtime, before: int) -> list[str]:
    """Drop PostgreSQL monthly partitions whose whole range is older than ``before``."""
    query = text(
        """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname IN ('messages', 'actions')
        """
    )
    dropped: list[str] = []
    async with rt.db.read() as conn:
        partitions = (await conn.execute(query)).all()
    for name, bound in partitions:
        # bound looks like: FOR VALUES FROM ('1700000000000') TO ('1702592000000')
        upper = int(str(bound).rsplit("TO (", 1)[1].strip("')"))
        if upper <= before:
            async with rt.db.engine.begin() as conn:
                await conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
            dropped.append(name)
    if dropped:
        await rollups.forget_all_before(rt, before)
        # Every node's writer caches which partitions exist: tell them all.
        await rt.bus.publish(PARTITIONS_DROPPED, {"partitions": dropped})
    return dropped


@job("messages.delete_device")
async def delete_device_messages(rt: Runtime, job_: Job) -> dict[str, Any]:
    """Everything a deleted device sent or received; idempotent (a re-run finds nothing left)."""
    did = str(job_.payload["did"])
    deleted = await purge_device(rt, did, None)
    async with rt.db.write() as conn:
        await conn.execute(delete(t.message_dedup).where(t.message_dedup.c.sdid == did))
    return {"deleted": deleted}
