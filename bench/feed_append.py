"""What the feed's commit ordering costs on PostgreSQL: append throughput with and without the lock.

``thingcloud.feed.append`` takes ``pg_advisory_xact_lock`` before inserting so that seq order is
commit order (see the module docstring). This measures appending transactions per second (each one
a multi-row INSERT of ``--rows`` entries, as a group commit would do) from ``--writers`` concurrent
connections, once through ``append`` (locked) and once with the same INSERT and no lock, and once
with the lock while each transaction also waits ``--work-ms`` after appending (the worst case: a
caller that does not append last).

    .venv/bin/python bench/feed_append.py --database-url postgresql+asyncpg://postgres@127.0.0.1/tc_f2

The database is used as is (migrated first); the feed table is truncated between runs.

Measured on the 2-core dev machine (PostgreSQL 15 local, fsync and synchronous_commit on; the machine
was shared, load average 7-11, so read ratios rather than absolute figures), 5 s per run:
    writers  rows/txn  ordered txn/s (entries/s)  unordered txn/s (entries/s)  ratio
    1        1           137 (   137)               126 (   126)              1.09
    1        100         120 (12 000)               122 (12 200)              0.99
    2        1           340 (   340)               610 (   610)              0.56
    2        100         235 (23 500)               300 (30 000)              0.79
    2        1000         41 (41 000)                46 (46 000)              0.89
    8        1           180-650                    490-1190                  0.37-0.54
    8        100          99-238 (9 900-23 800)     240-363 (24 000-36 300)   0.41-0.66
    8        1000         28-39 (27 800-38 600)      50-62 (49 800-62 300)    0.56-0.62
With one appending transaction at a time (one group-commit writer per node, one node) the lock costs
nothing measurable. With many concurrent appenders it costs up to 2-2.7x in transactions/s: the
commits can no longer share one WAL flush. Group commit absorbs it, since a slower commit makes the
next batch bigger, and large batches lose least (0.56-0.89 at 1000 rows).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from sqlalchemy import insert, text

from thingcloud import tables as t
from thingcloud.feed import FeedEntry, append
from thingcloud.migrate import migrate
from thingcloud.runtime import Runtime
from thingcloud.settings import Settings


async def run(rt: Runtime, writers: int, rows: int, seconds: float, ordered: bool, work_ms: float) -> float:
    entries = [
        FeedEntry("message", {"temp": 21.5, "n": i}, ref=f"{i:032x}", did="d" * 32) for i in range(rows)
    ]
    plain = [
        {"kind": e.kind, "ref": e.ref, "did": e.did, "payload": e.payload, "created_on": 0} for e in entries
    ]
    deadline = time.perf_counter() + seconds
    done = 0

    async def writer() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with rt.db.engine.begin() as conn:
                if ordered:
                    await append(rt, conn, entries)
                else:
                    await conn.execute(insert(t.feed), plain)
                if work_ms:
                    await asyncio.sleep(work_ms / 1000)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return done / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--work-ms", type=float, default=2.0)
    args = parser.parse_args()
    settings = Settings(database_url=args.database_url, data_dir=Path("/tmp"), secret_key="bench" * 10)
    rt = Runtime.build(settings)
    await migrate(rt.db)
    print(f"{args.writers} writers, {args.seconds:.0f} s per run; transactions/s (entries/s)")
    print(f"{'rows/txn':>8}  {'ordered':>18}  {'unordered':>18}  {'ratio':>5}  {'ordered+work':>18}")
    for rows in args.rows:
        results = []
        for ordered, work in ((True, 0.0), (False, 0.0), (True, args.work_ms)):
            async with rt.db.engine.begin() as conn:
                await conn.execute(text("TRUNCATE feed"))
            results.append(await run(rt, args.writers, rows, args.seconds, ordered, work))
        cells = [f"{r:8.0f} ({r * rows:7.0f})" for r in results]
        print(f"{rows:>8}  {cells[0]:>18}  {cells[1]:>18}  {results[0] / results[1]:5.2f}  {cells[2]:>18}")
    await rt.db.close()


if __name__ == "__main__":
    asyncio.run(main())
