"""The group-commit writer: every concurrently ingested message shares one transaction.

Senders hand a ``Pending`` item to ``submit`` and wait; one writer task per process takes everything
queued and writes it in a single transaction — dedup keys, message and action rows, device status
and snapshots, and last the feed entries that durable consumers read — and only then resolves each
sender's future with its ``mid``. So a 200 (or a PUBACK, or a WebSocket ack) always means committed,
and durability costs one fsync per batch instead of one per message. If the transaction fails, every
sender in the batch gets the error and nothing of the batch is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import select

from thingcloud import feed
from thingcloud import tables as t
from thingcloud.areas.messages.batchsql import DedupKey, PostgresBatchWriter, SqliteBatchWriter
from thingcloud.bus import BUS_RESYNC, Bus
from thingcloud.errors import NotFound, Unavailable
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

MAX_BATCH = 2000
PARTITIONS_DROPPED = "messages.partitions.dropped"
MESSAGE_KEYS = ("mid", "sdid", "sdtid", "uid", "ts", "cts", "mv", "data")
ACTION_KEYS = ("mid", "ddid", "ddtid", "sdid", "uid", "ts", "cts", "mv", "data")


@dataclass(eq=False)
class Pending:
    """One message or action waiting for its commit."""

    kind: str  # "message" | "action"
    row: dict[str, Any]  # the columns of messages/actions
    did: str  # the device whose status/snapshot changes (sdid for messages, ddid for actions)
    dedup_digest: str | None = None
    future: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    duplicate: bool = False
    history: bool = False
    """An imported historical message (``POST /messages/import``): stored, deduplicated and folded into
    the snapshot (never over a newer value) like any other, but it gets no feed entry — so no rules,
    notifications or /live frames — and does not count as the device being heard from now."""

    def public(self) -> dict[str, Any]:
        """The normalized message or action as clients see it (REFERENCE.md §3.7)."""
        keys = MESSAGE_KEYS if self.kind == "message" else ACTION_KEYS
        return {k: self.row[k] for k in keys}


class IngestMetrics:
    """The ingest part of ``/metrics``: what was stored, and how well group commit groups."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stored = Counter(
            "thingcloud_ingest_stored_total", "Messages and actions stored", ["kind"], registry=registry
        )
        self.duplicates = Counter(
            "thingcloud_ingest_duplicates_total",
            "Re-sent messages answered with their original mid",
            registry=registry,
        )
        self.batch_size = Histogram(
            "thingcloud_ingest_batch_size",
            "Items per group-commit transaction",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "thingcloud_ingest_commit_seconds",
            "Duration of one group-commit transaction",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=registry,
        )
        self.failed = Counter(
            "thingcloud_ingest_failed_batches_total", "Group commits that failed", registry=registry
        )

    def observe(self, batch: list[Pending], seconds: float) -> None:
        self.batch_size.observe(len(batch))
        self.commit_seconds.observe(seconds)
        fresh = [i for i in batch if not i.duplicate]
        messages = sum(1 for i in fresh if i.kind == "message")
        if messages:
            self.stored.labels("message").inc(messages)
        if len(fresh) > messages:
            self.stored.labels("action").inc(len(fresh) - messages)
        if len(batch) > len(fresh):
            self.duplicates.inc(len(batch) - len(fresh))


class GroupCommitWriter:
    def __init__(self, rt: Runtime, max_batch: int = MAX_BATCH) -> None:
        self.rt = rt
        self.max_batch = max_batch
        self.after_commit: list[Callable[[list[Pending]], Awaitable[None]]] = []
        self._queue: asyncio.Queue[Pending | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._partitions: set[tuple[str, int]] = set()
        self.metrics: IngestMetrics | None = None
        self.store = SqliteBatchWriter(rt) if rt.db.is_sqlite else PostgresBatchWriter(rt)

    async def start(self) -> None:
        # SQLite has one writer. PostgreSQL commits are bound by round trips and the WAL flush, not
        # by CPU, so several batches commit at once; their row locks are taken in a fixed order
        # (sorted rows), so two batches never deadlock.
        writers = 1 if self.rt.db.is_sqlite else max(1, self.rt.settings.ingest_writers)
        self._tasks = [
            asyncio.create_task(self._run(), name=f"group-commit-writer-{n}") for n in range(writers)
        ]

    async def stop(self) -> None:
        """Commit everything already queued, then stop (graceful shutdown loses nothing)."""
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        for _ in tasks:
            self._queue.put_nowait(None)  # behind everything already queued
        await asyncio.gather(*tasks)
        if isinstance(self.store, SqliteBatchWriter):
            await self.store.close()

    async def submit(self, item: Pending) -> str:
        if not self._tasks:
            raise Unavailable("The server is shutting down")
        self._queue.put_nowait(item)
        return await item.future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            await self._commit_and_answer(batch)

    async def _commit_and_answer(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        try:
            await self._commit(batch)
        except Exception as exc:
            if gone := await self._devices_gone(batch):
                await self._without_devices(batch, gone)
                return
            log.warning("group commit of %d items failed: %s", len(batch), type(exc).__name__)
            if self.metrics is not None:
                self.metrics.failed.inc()
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        if self.metrics is not None:
            self.metrics.observe(batch, time.perf_counter() - started)
        for item in batch:
            if not item.future.done():
                item.future.set_result(item.row["mid"])
        for callback in self.after_commit:
            try:
                await callback([i for i in batch if not i.duplicate])
            except Exception:
                log.exception("after-commit callback failed")

    async def _devices_gone(self, batch: list[Pending]) -> set[str]:
        """After a failed commit: the batch's devices that no longer exist."""
        dids = {i.did for i in batch}
        try:
            async with self.rt.db.read() as conn:
                found = await conn.execute(select(t.devices.c.id).where(t.devices.c.id.in_(dids)))
                return dids - set(found.scalars())
        except Exception:
            return set()

    async def _without_devices(self, batch: list[Pending], gone: set[str]) -> None:
        """A device was deleted after ingest looked it up (on another node whose cache still had it,
        or while its messages were queued here), and the foreign keys of its status refused the
        batch: its items answer 404 and the rest is committed again without them. The check costs
        nothing on the hot path, and no message is ever stored after its device's deletion."""
        rest = []
        for item in batch:
            if item.did in gone:
                item.future.set_exception(NotFound(f"Device {item.did} not found"))
            else:
                item.duplicate = False  # found again by the next attempt
                rest.append(item)
        if rest:
            await self._commit_and_answer(rest)

    async def _commit(self, batch: list[Pending]) -> None:
        keyed, repeats = _dedup_keys(batch)
        if not self.rt.db.is_sqlite:
            await self._ensure_partitions(batch)
        await self.store.commit(keyed, batch, self.rt.clock.now_ms())
        # Only now is the first one's mid final: it may be the mid of an earlier commit.
        for item, original in repeats:
            item.row["mid"] = original.row["mid"]
        if any(not i.duplicate for i in batch):
            await feed.announce(self.rt)

    async def attach(self, bus: Bus) -> None:
        await bus.subscribe(PARTITIONS_DROPPED, self._forget_partitions)
        await bus.subscribe(BUS_RESYNC, self._forget_partitions)  # a drop may have been missed

    async def _forget_partitions(self, _subject: str, _payload: dict[str, Any]) -> None:
        """Partitions were dropped (by the purge, on any node): check again before the next insert."""
        self._partitions.clear()

    async def _ensure_partitions(self, batch: list[Pending]) -> None:
        """Monthly partitions on PostgreSQL, created before the batch transaction when first needed."""
        needed = {("messages" if i.kind == "message" else "actions", month_start(i.row["ts"])) for i in batch}
        missing = needed - self._partitions
        for table, start in sorted(missing):
            await create_partition(self.rt, table, start)
            self._partitions.add((table, start))


def _dedup_keys(batch: list[Pending]) -> tuple[dict[DedupKey, Pending], list[tuple[Pending, Pending]]]:
    """The batch's dedup keys, first occurrence each, and the repeats of a key within the batch
    (already duplicates: they take the first one's mid once it is final)."""
    keyed: dict[DedupKey, Pending] = {}
    repeats: list[tuple[Pending, Pending]] = []
    for item in batch:
        if item.dedup_digest is None:
            continue
        key = (item.did, item.row["ts"], item.dedup_digest)
        original = keyed.get(key)
        if original is not None:
            item.duplicate = True
            repeats.append((item, original))
            continue
        keyed[key] = item
    return keyed, repeats


def month_start(ts_ms: int) -> int:
    import datetime as dt

    day = dt.datetime.fromtimestamp(max(ts_ms, 0) / 1000, tz=dt.UTC)
    return int(dt.datetime(day.year, day.month, 1, tzinfo=dt.UTC).timestamp() * 1000)


def next_month(start_ms: int) -> int:
    import datetime as dt

    day = dt.datetime.fromtimestamp(start_ms / 1000, tz=dt.UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp() * 1000)


async def create_partition(rt: Runtime, table: str, start: int) -> None:
    import datetime as dt

    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    day = dt.datetime.fromtimestamp(start / 1000, tz=dt.UTC)
    name = f"{table}_y{day.year:04d}m{day.month:02d}"
    ddl = (
        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
        f"FOR VALUES FROM ({start}) TO ({next_month(start)})"
    )
    try:
        async with rt.db.engine.begin() as conn:
            await conn.execute(text(ddl))
    except DBAPIError:
        # Another node created it at the same moment; anything else shows up on the insert.
        log.info("partition %s: concurrent creation", name)
