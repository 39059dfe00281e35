"""Upkeep of the message rollups (what they are, and why reads through them stay exact: rollups.py):
the feed consumer that adds committed messages to their hour rows, recomputation from the raw
messages in one snapshot, and what retention, device deletion and history imports do to them.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, func, insert, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import tables as t
from thingcloud.areas.messages.filters import NUMERIC_CLASSES
from thingcloud.areas.messages.rollups import CONSUMER, DAY_MS, HOUR_MS, Stats, merge_intervals, raw_stats
from thingcloud.errors import NotFound
from thingcloud.feed import FeedEntry

if TYPE_CHECKING:
    from thingcloud.areas.messages.writer import Pending
    from thingcloud.runtime import Runtime

ROLLUP_LOCK = 0x726F6C6C  # "roll": PostgreSQL advisory lock class, keyed by device
# The rollup consumer's pause after a partial batch: its cost is per device and batch, not per
# message, so under load it works in batches of two seconds (bench/ingest.py: -50 % of ingest
# throughput on SQLite with one transaction per device and batch at every commit).
ROLLUP_COALESCE_SECONDS = 2.0


async def _lock(conn: AsyncConnection, sdid: str) -> None:
    if conn.dialect.name == "postgresql":
        a, b = lock_parameters(sdid)
        await conn.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": a, "b": b})


async def numeric_paths(rt: Runtime, sdid: str) -> list[str] | None:
    """The device's numeric field paths now, or None if the device is gone."""
    from thingcloud.areas.messages.queries import device_manifest

    try:
        manifest = await device_manifest(rt, sdid)
    except NotFound:
        return None
    return [p for p, cls in manifest.field_paths().items() if cls in NUMERIC_CLASSES]


def _row(sdid: str, path: str, size: int, bucket: int, s: Stats, seq: int) -> dict[str, Any]:
    return {
        "sdid": sdid,
        "path": path,
        "size": size,
        "bucket": bucket,
        "n": s.n,
        "total": s.total,
        "low": s.low,
        "high": s.high,
        "m2": s.m2,
        "max_cts": s.max_cts,
        "seq": seq,
    }


@asynccontextmanager
async def _snapshot(rt: Runtime, sdid: str) -> AsyncIterator[AsyncConnection]:
    """A write transaction reading one snapshot, begun once the device's rollup lock is held: the
    messages it reads are exactly those of the feed entries up to the ``max(seq)`` it reads (plus
    imported history), which is what makes a recomputed row's ``seq`` true. SQLite: the write
    transaction (ingest shares its lock). PostgreSQL: REPEATABLE READ under a session lock taken
    before the snapshot, so the snapshot already sees the previous holder's commit."""
    if rt.db.is_sqlite:
        async with rt.db.write() as conn:
            yield conn
        return
    a, b = lock_parameters(sdid)
    key = {"a": a, "b": b}
    async with rt.db.engine.connect() as conn:
        try:
            await conn.execute(text("SELECT pg_advisory_lock(:a, :b)"), key)
            await conn.commit()
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                yield conn
            await conn.execute(text("SELECT pg_advisory_unlock(:a, :b)"), key)
            await conn.commit()
        except BaseException:
            # Never hand a pooled connection back holding the session lock: end the session.
            await conn.invalidate()
            raise


async def recompute(rt: Runtime, sdid: str, hours: set[int], paths: list[str] | None = None) -> None:
    """Recompute the hour rows of ``hours`` (and of any hour of their days without rows) from the raw
    messages, then the rows of their days; idempotent. ``paths``: the device's numeric field paths
    (looked up when not given)."""
    if paths is None:
        paths = await numeric_paths(rt, sdid)
    r = t.message_rollups
    if paths is None:
        async with rt.db.write() as conn:
            await conn.execute(delete(r).where(r.c.sdid == sdid))
        return
    days = sorted({h - h % DAY_MS for h in hours})
    async with _snapshot(rt, sdid) as conn:
        covered = int(await conn.scalar(select(func.coalesce(func.max(t.feed.c.seq), 0))) or 0)
        for day in days:
            span = (r.c.sdid == sdid, r.c.bucket >= day, r.c.bucket < day + DAY_MS)
            present = {
                (p, int(b))
                for p, b in await conn.execute(select(r.c.path, r.c.bucket).where(*span, r.c.size == HOUR_MS))
            }
            await conn.execute(delete(r).where(*span, r.c.path.not_in(paths)))
            for path in paths:
                todo = sorted(
                    h for h in range(day, day + DAY_MS, HOUR_MS) if h in hours or (path, h) not in present
                )
                if not todo:
                    continue
                fresh = await raw_stats(
                    conn, sdid, path, merge_intervals([(h, h + HOUR_MS) for h in todo]), None, HOUR_MS
                )
                await conn.execute(
                    delete(r).where(*span, r.c.path == path, r.c.size == HOUR_MS, r.c.bucket.in_(todo))
                )
                await conn.execute(
                    insert(r), [_row(sdid, path, HOUR_MS, h, fresh.get(h, Stats()), covered) for h in todo]
                )
        await _rebuild_days_of(conn, {sdid: set(days)}, {sdid: paths}, covered)


def number_at(data: Any, path: str) -> float | None:
    """The value ``field_value`` reads in SQL, read from a message's data: a JSON number, else None."""
    node = data
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return float(node)


def _of(values: list[tuple[float, int]]) -> Stats:
    """Stats of (value, cts) pairs, M2 around their own mean."""
    numbers = [v for v, _ in values]
    mean = sum(numbers) / len(numbers)
    return Stats(
        len(numbers),
        sum(numbers),
        min(numbers),
        max(numbers),
        sum((v - mean) * (v - mean) for v in numbers),
        max(c for _, c in values),
    )


@dataclass
class HourValues:
    """A feed batch's values for one device hour: each numeric path's stats over all of the batch's
    entries (``whole``), and the entries, for the rare replay that a row already partly covers."""

    entries: list[FeedEntry]
    first: int  # lowest seq among the entries
    newest: int  # highest
    whole: dict[str, Stats]


def hour_values(plans: list[tuple[str, list[str], list[FeedEntry]]]) -> dict[tuple[str, int], HourValues]:
    """Group a batch's message entries by device hour and reduce each path's values to Stats: the
    per-message Python work of a batch, done before the write transaction (in a worker thread, so it
    neither holds the SQLite writer that ingest waits for nor stalls the event loop)."""
    grouped: dict[tuple[str, int], list[FeedEntry]] = {}
    for sdid, _, entries in plans:
        for entry in entries:
            ts = int(entry.payload["ts"])
            grouped.setdefault((sdid, ts - ts % HOUR_MS), []).append(entry)
    paths_of = {sdid: paths for sdid, paths, _ in plans}
    out: dict[tuple[str, int], HourValues] = {}
    for (sdid, hour), found in grouped.items():
        seqs = [e.seq for e in found]
        whole = {}
        for path in paths_of[sdid]:
            values = _values(found, path, 0)
            if values:
                whole[path] = _of(values)
        out[(sdid, hour)] = HourValues(found, min(seqs), max(seqs), whole)
    return out


def _values(entries: list[FeedEntry], path: str, after: int) -> list[tuple[float, int]]:
    return [
        (v, int(e.payload.get("cts") or 0))
        for e in entries
        if e.seq > after and (v := number_at(e.payload.get("data"), path)) is not None
    ]


async def _apply_batch(
    conn: AsyncConnection,
    plans: list[tuple[str, list[str], list[FeedEntry]]],
    prepared: dict[tuple[str, int], HourValues],
) -> dict[str, set[int]]:
    """Add a feed batch's message entries (``prepared`` by ``hour_values``) to their devices' hour
    rows and rebuild the rows of their days, each entry only to rows that do not cover its seq yet
    (the feed is at least once). A few statements per batch whatever the number of devices
    (executemany), since on SQLite the batch holds the writer the ingest waits for. Returns, per
    device, the hours without rows: recomputed from the raw messages afterwards. No raw scan for the
    live case: the values are in the entries."""
    r = t.message_rollups
    for sdid, _, _ in plans:  # plans come sorted by device: a fixed lock order
        await _lock(conn, sdid)
    rows = {
        (row.sdid, row.path, int(row.bucket)): row
        for row in await conn.execute(
            select(r).where(r.c.size == HOUR_MS, tuple_(r.c.sdid, r.c.bucket).in_(list(prepared)))
        )
    }
    hours_of: dict[str, list[tuple[int, HourValues]]] = {}
    for (sdid, hour), batch in prepared.items():
        hours_of.setdefault(sdid, []).append((hour, batch))
    missing: dict[str, set[int]] = {}
    updates: list[dict[str, Any]] = []
    touched_days: dict[str, set[int]] = {}
    for sdid, paths, _ in plans:
        for hour, batch in hours_of.get(sdid, []):
            for path in paths:
                row = rows.get((sdid, path, hour))
                if row is None:
                    missing.setdefault(sdid, set()).add(hour)
                    continue
                if batch.newest <= row.seq:
                    continue  # handed over again
                if batch.first > row.seq:
                    added = batch.whole.get(path)
                else:  # partly covered already (a replay): only the entries after the row's seq
                    values = _values(batch.entries, path, row.seq)
                    added = _of(values) if values else None
                total = Stats(row.n, row.total, row.low, row.high, row.m2, row.max_cts)
                if added is not None:
                    total.merge(added)
                updates.append(
                    {
                        f"k_{k}" if k in KEY else k: v
                        for k, v in _row(sdid, path, HOUR_MS, hour, total, batch.newest).items()
                    }
                )
                touched_days.setdefault(sdid, set()).add(hour - hour % DAY_MS)
    if updates:
        await conn.execute(
            r.update()
            .where(*(r.c[k] == bindparam(f"k_{k}") for k in KEY))
            .values({c: bindparam(c) for c in ("n", "total", "low", "high", "m2", "max_cts", "seq")}),
            updates,
        )
    newest = max(batch.newest for batch in prepared.values())
    days = {
        sdid: touched - {h - h % DAY_MS for h in missing.get(sdid, set())}  # those: after recompute
        for sdid, touched in touched_days.items()
    }
    await _rebuild_days_of(
        conn, {sdid: d for sdid, d in days.items() if d}, {s: p for s, p, _ in plans}, newest
    )
    return missing


async def _rebuild_days_of(
    conn: AsyncConnection, days: dict[str, set[int]], paths: dict[str, list[str]], seq: int
) -> None:
    """Each day row of ``days`` (per device) from its 24 hour rows; none while an hour has no row (the
    day is then read from its hours and the raw messages). One read of the devices' hour rows, one
    delete and one insert (each executemany), whatever the number of devices."""
    if not days:
        return
    r = t.message_rollups
    low = min(min(d) for d in days.values())
    high = max(max(d) for d in days.values()) + DAY_MS
    hours: dict[tuple[str, str, int], list[Stats]] = {}
    found = await conn.execute(
        select(r.c.sdid, r.c.path, r.c.bucket, r.c.n, r.c.total, r.c.low, r.c.high, r.c.m2, r.c.max_cts)
        .where(r.c.sdid.in_(sorted(days)), r.c.size == HOUR_MS, r.c.bucket >= low, r.c.bucket < high)
        .order_by(r.c.sdid, r.c.path, r.c.bucket)
    )
    for sdid, path, bucket, *stats in found:
        day = int(bucket) - int(bucket) % DAY_MS
        if day in days[sdid]:
            hours.setdefault((sdid, path, day), []).append(Stats(*stats))
    await conn.execute(
        delete(r).where(
            r.c.sdid == bindparam("k_sdid"),
            r.c.size == DAY_MS,
            r.c.bucket == bindparam("k_bucket"),
        ),
        [{"k_sdid": sdid, "k_bucket": day} for sdid, ds in days.items() for day in ds],
    )
    fresh: list[dict[str, Any]] = []
    for sdid, ds in days.items():
        for day in sorted(ds):
            for path in paths[sdid]:
                parts = hours.get((sdid, path, day), [])
                if len(parts) < DAY_MS // HOUR_MS:
                    continue  # an hour without a row: the day is read from its hours
                total = Stats()
                for part in parts:
                    total.merge(part)
                fresh.append(_row(sdid, path, DAY_MS, day, total, seq))
    if fresh:
        await conn.execute(insert(r), fresh)


KEY = ("sdid", "path", "size", "bucket")


async def rebuild_device(rt: Runtime, sdid: str, first: int, last: int, paths: list[str]) -> None:
    """Recompute every hour of ``first ≤ ts < last`` (used by the bench's bulk load)."""
    start = first - first % DAY_MS
    for day in range(start, last, DAY_MS):
        await recompute(rt, sdid, set(range(day, day + DAY_MS, HOUR_MS)), paths)


async def forget(rt: Runtime, sdid: str, before: int | None) -> None:
    """After messages of ``sdid`` older than ``before`` (all, for None) were deleted: drop the rows
    of the deleted range and recompute the hour and day ``before`` falls in."""
    r = t.message_rollups
    async with rt.db.write() as conn:
        await _lock(conn, sdid)
        where = [r.c.sdid == sdid]
        if before is not None:
            # Hour rows before the boundary hour, and day rows up to the boundary day (rebuilt below).
            where.append(r.c.bucket < before - before % HOUR_MS)
        await conn.execute(delete(r).where(*where))
    if before is not None and before % DAY_MS:
        await recompute(rt, sdid, {before - before % HOUR_MS})


async def forget_all_before(rt: Runtime, before: int) -> None:
    """After whole partitions were dropped: rows of buckets that ended before ``before`` describe
    nothing any more."""
    r = t.message_rollups
    async with rt.db.write() as conn:
        await conn.execute(delete(r).where(r.c.bucket + r.c.size <= before))


# --- imported history (no feed entries) ----------------------------------------------------------------


def drop_statement() -> Any:
    """Deletes one (device, size, bucket)'s rows: run by the group commit for imported messages."""
    r = t.message_rollups
    return delete(r).where(
        r.c.sdid == bindparam("sdid"), r.c.size == bindparam("size"), r.c.bucket == bindparam("bucket")
    )


def drops(imported: Iterable[Pending]) -> tuple[list[str], list[dict[str, Any]]]:
    """For the imported messages of a batch: their devices (sorted: the order locks are taken in) and
    the ``drop_statement`` rows of the hours and days they fall in."""
    buckets = set()
    for item in imported:
        ts = int(item.row["ts"])
        buckets.add((item.did, HOUR_MS, ts - ts % HOUR_MS))
        buckets.add((item.did, DAY_MS, ts - ts % DAY_MS))
    rows = [{"sdid": d, "size": size, "bucket": b} for d, size, b in sorted(buckets)]
    return sorted({d for d, _, _ in buckets}), rows


def lock_parameters(sdid: str) -> tuple[int, int]:
    """The PostgreSQL advisory lock (two int4 keys) that serializes a device's rollup writes."""
    return ROLLUP_LOCK, zlib.crc32(sdid.encode()) - 2**31


async def on_entries(rt: Runtime, entries: list[FeedEntry]) -> None:
    """The consumer's handler: each device's message entries, added to its rollups — every device
    of the batch in one transaction (on SQLite each transaction waits for, and makes wait, the
    ingest writer), locks taken in device order; hours without rows are recomputed afterwards."""
    mine: dict[str, list[FeedEntry]] = {}
    for entry in entries:
        if entry.kind == "message" and entry.did and isinstance(entry.payload.get("ts"), int):
            mine.setdefault(entry.did, []).append(entry)
    if not mine:
        return
    gone: list[str] = []
    plans: list[tuple[str, list[str], list[FeedEntry]]] = []
    for sdid in sorted(mine):
        paths = await numeric_paths(rt, sdid)
        if paths is None:
            gone.append(sdid)
        else:
            plans.append((sdid, paths, mine[sdid]))
    r = t.message_rollups
    prepared = await asyncio.to_thread(hour_values, plans)
    async with rt.db.write() as conn:
        if gone:
            await conn.execute(delete(r).where(r.c.sdid.in_(gone)))
        missing = await _apply_batch(conn, plans, prepared) if plans else {}
    paths_of = {sdid: paths for sdid, paths, _ in plans}
    for sdid, hours in sorted(missing.items()):
        await recompute(rt, sdid, hours, paths_of[sdid])


async def register(rt: Runtime) -> None:
    """Add the rollup consumer to this node's feed (the app lifespan starts it)."""

    async def handle(entries: list[FeedEntry]) -> None:
        await on_entries(rt, entries)

    # Nobody waits for rollups (reads scan raw what they do not cover yet): large, rare batches.
    await rt.feed.add(CONSUMER, handle, batch=20_000, coalesce=ROLLUP_COALESCE_SECONDS)
    rebuilding: set[asyncio.Task[None]] = set()

    async def after_import(items: list[Pending]) -> None:
        # Imported history has no feed entry; the commit dropped the rows of its buckets (exact:
        # they are read raw meanwhile). Rebuild them in the background, off the writer's task.
        hours: dict[str, set[int]] = {}
        for item in items:
            if item.history and item.kind == "message":
                ts = int(item.row["ts"])
                hours.setdefault(item.did, set()).add(ts - ts % HOUR_MS)
        for sdid, touched in hours.items():
            task = asyncio.create_task(recompute(rt, sdid, touched))
            rebuilding.add(task)
            task.add_done_callback(rebuilding.discard)

    rt.writer.after_commit.append(after_import)
