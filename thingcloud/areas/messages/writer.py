"""The group-commit writer: every concurrently ingested message shares one transaction.

Senders hand a ``Pending`` item to ``submit`` and wait; one writer task per process takes everything
queued, writes it in a single transaction (dedup keys, message and action rows, feed entries, device
status and snapshots) and only then resolves each sender's future with its ``mid``. So a 200 (or a
PUBACK, or a WebSocket ack) always means committed, and durability costs one fsync per batch instead
of one per message. If the transaction fails, every sender in the batch gets the error and nothing of
the batch is stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import tables as t
from thingcloud.errors import Unavailable
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

MAX_BATCH = 2000

BatchHook = Callable[[AsyncConnection, list["Pending"]], Awaitable[None]]


@dataclass(eq=False)
class Pending:
    """One message or action waiting for its commit."""

    kind: str  # "message" | "action"
    row: dict[str, Any]  # the columns of messages/actions
    did: str  # the device whose status/snapshot changes (sdid for messages, ddid for actions)
    dedup_digest: str | None = None
    future: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    duplicate: bool = False


class GroupCommitWriter:
    def __init__(self, rt: Runtime, max_batch: int = MAX_BATCH) -> None:
        self.rt = rt
        self.max_batch = max_batch
        self.hooks: list[BatchHook] = []  # run inside the batch transaction, after the rows
        self.after_commit: list[Callable[[list[Pending]], Awaitable[None]]] = []
        self._queue: asyncio.Queue[Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._partitions: set[tuple[str, int]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit-writer")

    async def stop(self) -> None:
        """Commit everything already queued, then stop (graceful shutdown loses nothing)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._queue.put_nowait(None)
        await task

    async def submit(self, item: Pending) -> str:
        if self._task is None:
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
        try:
            await self._commit(batch)
        except Exception as exc:
            log.warning("group commit of %d items failed: %s", len(batch), type(exc).__name__)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item in batch:
            if not item.future.done():
                item.future.set_result(item.row["mid"])
        for callback in self.after_commit:
            try:
                await callback([i for i in batch if not i.duplicate])
            except Exception:
                log.exception("after-commit callback failed")

    async def _commit(self, batch: list[Pending]) -> None:
        db = self.rt.db
        if not db.is_sqlite:
            await self._ensure_partitions(batch)
        async with db.write() as conn:
            await self._deduplicate(conn, batch)
            fresh = [i for i in batch if not i.duplicate]
            messages = [i.row for i in fresh if i.kind == "message"]
            actions = [i.row for i in fresh if i.kind == "action"]
            for hook in self.hooks:
                await hook(conn, fresh)
            if messages:
                await conn.execute(insert(t.messages), messages)
            if actions:
                await conn.execute(insert(t.actions), actions)
            await self._update_status(conn, fresh)

    async def _deduplicate(self, conn: AsyncConnection, batch: list[Pending]) -> None:
        keyed: dict[tuple[str, int, str], Pending] = {}
        for item in batch:
            if item.dedup_digest is None:
                continue
            key = (item.did, item.row["ts"], item.dedup_digest)
            original = keyed.get(key)
            if original is not None:  # the same message twice in one batch
                item.duplicate = True
                item.row["mid"] = original.row["mid"]
                continue
            keyed[key] = item
        if not keyed:
            return
        now = self.rt.clock.now_ms()
        rows = [
            {"sdid": k[0], "ts": k[1], "digest": k[2], "mid": item.row["mid"], "created_on": now}
            for k, item in keyed.items()
        ]
        # One multi-row INSERT … ON CONFLICT DO NOTHING RETURNING: the rows it returns are new, the
        # others already existed within the window.
        stmt = (
            self.rt.db.upsert(t.message_dedup)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["sdid", "ts", "digest"])
            .returning(t.message_dedup.c.sdid, t.message_dedup.c.ts, t.message_dedup.c.digest)
        )
        inserted = {(r[0], r[1], r[2]) for r in (await conn.execute(stmt)).all()}
        conflicts = [k for k in keyed if k not in inserted]
        if not conflicts:
            return
        found = await conn.execute(
            select(
                t.message_dedup.c.sdid, t.message_dedup.c.ts, t.message_dedup.c.digest, t.message_dedup.c.mid
            ).where(
                tuple_(t.message_dedup.c.sdid, t.message_dedup.c.ts, t.message_dedup.c.digest).in_(conflicts)
            )
        )
        for sdid, ts, digest, mid in found:
            item = keyed[(sdid, ts, digest)]
            item.duplicate = True
            item.row["mid"] = mid

    async def _update_status(self, conn: AsyncConnection, fresh: list[Pending]) -> None:
        """Last message/action time, availability, and the snapshot (newest ``ts`` wins per field)."""
        if not fresh:
            return
        now = self.rt.clock.now_ms()
        status: dict[str, dict[str, Any]] = {}
        snapshot: dict[tuple[str, str], tuple[int, Any]] = {}
        for item in fresh:
            ts = item.row["ts"]
            entry = status.setdefault(
                item.did,
                {
                    "did": item.did,
                    "availability": "online",
                    "connected": False,
                    "last_message_ts": None,
                    "last_action_ts": None,
                    "last_time_online": now,
                    "last_seen_on": now,
                    "modified_on": now,
                },
            )
            column = "last_message_ts" if item.kind == "message" else "last_action_ts"
            entry[column] = max(entry[column] or 0, ts)
            if item.kind == "message":
                for path, value in flatten(item.row["data"]):
                    key = (item.did, path)
                    if key not in snapshot or snapshot[key][0] <= ts:
                        snapshot[key] = (ts, value)
        status_table = t.device_status
        stmt = self.rt.db.upsert(status_table)
        excluded = stmt.excluded
        greatest = _greatest(self.rt.db.is_sqlite)
        stmt = stmt.on_conflict_do_update(
            index_elements=["did"],
            set_={
                "availability": "online",
                "last_message_ts": greatest(status_table.c.last_message_ts, excluded.last_message_ts),
                "last_action_ts": greatest(status_table.c.last_action_ts, excluded.last_action_ts),
                "last_time_online": excluded.last_time_online,
                "last_seen_on": excluded.last_seen_on,
                "modified_on": excluded.modified_on,
            },
        )
        await conn.execute(stmt, list(status.values()))
        if snapshot:
            snap = self.rt.db.upsert(t.device_snapshots)
            snap = snap.on_conflict_do_update(
                index_elements=["did", "path"],
                set_={"value": snap.excluded.value, "ts": snap.excluded.ts},
                where=snap.excluded.ts >= t.device_snapshots.c.ts,
            )
            rows = [{"did": d, "path": p, "ts": ts, "value": v} for (d, p), (ts, v) in snapshot.items()]
            await conn.execute(snap, rows)

    async def _ensure_partitions(self, batch: list[Pending]) -> None:
        """Monthly partitions on PostgreSQL, created before the batch transaction when first needed."""
        needed = {("messages" if i.kind == "message" else "actions", month_start(i.row["ts"])) for i in batch}
        missing = needed - self._partitions
        for table, start in sorted(missing):
            await create_partition(self.rt, table, start)
            self._partitions.add((table, start))


def _greatest(is_sqlite: bool) -> Callable[[Any, Any], Any]:
    from sqlalchemy import func

    # SQLite's two-argument max() is NULL if either is NULL; coalesce keeps the known value.
    if is_sqlite:
        return lambda a, b: func.max(func.coalesce(a, b), func.coalesce(b, a))
    return lambda a, b: func.greatest(a, b)


def flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Leaf values of a normalized message as (dotted path, value); lists are leaves."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flatten(value, path + "."))
        else:
            out.append((path, value))
    return out


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
