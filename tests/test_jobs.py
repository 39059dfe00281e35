"""Durable jobs: run, retry with backoff, dead letters, idempotent scheduling, recurring jobs, metrics,
a restart, a node killed with SIGKILL mid-job (its lease expires and another node retries it), and
two nodes sharing one queue without ever running a job twice.

Single-node cases use the live server's runner with kinds registered on that runner only; multi-node
cases run ``Runtime`` instances (and a real subprocess) on a database of their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from thingcloud import tables as t
from thingcloud.clock import ManualClock
from thingcloud.jobs import Job, PermanentJobError, enqueue, get_job
from thingcloud.migrate import migrate
from thingcloud.runtime import Runtime

from .conftest import TEST_DATABASE_URL, LiveServer, make_settings, scratch_database_url, start_live
from .factories import unique_email
from .test_feed import eventually


def wait_for(check: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def job_row(live: LiveServer, job_id: str) -> dict[str, Any]:
    async def fetch(rt: Runtime) -> dict[str, Any] | None:
        return await get_job(rt, job_id)

    row = live.call(fetch)
    assert row is not None
    return row


def register(live: LiveServer, kind: str, handler: Any, every: float | None = None) -> None:
    async def add(rt: Runtime) -> None:
        rt.jobs.handle(kind, handler, every)

    live.call(add)


def kind_name(label: str) -> str:
    return f"test.{label}.{unique_email('k').split('@')[0]}"


def submit(live: LiveServer, kind: str, payload: dict[str, Any] | None = None, **kwargs: Any) -> str:
    async def go(rt: Runtime) -> str:
        return await enqueue(rt, kind, payload, **kwargs)

    return live.call(go)


def metric(live: LiveServer, line_start: str) -> float | None:
    for line in httpx.get(f"{live.url}/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return None


def test_a_job_runs_once_and_records_its_result(live: LiveServer) -> None:
    kind = kind_name("echo")
    seen: list[Job] = []

    async def echo(rt: Runtime, job: Job) -> dict[str, Any]:
        seen.append(job)
        return {"echo": job.payload["value"] * 2}

    register(live, kind, echo)
    job_id = submit(live, kind, {"value": 21})
    wait_for(lambda: job_row(live, job_id)["status"] == "succeeded")
    row = job_row(live, job_id)
    assert row["result"] == {"echo": 42}
    assert (row["attempts"], row["last_error"], row["lease_owner"], row["lease_until"]) == (
        1,
        None,
        None,
        None,
    )
    assert len(seen) == 1 and seen[0].attempts == 1 and seen[0].payload == {"value": 21}
    assert metric(live, f'thingcloud_jobs_total{{kind="{kind}",outcome="succeeded"}}') == 1.0


def test_failures_are_retried_with_exponential_backoff(live: LiveServer) -> None:
    kind = kind_name("flaky")
    attempts: list[int] = []

    async def flaky(rt: Runtime, job: Job) -> None:
        attempts.append(job.attempts)
        if job.attempts < 3:
            raise RuntimeError(f"try {job.attempts}")

    register(live, kind, flaky)
    job_id = submit(live, kind, max_attempts=5)
    base = live.settings.job_retry_base_seconds * 1000

    for attempt in (1, 2):
        wait_for(lambda: len(attempts) == attempt and job_row(live, job_id)["status"] == "failed")  # noqa: B023
        row = job_row(live, job_id)
        assert row["last_error"] == f"RuntimeError: try {attempt}"
        delay = row["run_at"] - row["updated_on"]
        assert 0.5 * base * 2 ** (attempt - 1) <= delay <= 1.5 * base * 2 ** (attempt - 1)
        time.sleep(0.5)
        assert attempts == list(range(1, attempt + 1))  # not before its time
        live.clock.advance(delay / 1000 + 1)

    wait_for(lambda: job_row(live, job_id)["status"] == "succeeded")
    assert attempts == [1, 2, 3]
    assert metric(live, f'thingcloud_jobs_total{{kind="{kind}",outcome="retried"}}') == 2.0


def test_a_job_dies_after_max_attempts_or_a_permanent_error(live: LiveServer) -> None:
    kind = kind_name("doomed")
    calls: list[str] = []

    async def doomed(rt: Runtime, job: Job) -> None:
        calls.append(job.id)
        if job.payload.get("permanent"):
            raise PermanentJobError("bad payload")
        raise RuntimeError(f"boom {job.attempts}")

    register(live, kind, doomed)
    retried = submit(live, kind, max_attempts=2)
    wait_for(lambda: job_row(live, retried)["status"] == "failed")
    live.clock.advance(3600)
    wait_for(lambda: job_row(live, retried)["status"] == "dead")
    row = job_row(live, retried)
    assert (row["attempts"], row["last_error"]) == (2, "RuntimeError: boom 2")

    permanent = submit(live, kind, {"permanent": True})
    wait_for(lambda: job_row(live, permanent)["status"] == "dead")
    row = job_row(live, permanent)
    assert (row["attempts"], row["last_error"]) == (1, "PermanentJobError: bad payload")
    live.clock.advance(3600)
    time.sleep(0.5)
    assert calls.count(retried) == 2 and calls.count(permanent) == 1
    assert metric(live, f'thingcloud_jobs_total{{kind="{kind}",outcome="dead"}}') == 2.0


def test_unique_key_makes_scheduling_idempotent(live: LiveServer) -> None:
    kind = kind_name("once")
    runs: list[str] = []

    async def once(rt: Runtime, job: Job) -> None:
        runs.append(job.id)

    key = f"export:{kind}"

    async def schedule_many(rt: Runtime) -> list[str]:
        async def one() -> str:
            return await enqueue(rt, kind, {"n": 1}, unique_key=key, run_at=rt.clock.now_ms() + 60_000)

        ids = list(await asyncio.gather(*(one() for _ in range(10))))
        async with rt.db.write() as conn:  # inside a caller's transaction too
            ids.append(await enqueue(rt, kind, {"n": 2}, unique_key=key, conn=conn))
        return ids

    ids = live.call(schedule_many)
    assert len(set(ids)) == 1

    async def count(rt: Runtime) -> int:
        async with rt.db.read() as conn:
            return int(await conn.scalar(select(func.count()).where(t.jobs.c.kind == kind)) or 0)

    assert live.call(count) == 1
    register(live, kind, once)
    live.clock.advance(61)
    wait_for(lambda: job_row(live, ids[0])["status"] == "succeeded")
    assert runs == [ids[0]]
    assert job_row(live, ids[0])["payload"] == {"n": 1}
    assert submit(live, kind, unique_key=key) == ids[0]  # still the same job once done


def test_a_recurring_job_runs_again_every_interval(live: LiveServer) -> None:
    kind = kind_name("tick")
    ticks: list[int] = []

    async def tick(rt: Runtime, job: Job) -> dict[str, Any]:
        ticks.append(rt.clock.now_ms())
        return {"tick": len(ticks)}

    async def add(rt: Runtime) -> None:
        rt.jobs.handle(kind, tick, every=600)
        await rt.jobs.schedule_recurring()

    live.call(add)
    wait_for(lambda: len(ticks) == 1)

    async def row(rt: Runtime) -> Any:
        async with rt.db.read() as conn:
            return (
                await conn.execute(select(t.jobs).where(t.jobs.c.unique_key == f"recurring:{kind}"))
            ).one()

    wait_for(lambda: live.call(row).status == "queued")
    first = live.call(row)
    assert first.run_at - ticks[0] in range(600_000, 601_000)
    assert first.result == {"tick": 1}
    time.sleep(0.3)
    assert len(ticks) == 1
    live.clock.advance(601)
    wait_for(lambda: len(ticks) == 2)
    wait_for(lambda: live.call(row).result == {"tick": 2})


def test_queue_depth_is_in_metrics(live: LiveServer) -> None:
    kind = kind_name("later")
    submit(live, kind, run_at=live.clock.now_ms() + 86_400_000)
    submit(live, kind, run_at=live.clock.now_ms() + 86_400_000)
    line = f'thingcloud_jobs_queue_depth{{kind="{kind}",status="queued"}}'
    wait_for(lambda: metric(live, line) == 2.0, seconds=12)


def test_jobs_survive_a_restart(tmp_path: Path) -> None:
    """A job scheduled for later and a job interrupted by shutdown both run on the next start."""
    url = scratch_database_url() if TEST_DATABASE_URL else ""
    first, thread = start_live(tmp_path, database_url=url, job_poll_interval=0.05)
    started: list[str] = []

    async def hang(rt: Runtime, job: Job) -> None:
        started.append(job.id)
        await asyncio.sleep(3600)

    register(first, "test.restart.hang", hang)
    later = submit(first, "test.restart.later", {"x": 1}, run_at=first.clock.now_ms() + 60_000)
    interrupted = submit(first, "test.restart.hang")
    wait_for(lambda: started == [interrupted])
    thread.stop()  # graceful: the interrupted job is handed back, its attempt not counted

    second, thread = start_live(tmp_path, database_url=url, job_poll_interval=0.05)
    try:
        assert job_row(second, interrupted)["status"] == "queued"
        assert job_row(second, interrupted)["attempts"] == 0
        done: list[tuple[str, int]] = []

        async def record(rt: Runtime, job: Job) -> None:
            done.append((job.id, job.attempts))

        register(second, "test.restart.later", record)
        register(second, "test.restart.hang", record)
        wait_for(lambda: done == [(interrupted, 1)])
        second.clock.advance(61)
        wait_for(lambda: len(done) == 2)
        assert done[1] == (later, 1)
        assert job_row(second, later)["status"] == "succeeded"
    finally:
        thread.stop()


CRASHING_NODE = """
import asyncio, sys
from thingcloud.migrate import migrate
from thingcloud.runtime import Runtime
from thingcloud.settings import Settings

async def main():
    rt = Runtime.build(Settings(database_url=sys.argv[1], data_dir=sys.argv[2], secret_key="x" * 40,
                                job_poll_interval=0.05, job_lease_seconds=30))
    await migrate(rt.db)
    async def hang(rt, job):
        await asyncio.sleep(3600)
    rt.jobs.handle("test.crash", hang)
    await rt.jobs.start()
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def nodes_database(tmp_path: Path) -> str:
    if TEST_DATABASE_URL:
        return scratch_database_url()
    return f"sqlite+aiosqlite:///{(tmp_path / 'nodes.db').as_posix()}"


async def node(tmp_path: Path, url: str, **overrides: Any) -> Runtime:
    settings = make_settings(tmp_path, database_url=url, job_poll_interval=0.05, **overrides)
    rt = Runtime.build(settings, clock=ManualClock())
    await migrate(rt.db)
    await rt.start()
    return rt


def test_a_killed_nodes_job_is_retried_elsewhere_after_its_lease_expires(tmp_path: Path) -> None:
    url = nodes_database(tmp_path)

    async def prepare() -> str:
        rt = await node(tmp_path, url)
        try:
            return await enqueue(rt, "test.crash", {"n": 1})
        finally:
            await rt.close()

    job_id = asyncio.run(prepare())
    crashing = subprocess.Popen([sys.executable, "-c", CRASHING_NODE, url, str(tmp_path)])

    async def lease_owner() -> Any:
        rt = Runtime.build(make_settings(tmp_path, database_url=url))
        try:
            return await get_job(rt, job_id)
        finally:
            await rt.close()

    try:
        wait_for(lambda: asyncio.run(lease_owner())["status"] == "running", seconds=30)
    finally:
        os.kill(crashing.pid, signal.SIGKILL)
        crashing.wait()
    owner = asyncio.run(lease_owner())["lease_owner"]
    assert owner.split(":")[1] == str(crashing.pid)

    async def take_over() -> None:
        rt = await node(tmp_path, url, job_lease_seconds=30)
        seen: list[int] = []

        async def finish(rt: Runtime, job: Job) -> dict[str, Any]:
            seen.append(job.attempts)
            return {"done": True}

        rt.jobs.handle("test.crash", finish)
        await rt.jobs.start()
        try:
            await asyncio.sleep(0.5)
            assert seen == []  # the dead node's lease still holds
            rt.clock.advance(31)
            await eventually(lambda: bool(seen))
            assert seen == [2]
            await asyncio.sleep(0.2)
            row = await get_job(rt, job_id)
            assert row is not None
            assert (row["status"], row["attempts"], row["result"]) == ("succeeded", 2, {"done": True})
        finally:
            await rt.close()

    asyncio.run(take_over())


@pytest.mark.skipif(not TEST_DATABASE_URL, reason="several nodes share a queue on PostgreSQL only")
def test_two_nodes_share_the_queue_and_never_run_a_job_twice(tmp_path: Path) -> None:
    url = nodes_database(tmp_path)

    async def scenario() -> None:
        a = await node(tmp_path, url, job_concurrency=4)
        b = await node(tmp_path, url, job_concurrency=4)
        active: set[str] = set()
        runs: list[tuple[str, str]] = []
        overlaps: list[str] = []

        def worker(name: str) -> Any:
            async def work(rt: Runtime, job: Job) -> None:
                if job.id in active:
                    overlaps.append(job.id)
                active.add(job.id)
                await asyncio.sleep(0.01)
                active.discard(job.id)
                runs.append((job.id, name))

            return work

        a.jobs.handle("test.shared", worker("a"))
        b.jobs.handle("test.shared", worker("b"))
        ids = [await enqueue(a, "test.shared", {"n": n}) for n in range(120)]
        await asyncio.gather(a.jobs.start(), b.jobs.start())
        try:
            await eventually(lambda: len(runs) >= 120, seconds=30)
            await asyncio.sleep(0.3)
        finally:
            await a.close()
            await b.close()
        assert overlaps == []
        assert sorted(job_id for job_id, _ in runs) == sorted(ids)  # each exactly once
        by_node = {name: sum(1 for _, n in runs if n == name) for name in ("a", "b")}
        assert by_node["a"] > 0 and by_node["b"] > 0

    asyncio.run(scenario())


def test_a_kind_with_slots_of_its_own_runs_while_the_shared_slots_are_busy(live: LiveServer) -> None:
    """Webhook deliveries have their own slots: jobs holding every shared slot do not stall them,
    and they never take more than their own number of slots at once."""
    blocker, own = kind_name("blocker"), kind_name("own")
    release = asyncio.Event()
    running: list[int] = []
    peak: list[int] = [0]

    async def block(rt: Runtime, job: Job) -> None:
        await release.wait()

    async def quick(rt: Runtime, job: Job) -> None:
        running.append(1)
        peak[0] = max(peak[0], len(running))
        await asyncio.sleep(0.05)
        running.pop()

    async def add(rt: Runtime) -> None:
        rt.jobs.handle(blocker, block)
        rt.jobs.handle(own, quick, slots=lambda settings: 2)

    live.call(add)
    blockers = [submit(live, blocker) for _ in range(live.settings.job_concurrency)]
    wait_for(lambda: all(job_row(live, b)["status"] == "running" for b in blockers))
    quick_ids = [submit(live, own) for _ in range(6)]
    wait_for(lambda: all(job_row(live, q)["status"] == "succeeded" for q in quick_ids))
    assert peak[0] <= 2
    assert all(job_row(live, b)["status"] == "running" for b in blockers)

    async def unblock(rt: Runtime) -> None:
        release.set()

    live.call(unblock)
    wait_for(lambda: all(job_row(live, b)["status"] == "succeeded" for b in blockers))
