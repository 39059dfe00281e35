"""The statements of a group commit, compiled once per database, executed with the raw driver.

The SQL has one definition — the SQLAlchemy Core statements of ``tables.py`` and the status module —
compiled once for the engine's dialect; rows are bound as plain tuples, skipping SQLAlchemy's per-row
parameter processing, which was the largest cost of ingest after HTTP itself.

On SQLite the whole batch is one hand-off to a dedicated thread and ``sqlite3`` connection
(``SqliteBatchWriter``): through the async driver every statement was a round trip between the event
loop and the driver's thread, queued behind the loop's HTTP work — measured here, a 32-message batch
then took ~8 ms of wall time and the writer, busy all the time, capped ingest near 4,000 msg/s. The
process's SQLite write lock is held meanwhile, so no other write of this process interleaves. On
PostgreSQL the same statements go through asyncpg's ``executemany`` inside the writer's transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import bindparam, insert, select
from sqlalchemy.sql.compiler import SQLCompiler

from thingcloud import tables as t
from thingcloud.areas.devices import status
from thingcloud.areas.messages import rollup_maintenance as rollups
from thingcloud.feed import FEED_LOCK

if TYPE_CHECKING:
    from thingcloud.areas.messages.writer import Pending
    from thingcloud.runtime import Runtime

DedupKey = tuple[str, int, str]
Write = tuple[str, list[tuple[Any, ...]]]  # SQL and its rows, for executemany


class CompiledStatement:
    """A Core statement compiled for SQLite once: its SQL and the order of its parameters."""

    def __init__(self, stmt: Any, dialect: Any, json_columns: Sequence[str] = ()) -> None:
        compiled: SQLCompiler = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        self.names = list(compiled.positiontup or [])
        self.json = set(json_columns)

    def rows(self, values: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        names, json = self.names, self.json
        return [tuple(_json(v[n]) if n in json else v[n] for n in names) for v in values]


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class BatchStatements:
    """Everything a group commit writes, compiled for one dialect."""

    def __init__(self, rt: Runtime) -> None:
        dialect = rt.db.engine.dialect
        self.messages = CompiledStatement(insert(t.messages), dialect, ["data"])
        self.actions = CompiledStatement(insert(t.actions), dialect, ["data"])
        self.activity = CompiledStatement(status.activity_upsert(rt.db), dialect)
        self.snapshots = CompiledStatement(status.snapshot_upsert(rt.db), dialect, ["value"])
        self.rollup_drop = CompiledStatement(rollups.drop_statement(), dialect)
        self.postgres = dialect.name == "postgresql"
        columns = ("kind", "ref", "did", "payload", "created_on")  # seq: assigned by the database
        self.feed = CompiledStatement(
            insert(t.feed).values({c: bindparam(c) for c in columns}), dialect, ["payload"]
        )
        d = t.message_dedup
        self.claim_key = CompiledStatement(
            rt.db.upsert(d)
            .on_conflict_do_nothing(index_elements=["sdid", "ts", "digest"])
            .returning(d.c.mid),
            dialect,
        )
        self.existing = CompiledStatement(
            select(d.c.mid).where(
                d.c.sdid == bindparam("sdid"), d.c.ts == bindparam("ts"), d.c.digest == bindparam("digest")
            ),
            dialect,
        )

    def claim(self, key: DedupKey, item: Pending, now: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """Parameters to claim a dedup key, and to look up the mid that already holds it."""
        sdid, ts, digest = key
        row = {"sdid": sdid, "ts": ts, "digest": digest, "mid": item.row["mid"], "created_on": now}
        return self.claim_key.rows([row])[0], self.existing.rows([row])[0]

    def writes(self, batch: list[Pending], now: int) -> tuple[list[Write], Write | None]:
        """What the batch's fresh items write, in order — messages, actions, status, snapshot — and
        the feed append, which must come last (thingcloud/feed.py)."""
        fresh = [i for i in batch if not i.duplicate]
        messages = [i.row for i in fresh if i.kind == "message"]
        actions = [i.row for i in fresh if i.kind == "action"]
        activity, snapshot = plan_status(fresh)
        body = [
            (self.messages.sql, self.messages.rows(messages)),
            (self.actions.sql, self.actions.rows(actions)),
            (self.activity.sql, self.activity.rows(status.activity_rows(now, activity))),
            (self.snapshots.sql, self.snapshots.rows(status.snapshot_rows(snapshot))),
        ]
        imported = [i for i in fresh if i.history and i.kind == "message"]
        if imported:  # no feed entry for the rollup consumer: drop their rollups (rollups.py)
            dids, drops = rollups.drops(imported)
            if self.postgres:  # the rollup lock of each device first, in a fixed order
                locks = [rollups.lock_parameters(d) for d in dids]
                body.append(("SELECT pg_advisory_xact_lock($1, $2)", locks))
            body.append((self.rollup_drop.sql, self.rollup_drop.rows(drops)))
        feed = [
            {"kind": i.kind, "ref": i.row["mid"], "did": i.did, "payload": i.public(), "created_on": now}
            for i in fresh
            if not i.history
        ]
        return [w for w in body if w[1]], (self.feed.sql, self.feed.rows(feed)) if feed else None


def plan_status(
    fresh: list[Pending],
) -> tuple[dict[str, tuple[int | None, int | None]], dict[tuple[str, str], tuple[Any, int]]]:
    """What a batch changes in device status: ``{did: (last_message_ts, last_action_ts)}`` and the
    snapshot leaves ``{(did, path): (value, ts)}``, keeping the newest ``ts`` per field. Imported
    history changes only the snapshot (whose upsert never replaces a newer value)."""
    activity: dict[str, tuple[int | None, int | None]] = {}
    snapshot: dict[tuple[str, str], tuple[Any, int]] = {}
    for item in fresh:
        ts = item.row["ts"]
        if item.kind == "message":
            for path, value in flatten(item.row["data"]):
                key = (item.did, path)
                if key not in snapshot or snapshot[key][1] <= ts:
                    snapshot[key] = (value, ts)
        if item.history:  # imported: the device was not heard from now
            continue
        message_ts, action_ts = activity.get(item.did, (None, None))
        if item.kind == "message":
            message_ts = max(message_ts or 0, ts)
        else:
            action_ts = max(action_ts or 0, ts)
        activity[item.did] = (message_ts, action_ts)
    return activity, snapshot


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


class SqliteBatchWriter(BatchStatements):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.rt = rt
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-ingest")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            path = self.rt.db.engine.url.database or ":memory:"
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.rt.settings.sqlite_synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._conn = conn
        return self._conn

    async def commit(self, keyed: dict[DedupKey, Pending], batch: list[Pending], now: int) -> None:
        """Write ``batch`` in one transaction; items whose dedup key exists become duplicates."""
        loop = asyncio.get_running_loop()
        async with self.rt.db.write_lock():
            await loop.run_in_executor(self._executor, self._commit_sync, keyed, batch, now)

    def _commit_sync(self, keyed: dict[DedupKey, Pending], batch: list[Pending], now: int) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for key, item in keyed.items():
                claim, existing = self.claim(key, item, now)
                if conn.execute(self.claim_key.sql, claim).fetchone() is None:
                    item.duplicate = True
                    item.row["mid"] = conn.execute(self.existing.sql, existing).fetchone()[0]
            body, feed = self.writes(batch, now)
            for sql, rows in [*body, *([feed] if feed else [])]:
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


class PostgresBatchWriter(BatchStatements):
    """The batch through asyncpg, in a transaction of its own on a pooled connection."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.rt = rt

    async def commit(self, keyed: dict[DedupKey, Pending], batch: list[Pending], now: int) -> None:
        async with self.rt.db.engine.connect() as conn:
            pg = (await conn.get_raw_connection()).driver_connection
            assert pg is not None
            async with pg.transaction():
                for key, item in keyed.items():
                    claim, existing = self.claim(key, item, now)
                    if await pg.fetchrow(self.claim_key.sql, *claim) is None:
                        item.duplicate = True
                        item.row["mid"] = await pg.fetchval(self.existing.sql, *existing)
                body, feed = self.writes(batch, now)
                for sql, rows in body:
                    await pg.executemany(sql, rows)
                if feed is not None:
                    # Last, as thingcloud.feed.append does: the advisory lock makes seq order commit order.
                    await pg.execute("SELECT pg_advisory_xact_lock($1)", FEED_LOCK)
                    await pg.executemany(*feed)
