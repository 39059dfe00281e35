"""The durable feed: commit-ordered delivery under concurrent writers with delayed commits, catch-up
after a stop, at-least-once retry of a failing handler, one node per consumer with lease takeover,
polling when a notification is lost, and trimming by the real job runner of a live server.

Multi-node cases run two ``Runtime`` instances (two nodes) on one database of their own: a SQLite
file, or a scratch PostgreSQL database when ``THINGCLOUD_TEST_DATABASE_URL`` is set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from thingcloud import feed
from thingcloud import tables as t
from thingcloud.clock import ManualClock
from thingcloud.feed import FeedConsumer, FeedEntry
from thingcloud.migrate import migrate
from thingcloud.runtime import Runtime

from .conftest import TEST_DATABASE_URL, make_settings, scratch_database_url, start_live

FAST = {"feed_poll_interval": 0.05, "feed_lease_seconds": 30}


def own_database(tmp_path: Path) -> str:
    if TEST_DATABASE_URL:
        return scratch_database_url()
    return f"sqlite+aiosqlite:///{(tmp_path / 'nodes.db').as_posix()}"


async def node(tmp_path: Path, url: str, **overrides: Any) -> Runtime:
    """One ThingCloud node (a Runtime with its own engine, bus and clock) on the shared database."""
    settings = make_settings(tmp_path, database_url=url, **{**FAST, **overrides})
    rt = Runtime.build(settings, clock=ManualClock())
    await migrate(rt.db)
    await rt.start()
    return rt


async def eventually(check: Callable[[], Awaitable[bool] | bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def checkpoint_of(rt: Runtime, name: str) -> int | None:
    async with rt.db.read() as conn:
        value = await conn.scalar(
            select(t.feed_checkpoints.c.seq).where(t.feed_checkpoints.c.consumer == name)
        )
    return None if value is None else int(value)


async def written_checkpoint(rt: Runtime, name: str, expected: int) -> int | None:
    """The stored checkpoint once it reaches ``expected`` (consumers write it when they catch up,
    shortly after handling), or what it is after a few seconds."""
    for _ in range(100):
        value = await checkpoint_of(rt, name)
        if value == expected:
            break
        await asyncio.sleep(0.05)
    return value


class Recorder:
    """A consumer handler that keeps every entry it was handed, in order."""

    def __init__(self) -> None:
        self.entries: list[FeedEntry] = []

    async def __call__(self, entries: list[FeedEntry]) -> None:
        self.entries.extend(entries)

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.entries]


def test_concurrent_appenders_are_delivered_in_commit_order_without_gaps(tmp_path: Path) -> None:
    """Writers append in overlapping transactions and commit in the reverse order they appended
    (the earliest holds its transaction open longest). On PostgreSQL, without the feed's ordering,
    a later seq commits first, the consumer passes it, and the earlier seq is skipped for good."""

    url = own_database(tmp_path)

    async def scenario() -> None:
        rt = await node(tmp_path, url)
        recorder = Recorder()
        await rt.feed.add("order", recorder, batch=50)
        await rt.feed.start()
        committed: list[str] = []

        async def writer(txn: str, hold: float) -> None:
            async with rt.db.write() as conn:
                await feed.append(rt, conn, [FeedEntry("test", {"txn": txn, "i": i}) for i in range(3)])
                await asyncio.sleep(hold)  # a slow group commit: others append meanwhile
            committed.append(txn)
            await feed.announce(rt)

        try:
            for round_ in range(4):
                tasks = []
                for w in range(5):
                    tasks.append(asyncio.create_task(writer(f"{round_}-{w}", 0.25 - 0.05 * w)))
                    await asyncio.sleep(0.01)  # start in order w = 0, 1, 2...
                await asyncio.gather(*tasks)
            await eventually(lambda: len(recorder.entries) >= 60)
            await asyncio.sleep(0.3)  # nothing more, nothing twice
        finally:
            await rt.close()

        seqs = recorder.seqs
        assert len(seqs) == 60
        assert seqs == sorted(set(seqs))
        delivered_txns = [e.payload["txn"] for e in recorder.entries]
        # Each transaction's entries arrive together and in its own order...
        for k in range(0, 60, 3):
            assert delivered_txns[k] == delivered_txns[k + 1] == delivered_txns[k + 2]
            assert [e.payload["i"] for e in recorder.entries[k : k + 3]] == [0, 1, 2]
        # ...and transactions arrive exactly in the order they committed.
        assert delivered_txns[::3] == committed

    asyncio.run(scenario())


def test_stopped_consumer_catches_up_without_gaps_or_duplicates(tmp_path: Path) -> None:
    url = own_database(tmp_path)

    async def scenario() -> None:
        first = Recorder()
        rt = await node(tmp_path, url)
        await rt.feed.add("catchup", first, batch=7)
        await rt.feed.start()
        await feed.record(rt, [FeedEntry("test", {"n": n}) for n in range(20)])
        await eventually(lambda: len(first.entries) == 20)
        await rt.close()  # the node stops; the checkpoint stays

        writer = await node(tmp_path, url)  # entries keep coming while the consumer is down
        for n in range(20, 45):
            await feed.record(writer, [FeedEntry("test", {"n": n})])

        second = Recorder()
        await writer.feed.add("catchup", second, batch=7)
        await writer.feed.start()
        try:
            await eventually(lambda: len(second.entries) == 25)
            await asyncio.sleep(0.3)
            assert [e.payload["n"] for e in first.entries] == list(range(20))
            assert [e.payload["n"] for e in second.entries] == list(range(20, 45))
            assert first.seqs[-1] < second.seqs[0]
            assert await written_checkpoint(writer, "catchup", second.seqs[-1]) == second.seqs[-1]
        finally:
            await writer.close()

    asyncio.run(scenario())


def test_failing_handler_keeps_the_checkpoint_and_is_retried(tmp_path: Path) -> None:
    url = own_database(tmp_path)

    async def scenario() -> None:
        rt = await node(tmp_path, url)
        calls: list[list[int]] = []
        handled: list[int] = []

        async def flaky(entries: list[FeedEntry]) -> None:
            calls.append([e.seq for e in entries])
            if len(calls) <= 2:
                raise RuntimeError("downstream unavailable")
            handled.extend(e.seq for e in entries)

        consumer = await rt.feed.add("flaky", flaky)
        try:
            await feed.record(rt, [FeedEntry("test", {"n": n}) for n in range(5)])
            await rt.feed.start()
            await eventually(lambda: len(calls) >= 1)
            assert await checkpoint_of(rt, "flaky") == 0  # not advanced past a failed batch
            await eventually(lambda: len(handled) == 5)
            assert calls[0] == calls[1] == calls[2] == handled  # the same batch, retried whole
            assert await written_checkpoint(rt, "flaky", handled[-1]) == handled[-1]
            assert consumer.checkpoint == handled[-1]
        finally:
            await rt.close()

    asyncio.run(scenario())


def test_lost_notification_only_delays(tmp_path: Path) -> None:
    """An append whose commit was never announced (the process died, the bus was down) is still
    delivered, by the consumer's poll."""

    url = own_database(tmp_path)

    async def scenario() -> None:
        rt = await node(tmp_path, url, feed_poll_interval=0.5)
        recorder = Recorder()
        await rt.feed.add("unannounced", recorder)
        await rt.feed.start()
        try:
            async with rt.db.write() as conn:
                await feed.append(
                    rt, conn, [FeedEntry("device.deleted", {"why": "test"}, ref="d1", did="d1")]
                )
            await eventually(lambda: len(recorder.entries) == 1, seconds=5)
            entry = recorder.entries[0]
            assert (entry.kind, entry.ref, entry.did, entry.payload) == (
                "device.deleted",
                "d1",
                "d1",
                {"why": "test"},
            )
            assert abs(entry.created_on - rt.clock.now_ms()) < 5000
        finally:
            await rt.close()

    asyncio.run(scenario())


def test_one_node_runs_a_consumer_and_another_takes_over_after_lease_expiry(tmp_path: Path) -> None:
    url = own_database(tmp_path)

    async def scenario() -> None:
        a = await node(tmp_path, url)
        b = await node(tmp_path, url)
        got: dict[str, list[int]] = {"a": [], "b": []}
        release_a = asyncio.Event()

        def handler(name: str) -> Callable[[list[FeedEntry]], Awaitable[None]]:
            async def handle(entries: list[FeedEntry]) -> None:
                if name == "a" and any(e.payload.get("stick") for e in entries):
                    await release_a.wait()  # node A hangs in the middle of a batch
                got[name].extend(e.seq for e in entries)

            return handle

        consumer_a = await a.feed.add("shared", handler("a"))
        await a.feed.start()
        await eventually(lambda: consumer_a.active)
        consumer_b = await b.feed.add("shared", handler("b"))
        await b.feed.start()
        try:
            await feed.record(a, [FeedEntry("test", {"n": n}) for n in range(10)])
            await eventually(lambda: len(got["a"]) == 10)
            await asyncio.sleep(0.3)
            assert got["b"] == [] and not consumer_b.active  # B stands by

            await feed.record(a, [FeedEntry("test", {"stick": True})])
            await asyncio.sleep(0.3)
            assert got["b"] == []  # A holds the lease while stuck; nothing moves
            b.clock.advance(31)  # ...until the lease has expired, seen from B
            await eventually(lambda: len(got["b"]) == 1)
            assert consumer_b.active
            stuck_seq = got["b"][0]
            assert await written_checkpoint(b, "shared", stuck_seq) == stuck_seq

            release_a.set()  # A wakes up: its checkpoint write is refused, it steps down
            await eventually(lambda: not consumer_a.active)
            assert got["a"][-1] == stuck_seq  # at least once: A had done the work too
            assert await written_checkpoint(a, "shared", stuck_seq) == stuck_seq

            await feed.record(a, [FeedEntry("test", {"n": n}) for n in range(10, 15)])
            await eventually(lambda: len(got["b"]) == 6)
            await asyncio.sleep(0.3)
            assert len(got["a"]) == 11

            await b.feed.stop()  # a clean stop hands the lease back: A resumes without waiting
            await feed.record(a, [FeedEntry("test", {"n": 99})])
            await eventually(lambda: len(got["a"]) == 12)
            assert got["a"][-1] > got["b"][-1]
            assert sorted(set(got["a"]) | set(got["b"])) == list(range(got["a"][0], got["a"][-1] + 1))
        finally:
            release_a.set()
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_new_consumer_can_start_at_the_end(tmp_path: Path) -> None:
    url = own_database(tmp_path)

    async def scenario() -> None:
        rt = await node(tmp_path, url)
        try:
            await feed.record(rt, [FeedEntry("test", {"old": True})] * 3)
            recorder = Recorder()
            consumer = FeedConsumer(rt, "late", recorder, start_at="latest")
            await consumer.start()
            await eventually(lambda: consumer.active)
            await feed.record(rt, [FeedEntry("test", {"old": False})])
            await eventually(lambda: len(recorder.entries) == 1)
            assert recorder.entries[0].payload == {"old": False}
            await consumer.stop()
        finally:
            await rt.close()

    asyncio.run(scenario())


def test_trim_job_keeps_what_a_consumer_still_needs(tmp_path: Path) -> None:
    """The recurring ``feed.trim`` job of a live server deletes old entries up to the slowest
    checkpoint; on SQLite a trimmed seq is never handed out again."""
    url = scratch_database_url() if TEST_DATABASE_URL else ""
    live, thread = start_live(tmp_path, database_url=url, job_poll_interval=0.05, feed_retention=3600)

    async def count_and_range(rt: Runtime) -> tuple[int, int | None, int | None]:
        f = t.feed
        async with rt.db.read() as conn:
            row = (await conn.execute(select(func.count(), func.min(f.c.seq), func.max(f.c.seq)))).one()
        return int(row[0]), row[1], row[2]

    async def trim_runs(rt: Runtime) -> int:
        async with rt.db.read() as conn:
            value = await conn.scalar(select(t.jobs.c.updated_on).where(t.jobs.c.kind == "feed.trim"))
        return int(value or 0)

    try:
        slow = Recorder()

        async def first_batch_only(entries: list[FeedEntry]) -> None:
            if slow.entries:
                raise RuntimeError("stuck")  # stays at its checkpoint, after the first ten
            await slow(entries)

        async def setup(rt: Runtime) -> None:
            await feed.record(rt, [FeedEntry("test", {"n": n}) for n in range(30)])
            consumer = await rt.feed.add("slow", first_batch_only, batch=10)
            # Longer than a lease: once in CI this consumer was still standing by after 15 s.
            await eventually(lambda: consumer.checkpoint == slow.seqs[-1] if slow.entries else False, 45.0)
            await rt.feed.remove("slow")

        live.call(setup, timeout=60)
        checkpoint = slow.seqs[-1]
        assert live.call(count_and_range)[0] == 30

        async def others_behind(rt: Runtime) -> bool:
            cp = t.feed_checkpoints
            async with rt.db.read() as conn:
                seqs = (await conn.execute(select(cp.c.seq).where(cp.c.consumer != "slow"))).scalars()
                return any(seq < 30 for seq in seqs)

        # The app's own consumers (rollups, rules, subscriptions) write their checkpoints once they
        # catch up; only "slow" may hold the trim back.
        deadline = time.monotonic() + 15
        while live.call(others_behind) and time.monotonic() < deadline:
            time.sleep(0.05)
        before = live.call(trim_runs)
        live.clock.advance(2 * 3600)  # entries are now older than retention; the job is due
        deadline = time.monotonic() + 15
        while live.call(trim_runs) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        # Claimed is not done: other recurring jobs fell due with the same clock jump.
        while live.call(count_and_range)[0] == 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        count, lowest, highest = live.call(count_and_range)
        assert (count, lowest) == (20, checkpoint + 1)

        text = httpx.get(f"{live.url}/metrics").text
        assert 'thingcloud_jobs_total{kind="feed.trim",outcome="succeeded"}' in text

        async def drain(rt: Runtime) -> None:
            async with rt.db.write() as conn:
                await conn.execute(t.feed_checkpoints.delete().where(t.feed_checkpoints.c.consumer == "slow"))
            result = await feed.trim(rt)
            assert result == {"deleted": 20, "through": highest, "held_by": None}
            await feed.record(rt, [FeedEntry("test", {"after": True})])

        live.call(drain)
        assert live.call(count_and_range)[1:] == (highest + 1, highest + 1)  # type: ignore[operator]
    finally:
        thread.stop()
