"""The durable feed: a commit-ordered log of what happened, for consumers that must not miss anything.

Writers ``append`` entries inside their own transaction (a transactional outbox), so an entry exists
exactly when the change it describes was committed, and ``announce`` after the commit wakes the
consumers through the bus (``feed.appended``). A ``FeedConsumer`` keeps a checkpoint in
``feed_checkpoints``: on start it catches up from there, then follows new entries, woken by the
notification or, if one is lost or the bus is down, by polling every ``feed_poll_interval``. The
bus is only a doorbell; the database is the truth, so an outage delays consumers and never loses an
entry.

Delivery is **at least once**: the handler gets a batch, and the checkpoint advances only after it
returns. A crash (or a lost lease) between the two hands the same batch to the next run, so handlers
must be idempotent (key their effects on ``entry.seq`` or on the entry's ``ref``). The checkpoint is
written at most every ``feed_checkpoint_interval`` while entries flow (and at once when the consumer
catches up or stops): each write is a transaction, and on SQLite one the ingest writer waits for, so
one per batch cost ingest a fifth of its throughput per consumer. A crash therefore replays up to
that interval of entries. After a partial batch a consumer pauses ``feed_coalesce_seconds``, so under
load it reads a few large batches instead of one per group commit.

Commit order on PostgreSQL. A sequence value is taken when the row is inserted, not when it commits:
with two concurrent writers, seq 11 can commit while seq 10 is still in flight, and a reader that
saw 11 and moved its checkpoint past it would skip 10 forever. ``append`` therefore takes a
transaction-scoped advisory lock (``pg_advisory_xact_lock``) just before inserting, held until the
commit. Seqs are then handed out one transaction at a time, and because PostgreSQL marks a
transaction visible before it releases its locks, a snapshot that sees seq N sees every seq below
N that will ever exist: gaps a reader sees are rollbacks, final. The cost is one lock per appending
transaction (one per group commit, not per message), and appending transactions serialize between
their append and their commit (an fsync). Measured (bench/feed_append.py): no cost with one appending
transaction at a time (one group-commit writer on one node); with 2-8 concurrent appenders 0.4-0.9x
the transactions/s, since commits no longer share a WAL flush, the loss shrinking as batches grow.
The alternative, recording ``pg_current_xact_id()`` per row and only reading rows older than
``pg_snapshot_xmin``, costs no lock but delivers in transaction-start order rather than commit order,
needs a two-column checkpoint, and stalls every consumer behind any long-running transaction in the
database; the lock is simpler and its cost is bounded by the commit rate, which group commit keeps
low. So: ``append`` must be the last statement before the commit (anything after it lengthens the
serialized section, and taking row locks after it can deadlock with another appender).

On SQLite there is one writer at a time, so seq order is commit order already; the table uses
AUTOINCREMENT so a seq is never reused after the newest rows were trimmed.

Several nodes: each consumer name runs on one node at a time. Its checkpoint row carries a lease
(``owner``, ``lease_until``, by ``rt.clock``), renewed while the consumer works; another node's
instance of the same consumer stands by and takes over once the lease has expired. The lease is
renewed between batches, not during one: a handler stuck longer than ``feed_lease_seconds`` loses
the consumer to another node (liveness first), and its checkpoint write is then refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import tables as t
from thingcloud.bus import Subscription
from thingcloud.feed_tail import FeedTail

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

FEED_APPENDED = "feed.appended"
FEED_LOCK = 0x66656564  # "feed": the PostgreSQL advisory lock that makes seq order commit order
TRIM_CHUNK = 10_000

FeedHandler = Callable[[list["FeedEntry"]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One event. ``kind`` says what happened ("message", "action", "device.deleted"), ``ref`` names
    the thing (a mid, a device id), ``did`` the device concerned; ``seq``/``created_on`` are set by
    the feed."""

    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    ref: str | None = None
    did: str | None = None
    seq: int = 0
    created_on: int = 0


async def append(rt: Runtime, conn: AsyncConnection, entries: Sequence[FeedEntry]) -> None:
    """Add entries in the caller's transaction, in one statement; call it last, then ``announce``
    after the commit."""
    if not entries:
        return
    now = rt.clock.now_ms()
    rows = [
        {"kind": e.kind, "ref": e.ref, "did": e.did, "payload": e.payload, "created_on": now} for e in entries
    ]
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FEED_LOCK})
    await conn.execute(insert(t.feed), rows)


async def announce(rt: Runtime) -> None:
    """Ring the consumers' doorbell after a commit that appended; a lost ring only delays them."""
    try:
        await rt.bus.publish(FEED_APPENDED, {})
    except Exception as exc:  # the bus is down: consumers poll
        log.warning("feed notification not published: %s", type(exc).__name__)


async def record(rt: Runtime, entries: Sequence[FeedEntry]) -> None:
    """Append in a transaction of its own and announce: for events that are not part of a larger write."""
    async with rt.db.write() as conn:
        await append(rt, conn, entries)
    await announce(rt)


async def read_after(rt: Runtime, seq: int, limit: int) -> list[FeedEntry]:
    f = t.feed
    async with rt.db.read() as conn:
        rows = (await conn.execute(select(f).where(f.c.seq > seq).order_by(f.c.seq).limit(limit))).all()
    return [
        FeedEntry(kind=r.kind, payload=r.payload, ref=r.ref, did=r.did, seq=r.seq, created_on=r.created_on)
        for r in rows
    ]


async def bounds(rt: Runtime) -> tuple[int, int]:
    """(lowest, highest) seq still in the feed; (0, 0) when it is empty."""
    f = t.feed
    async with rt.db.read() as conn:
        row = (await conn.execute(select(func.min(f.c.seq), func.max(f.c.seq)))).one()
    return int(row[0] or 0), int(row[1] or 0)


async def trim(rt: Runtime) -> dict[str, Any]:
    """Delete entries older than ``feed_retention`` that every consumer has passed, in short chunks
    so a big backlog never holds the (SQLite) writer for long."""
    f, cp = t.feed, t.feed_checkpoints
    cutoff = rt.clock.now_ms() - rt.settings.feed_retention * 1000
    async with rt.db.read() as conn:
        slowest = (await conn.execute(select(cp.c.consumer, cp.c.seq).order_by(cp.c.seq).limit(1))).first()
        first_young = await conn.scalar(
            select(f.c.seq).where(f.c.created_on >= cutoff).order_by(f.c.seq).limit(1)
        )
        lowest = await conn.scalar(select(func.min(f.c.seq)))
        highest = await conn.scalar(select(func.max(f.c.seq)))
    if lowest is None or highest is None:
        return {"deleted": 0, "through": None, "held_by": None}
    # created_on is taken at append time, just before the seq, so it follows seq order: everything
    # before the first young entry is old (a node's clock skew only keeps an entry a trim longer).
    bound = highest if first_young is None else first_young - 1
    held_by = None
    if slowest is not None and slowest.seq < bound:
        bound, held_by = slowest.seq, slowest.consumer
    deleted = 0
    low = lowest - 1
    while low < bound:
        high = min(low + TRIM_CHUNK, bound)
        async with rt.db.write() as conn:
            result = await conn.execute(delete(f).where(f.c.seq > low, f.c.seq <= high))
        deleted += max(result.rowcount or 0, 0)
        low = high
    return {"deleted": deleted, "through": bound if bound >= lowest else None, "held_by": held_by}


class FeedMetrics:
    """The feed's part of ``/metrics``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.entries = Counter(
            "thingcloud_feed_entries_processed_total",
            "Feed entries handled (checkpoint advanced) by consumer",
            ["consumer"],
            registry=registry,
        )
        self.failures = Counter(
            "thingcloud_feed_handler_failures_total",
            "Feed batches whose handler failed (retried from the checkpoint)",
            ["consumer"],
            registry=registry,
        )
        self.checkpoint = Gauge(
            "thingcloud_feed_checkpoint", "Last seq handled, by consumer", ["consumer"], registry=registry
        )
        self.leader = Gauge(
            "thingcloud_feed_consumer_active",
            "1 when this node holds the consumer's lease",
            ["consumer"],
            registry=registry,
        )


class FeedConsumer:
    """Runs ``handler`` over every entry after the checkpoint, in seq order, on one node at a time.

    ``start_at`` only matters the first time a name is seen: "earliest" replays every retained
    entry, "latest" begins at the current end of the feed.
    """

    def __init__(
        self,
        rt: Runtime,
        name: str,
        handler: FeedHandler,
        batch: int = 500,
        start_at: Literal["earliest", "latest"] = "earliest",
        metrics: FeedMetrics | None = None,
        coalesce: float | None = None,
        tail: FeedTail | None = None,
    ) -> None:
        self.rt, self.name, self.handler, self.batch = rt, name, handler, batch
        # The node's shared read of the feed (``Feed.tail``); a consumer on its own reads directly.
        self.tail = tail or FeedTail(lambda seq, limit: read_after(rt, seq, limit), 0)
        self.start_at = start_at
        # Pause after a partial batch; None: ``feed_coalesce_seconds``. Consumers that nobody waits
        # for (rollups) take longer pauses and so far fewer, larger batches.
        self.coalesce = rt.settings.feed_coalesce_seconds if coalesce is None else coalesce
        self.metrics = metrics
        self.checkpoint: int | None = None  # known while this node holds the lease
        self.active = False
        self._lease_until = 0
        self._written = 0  # the checkpoint as last written to the database
        self._written_at = 0.0  # monotonic time of that write
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None

    @property
    def _lease_ms(self) -> int:
        return self.rt.settings.feed_lease_seconds * 1000

    async def start(self) -> None:
        if self._task is not None:
            return
        self._subscription = await self.rt.bus.subscribe(FEED_APPENDED, self._on_appended)
        self._task = asyncio.create_task(self._run(), name=f"feed-consumer:{self.name}")

    async def stop(self) -> None:
        """Stop and hand the lease back so another node takes over without waiting for it to expire."""
        task, self._task = self._task, None
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self.active:
            self._set_active(False)
            cp = t.feed_checkpoints
            values: dict[str, Any] = {"owner": None, "lease_until": 0}
            if self.checkpoint is not None and self.checkpoint > self._written:
                values["seq"] = self.checkpoint  # what was handled since the last write
            try:
                async with self.rt.db.write() as conn:
                    await conn.execute(
                        update(cp)
                        .where(cp.c.consumer == self.name, cp.c.owner == self.rt.node_id)
                        .values(values)
                    )
            except Exception as exc:  # the lease then simply expires
                log.warning("feed consumer %s: lease not released: %s", self.name, type(exc).__name__)

    async def _on_appended(self, _subject: str, _payload: dict[str, Any]) -> None:
        self._wake.set()

    async def _run(self) -> None:
        poll = self.rt.settings.feed_poll_interval
        failures = 0
        while True:
            try:
                if not await self._hold_lease():
                    await asyncio.sleep(poll)  # stand by; notifications are for the lease holder
                    continue
                assert self.checkpoint is not None
                self._wake.clear()  # a notification from here on means "read again"
                entries = await self.tail.after(self.checkpoint, self.batch)
                if not entries:
                    if self.checkpoint > self._written:  # caught up: the checkpoint is written at rest
                        await self._write_checkpoint(self.checkpoint)
                    await self._wait(poll)
                    continue
                await self.handler(entries)
                await self._advance(entries[-1].seq, len(entries))
                failures = 0
                if len(entries) < self.batch:
                    # Let a few commits gather: under load one read per commit would cost more than
                    # the handling itself. At rest the next notification finds this sleep over.
                    await asyncio.sleep(self.coalesce)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                if self.metrics is not None:
                    self.metrics.failures.labels(self.name).inc()
                log.exception("feed consumer %s failed (attempt %d); retrying", self.name, failures)
                await asyncio.sleep(min(poll * 2 ** min(failures, 6), 30.0))

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _hold_lease(self) -> bool:
        """Take or renew the lease when a third of it has run out; True while this node holds it."""
        now = self.rt.clock.now_ms()
        if self.active and now < self._lease_until - 2 * self._lease_ms // 3:
            return True
        cp = t.feed_checkpoints
        me = self.rt.node_id
        values: dict[str, Any] = {"owner": me, "lease_until": now + self._lease_ms, "updated_on": now}
        if self.active and self.checkpoint is not None and self.checkpoint > self._written:
            values["seq"] = self.checkpoint  # renewing: what was handled since the last write
        claim = (
            update(cp)
            .where(
                cp.c.consumer == self.name,
                (cp.c.owner.is_(None)) | (cp.c.owner == me) | (cp.c.lease_until < now),
            )
            .values(values)
            .returning(cp.c.seq)
        )
        async with self.rt.db.write() as conn:
            seq = (await conn.execute(claim)).scalar()
            if seq is None:
                exists = await conn.scalar(select(cp.c.seq).where(cp.c.consumer == self.name))
                if exists is None:
                    start = 0
                    if self.start_at == "latest":
                        start = await conn.scalar(select(func.coalesce(func.max(t.feed.c.seq), 0))) or 0
                    await conn.execute(
                        self.rt.db.upsert(cp)
                        .values(consumer=self.name, seq=start, owner=None, lease_until=0, updated_on=now)
                        .on_conflict_do_nothing(index_elements=["consumer"])
                    )
                    seq = (await conn.execute(claim)).scalar()
        if seq is None:
            if self.active:
                log.warning("feed consumer %s: lease taken over by another node", self.name)
            self._set_active(False)
            return False
        if not self.active:
            log.info("feed consumer %s: active on this node from seq %d", self.name, seq)
        self.checkpoint = self._written = int(seq)
        self._written_at = asyncio.get_running_loop().time()
        self._lease_until = now + self._lease_ms
        self._set_active(True)
        return True

    async def _advance(self, seq: int, count: int) -> None:
        """Move the checkpoint past a handled batch. Written to the database at most every
        ``feed_checkpoint_interval`` (each write is a transaction, on SQLite one the ingest writer
        waits for); in between it only moves in memory, and a crash replays from the last write."""
        if self.metrics is not None:
            self.metrics.entries.labels(self.name).inc(count)
        loop_now = asyncio.get_running_loop().time()
        if loop_now - self._written_at < self.rt.settings.feed_checkpoint_interval:
            self.checkpoint = seq
            return
        await self._write_checkpoint(seq)
        self._written_at = loop_now

    async def _write_checkpoint(self, seq: int) -> None:
        cp = t.feed_checkpoints
        now = self.rt.clock.now_ms()
        async with self.rt.db.write() as conn:
            result = await conn.execute(
                update(cp)
                .where(cp.c.consumer == self.name, cp.c.owner == self.rt.node_id)
                .values(seq=seq, lease_until=now + self._lease_ms, updated_on=now)
            )
        if result.rowcount != 1:
            # Another node took the lease while this batch ran; it will (re)handle from its checkpoint.
            log.warning("feed consumer %s: lease lost, checkpoint %d not written", self.name, seq)
            self._set_active(False)
            return
        self.checkpoint = self._written = seq
        self._lease_until = now + self._lease_ms
        if self.metrics is not None:
            self.metrics.checkpoint.labels(self.name).set(seq)

    def _set_active(self, active: bool) -> None:
        self.active = active
        if self.metrics is not None:
            self.metrics.leader.labels(self.name).set(1 if active else 0)


class Feed:
    """The consumers of this node (``rt.feed``): areas ``add`` theirs; the app lifespan starts them."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.consumers: dict[str, FeedConsumer] = {}
        self.tail = FeedTail(lambda seq, limit: read_after(rt, seq, limit), rt.settings.feed_tail_entries)
        self.metrics: FeedMetrics | None = None
        self.running = False

    async def add(
        self,
        name: str,
        handler: FeedHandler,
        batch: int = 500,
        start_at: Literal["earliest", "latest"] = "earliest",
        coalesce: float | None = None,
    ) -> FeedConsumer:
        if name in self.consumers:
            raise ValueError(f"feed consumer {name!r} is already registered")
        consumer = FeedConsumer(self.rt, name, handler, batch, start_at, self.metrics, coalesce, self.tail)
        self.consumers[name] = consumer
        if self.running:
            await consumer.start()
        return consumer

    async def remove(self, name: str) -> None:
        consumer = self.consumers.pop(name, None)
        if consumer is not None:
            await consumer.stop()

    async def start(self, metrics: FeedMetrics | None = None) -> None:
        self.metrics = metrics
        self.running = True
        for consumer in self.consumers.values():
            consumer.metrics = metrics
            await consumer.start()

    async def stop(self) -> None:
        self.running = False
        for consumer in self.consumers.values():
            await consumer.stop()
