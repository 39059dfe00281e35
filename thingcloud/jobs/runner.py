"""``JobRunner``: claims due jobs, runs them under a lease, records outcomes; one per node.

Claiming is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``: on PostgreSQL
several nodes poll the same table and each row goes to exactly one of them, without waiting on each
other's locks. SQLite ignores ``FOR UPDATE`` and has one process, hence one runner. A claimed job
carries ``lease_owner``/``lease_until``; a heartbeat renews the leases of running jobs every third
of ``job_lease_seconds``. When a node dies its leases run out, and any runner turns those jobs back
into ``failed`` (retried at once) or ``dead`` (no attempts left). A runner whose heartbeat finds a
lease gone (it stalled past expiry) cancels that job, and its outcome write is refused.

Times (``run_at``, leases) come from ``rt.clock`` so tests can move time; the loop itself waits in
real time: woken by an enqueue on this node (``jobs.enqueued``), by a finished job, or every
``job_poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import and_, case, func, literal, select, update
from sqlalchemy.engine import Row

from thingcloud import tables as t
from thingcloud.bus import Subscription
from thingcloud.jobs import (
    JOBS_ENQUEUED,
    RECURRING_PREFIX,
    Job,
    JobHandler,
    JobRegistry,
    PermanentJobError,
    registry,
)

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime
    from thingcloud.settings import Settings

log = logging.getLogger(__name__)

# The modules that register built-in job kinds; later areas add theirs here.
JOB_MODULES = (
    "thingcloud.jobs.maintenance",
    "thingcloud.areas.messages.retention",
    "thingcloud.areas.exports.jobs",
    "thingcloud.areas.subscriptions.delivery",
    "thingcloud.areas.rules.timers",
    "thingcloud.areas.devicemgmt.task_lifecycle",
)
BACKOFF_CAP_SECONDS = 3600.0
GAUGE_REFRESH_SECONDS = 5.0
SHUTDOWN_GRACE_SECONDS = 5.0
CLAIMABLE = ("queued", "failed")


def load_job_modules() -> JobRegistry:
    for module in JOB_MODULES:
        importlib.import_module(module)
    return registry


def backoff_seconds(base: float, attempts: int) -> float:
    """Delay before the retry that follows attempt ``attempts``: base·2^(n-1), ±50 % jitter, capped
    (jitter spreads the retries of jobs that failed together, e.g. a webhook endpoint down)."""
    return min(base * 2 ** (attempts - 1), BACKOFF_CAP_SECONDS) * random.uniform(0.5, 1.5)


class JobMetrics:
    """The jobs' part of ``/metrics``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "thingcloud_jobs_total",
            "Job attempts by kind and outcome (succeeded, retried, dead, lost, released)",
            ["kind", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "thingcloud_job_duration_seconds",
            "Time spent in job handlers by kind",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
            registry=registry,
        )
        self.depth = Gauge(
            "thingcloud_jobs_queue_depth",
            "Jobs by kind and status (queued, failed, running, dead), cluster-wide",
            ["kind", "status"],
            registry=registry,
        )


class JobRunner:
    """Runs this node's share of the jobs (``rt.jobs``); the app lifespan starts and stops it."""

    def __init__(self, rt: Runtime, kinds: JobRegistry | None = None) -> None:
        self.rt = rt
        self.registry = (kinds or load_job_modules()).copy()
        self.metrics: JobMetrics | None = None
        self.running: dict[str, asyncio.Task[None]] = {}
        self._running_kind: dict[str, str] = {}  # job id -> kind, for the slots of each pool
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: Subscription | None = None
        self._gauged: set[tuple[str, str]] = set()
        self._gauged_at = 0.0

    def handle(
        self,
        kind: str,
        handler: JobHandler,
        every: float | None = None,
        slots: Callable[[Settings], int] | None = None,
    ) -> None:
        """Run ``kind`` on this node (in addition to the built-in kinds)."""
        self.registry.register(kind, handler, every, slots)

    @property
    def _lease_ms(self) -> int:
        return self.rt.settings.job_lease_seconds * 1000

    async def start(self, metrics: JobMetrics | None = None) -> None:
        if self._tasks:
            return
        self.metrics = metrics
        self._subscription = await self.rt.bus.subscribe(JOBS_ENQUEUED, self._on_enqueued)
        self._tasks = [
            asyncio.create_task(self._loop(), name="job-runner"),
            asyncio.create_task(self._heartbeat_loop(), name="job-heartbeat"),
        ]

    async def stop(self) -> None:
        """Stop claiming, let running jobs finish for a few seconds, then hand the rest back."""
        tasks, self._tasks = self._tasks, []
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.running:
            await asyncio.wait(list(self.running.values()), timeout=SHUTDOWN_GRACE_SECONDS)
        for task in list(self.running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _on_enqueued(self, _subject: str, _payload: dict[str, Any]) -> None:
        self._wake.set()

    async def schedule_recurring(self) -> None:
        """Make sure each recurring kind has its row (one per cluster, by unique key), reviving one
        left dead or finished by an older version."""
        from thingcloud.jobs import enqueue

        j = t.jobs
        for kind in self.registry.kinds.values():
            if kind.every is None:
                continue
            key = RECURRING_PREFIX + kind.kind
            await enqueue(self.rt, kind.kind, {}, unique_key=key)
            async with self.rt.db.write() as conn:
                await conn.execute(
                    update(j)
                    .where(j.c.unique_key == key, j.c.status.in_(("dead", "succeeded")))
                    .values(status="queued", attempts=0, run_at=self.rt.clock.now_ms())
                )

    async def _loop(self) -> None:
        poll = self.rt.settings.job_poll_interval
        scheduled = False
        while True:
            self._wake.clear()
            try:
                if not scheduled:  # here rather than in start(): the schema may not be there yet
                    await self.schedule_recurring()
                    scheduled = True
                await self._reap_expired()
                full = False
                for kinds, slots in self._pools():
                    busy = sum(1 for k in self._running_kind.values() if k in kinds)
                    free = slots - busy
                    claimed = await self._claim(free, kinds) if free > 0 else []
                    for job in claimed:
                        self._running_kind[job.id] = job.kind
                        self.running[job.id] = asyncio.create_task(self._execute(job), name=f"job:{job.kind}")
                    full = full or bool(claimed and len(claimed) == free)
                await self._refresh_gauges()
                if full:
                    continue  # a full claim: more may be due as soon as a slot frees
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job runner cycle failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)

    def _pools(self) -> list[tuple[list[str], int]]:
        """(kinds, slots): the kinds sharing ``job_concurrency``, then each kind with slots of its own."""
        shared = [k.kind for k in self.registry.kinds.values() if k.slots is None]
        own = [([k.kind], k.slots(self.rt.settings)) for k in self.registry.kinds.values() if k.slots]
        return [(shared, self.rt.settings.job_concurrency), *own]

    async def _claim(self, limit: int, kinds: list[str]) -> list[Job]:
        j = t.jobs
        now = self.rt.clock.now_ms()
        due = (
            select(j.c.id)
            .where(j.c.status.in_(CLAIMABLE), j.c.run_at <= now, j.c.kind.in_(kinds))
            .order_by(j.c.run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(j)
            .where(j.c.id.in_(due.scalar_subquery()))
            .values(
                status="running",
                attempts=j.c.attempts + 1,
                lease_owner=self.rt.node_id,
                lease_until=now + self._lease_ms,
                heartbeat_at=now,
                updated_on=now,
            )
            .returning(
                j.c.id, j.c.kind, j.c.payload, j.c.attempts, j.c.max_attempts, j.c.run_at, j.c.unique_key
            )
        )
        async with self.rt.db.write() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            Job(r.id, r.kind, r.payload or {}, r.attempts, r.max_attempts, r.run_at, r.unique_key)
            for r in sorted(rows, key=lambda r: r.run_at)
        ]

    async def _reap_expired(self) -> None:
        """Jobs whose runner stopped heartbeating: retry them now, or bury them if out of attempts."""
        j = t.jobs
        now = self.rt.clock.now_ms()
        stmt = (
            update(j)
            .where(j.c.status == "running", j.c.lease_until < now)
            .values(
                status=case((j.c.attempts >= j.c.max_attempts, "dead"), else_="failed"),
                last_error=literal("lease expired: runner ") + func.coalesce(j.c.lease_owner, "?") + " lost",
                lease_owner=None,
                lease_until=None,
                run_at=now,
                updated_on=now,
            )
            .returning(j.c.id, j.c.kind, j.c.status, j.c.unique_key)
        )
        async with self.rt.db.write() as conn:
            rows = (await conn.execute(stmt)).all()
        for row in rows:
            log.warning("job %s (%s) lost its runner's lease: %s", row.id, row.kind, row.status)
            self._count(row.kind, "lost")
            if row.status == "dead":
                await self._reschedule_if_recurring(row)

    async def _reschedule_if_recurring(self, row: Row[Any]) -> None:
        kind = self.registry.kinds.get(row.kind)
        if kind is None or kind.every is None or row.unique_key != RECURRING_PREFIX + row.kind:
            return
        j = t.jobs
        async with self.rt.db.write() as conn:
            await conn.execute(
                update(j)
                .where(j.c.id == row.id, j.c.status == "dead")
                .values(status="queued", attempts=0, run_at=self.rt.clock.now_ms() + int(kind.every * 1000))
            )

    async def _execute(self, job: Job) -> None:
        kind = self.registry.kinds[job.kind]
        started = time.perf_counter()
        try:
            result = await kind.handler(self.rt, job)
        except asyncio.CancelledError:
            await self._release(job)
            raise
        except Exception as exc:
            await self._failed(job, exc, permanent=isinstance(exc, PermanentJobError))
        else:
            await self._succeeded(job, result)
        finally:
            if self.metrics is not None:
                self.metrics.duration.labels(job.kind).observe(time.perf_counter() - started)
            self.running.pop(job.id, None)
            self._running_kind.pop(job.id, None)
            self._wake.set()

    def _mine(self, job: Job) -> Any:
        j = t.jobs
        return and_(j.c.id == job.id, j.c.status == "running", j.c.lease_owner == self.rt.node_id)

    async def _succeeded(self, job: Job, result: dict[str, Any] | None) -> None:
        now = self.rt.clock.now_ms()
        every = self.registry.kinds[job.kind].every
        values: dict[str, Any] = {"status": "succeeded", "result": result, "last_error": None}
        if every is not None and job.unique_key == RECURRING_PREFIX + job.kind:
            values.update(status="queued", attempts=0, run_at=now + int(every * 1000))
        await self._finish(job, "succeeded", values, now)

    async def _failed(self, job: Job, exc: Exception, permanent: bool) -> None:
        now = self.rt.clock.now_ms()
        error = f"{type(exc).__name__}: {exc}"[:2000]
        log.warning("job %s (%s) attempt %d failed: %s", job.id, job.kind, job.attempts, error)
        values: dict[str, Any] = {"last_error": error}
        every = self.registry.kinds[job.kind].every
        if not permanent and job.attempts < job.max_attempts:
            delay = backoff_seconds(self.rt.settings.job_retry_base_seconds, job.attempts)
            values.update(status="failed", run_at=now + int(delay * 1000))
            await self._finish(job, "retried", values, now)
        elif every is not None and job.unique_key == RECURRING_PREFIX + job.kind:
            values.update(status="queued", attempts=0, run_at=now + int(every * 1000))
            await self._finish(job, "dead", values, now)
        else:
            values.update(status="dead")
            await self._finish(job, "dead", values, now)

    async def _finish(self, job: Job, outcome: str, values: dict[str, Any], now: int) -> None:
        values.update(lease_owner=None, lease_until=None, updated_on=now)
        async with self.rt.db.write() as conn:
            result = await conn.execute(update(t.jobs).where(self._mine(job)).values(**values))
        if result.rowcount != 1:
            log.warning("job %s (%s): lease lost before its outcome was written", job.id, job.kind)
            outcome = "lost"
        self._count(job.kind, outcome)

    async def _release(self, job: Job) -> None:
        """Shutdown interrupted the job: give it back unchanged (the attempt does not count)."""
        now = self.rt.clock.now_ms()
        values = {
            "status": "queued",
            "attempts": t.jobs.c.attempts - 1,
            "run_at": now,
            "lease_owner": None,
            "lease_until": None,
            "updated_on": now,
        }
        try:
            async with self.rt.db.write() as conn:
                result = await conn.execute(update(t.jobs).where(self._mine(job)).values(**values))
            if result.rowcount == 1:
                self._count(job.kind, "released")
        except Exception as exc:  # its lease will expire instead
            log.warning("job %s not released: %s", job.id, type(exc).__name__)

    async def _heartbeat_loop(self) -> None:
        interval = self.rt.settings.job_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job heartbeat failed")

    async def heartbeat(self) -> None:
        """Renew the leases of this node's running jobs; cancel any whose lease was taken away."""
        ids = list(self.running)
        if not ids:
            return
        j = t.jobs
        now = self.rt.clock.now_ms()
        async with self.rt.db.write() as conn:
            renewed = set(
                (
                    await conn.execute(
                        update(j)
                        .where(j.c.id.in_(ids), j.c.status == "running", j.c.lease_owner == self.rt.node_id)
                        .values(lease_until=now + self._lease_ms, heartbeat_at=now)
                        .returning(j.c.id)
                    )
                ).scalars()
            )
        for job_id in ids:
            task = self.running.get(job_id)
            if job_id not in renewed and task is not None:
                log.warning("job %s: lease lost, cancelling it on this node", job_id)
                task.cancel()

    async def _refresh_gauges(self) -> None:
        if self.metrics is None or time.monotonic() - self._gauged_at < GAUGE_REFRESH_SECONDS:
            return
        self._gauged_at = time.monotonic()
        j = t.jobs
        async with self.rt.db.read() as conn:
            rows = (
                await conn.execute(
                    select(j.c.kind, j.c.status, func.count())
                    .where(j.c.status.in_((*CLAIMABLE, "running", "dead")))
                    .group_by(j.c.kind, j.c.status)
                )
            ).all()
        seen = set()
        for kind, status, count in rows:
            self.metrics.depth.labels(kind, status).set(count)
            seen.add((kind, status))
        for gone in self._gauged - seen:
            self.metrics.depth.labels(*gone).set(0)
        self._gauged = seen

    def _count(self, kind: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.outcomes.labels(kind, outcome).inc()
