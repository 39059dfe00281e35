"""Durable background jobs: the job registry, ``enqueue``, and the ``Job`` a handler receives.

A job is a row in ``jobs``; ``thingcloud.jobs.runner.JobRunner`` (started by the app lifespan, one
per node) claims due rows under a lease, runs the handler registered for their kind and records the
outcome. Handlers are plain ``async def handler(rt, job) -> dict | None`` functions registered with
``@job("kind")`` in one module per kind of work (``maintenance.py``, later exports, webhooks, rule
timers); ``every=`` makes a kind recurring. A job may run more than once (a node that dies mid-job
has its lease expire and the job is retried elsewhere), so handlers must be idempotent.

Status: ``queued`` (waiting for ``run_at``), ``running`` (leased), ``failed`` (an attempt failed; it
is retried at ``run_at`` after exponential backoff), ``succeeded``, ``dead`` (attempts exhausted or
``PermanentJobError``; kept for inspection until ``job_retention``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import tables as t
from thingcloud.ids import new_id

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime
    from thingcloud.settings import Settings

log = logging.getLogger(__name__)

JOBS_ENQUEUED = "jobs.enqueued"
RECURRING_PREFIX = "recurring:"


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    """This attempt's number, from 1."""
    max_attempts: int
    run_at: int
    unique_key: str | None


JobHandler = Callable[["Runtime", Job], Awaitable[dict[str, Any] | None]]


class PermanentJobError(Exception):
    """Raised by a handler when retrying cannot help (the job goes straight to ``dead``)."""


@dataclass(frozen=True, slots=True)
class JobKind:
    kind: str
    handler: JobHandler
    every: float | None = None
    """Seconds between runs of a recurring job (one row per kind, rescheduled after each run)."""
    slots: Callable[[Settings], int] | None = None
    """The kind's own number of concurrent jobs on a node, from the settings; None: it shares the
    ``job_concurrency`` slots with the other kinds. For kinds that mostly wait (webhook deliveries),
    so a burst of them neither waits behind nor holds up the rest."""


class JobRegistry:
    """Handlers by kind. The module-level ``registry`` holds the built-in kinds; each runner works
    from its own copy, so a node (or a test) can add kinds only it runs."""

    def __init__(self) -> None:
        self.kinds: dict[str, JobKind] = {}

    def register(
        self,
        kind: str,
        handler: JobHandler,
        every: float | None = None,
        slots: Callable[[Settings], int] | None = None,
    ) -> None:
        existing = self.kinds.get(kind)
        if existing is not None and existing.handler is not handler:
            raise ValueError(f"job kind {kind!r} already has a handler")
        self.kinds[kind] = JobKind(kind, handler, every, slots)

    def job(
        self, kind: str, every: float | None = None, slots: Callable[[Settings], int] | None = None
    ) -> Callable[[JobHandler], JobHandler]:
        def decorate(handler: JobHandler) -> JobHandler:
            self.register(kind, handler, every, slots)
            return handler

        return decorate

    def copy(self) -> JobRegistry:
        clone = JobRegistry()
        clone.kinds = dict(self.kinds)
        return clone


registry = JobRegistry()
job = registry.job


async def enqueue(
    rt: Runtime,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    run_at: int | None = None,
    unique_key: str | None = None,
    max_attempts: int | None = None,
    conn: AsyncConnection | None = None,
) -> str:
    """Schedule a job (at ``run_at`` epoch ms, default now) and return its id.

    With ``unique_key``, scheduling is idempotent: if a job with that key exists (in any status,
    until it is purged after ``job_retention``), nothing is added and its id is returned. With
    ``conn`` the row joins the caller's transaction (it exists only if that commits) and runners
    find it at their next poll; without, it is committed here and this node's runner is woken.
    """
    now = rt.clock.now_ms()
    row = {
        "id": new_id(),
        "kind": kind,
        "payload": payload or {},
        "status": "queued",
        "run_at": now if run_at is None else run_at,
        "attempts": 0,
        "max_attempts": max_attempts or rt.settings.job_max_attempts,
        "unique_key": unique_key,
        "created_on": now,
        "updated_on": now,
    }
    if conn is not None:
        return await _insert(rt, conn, row)
    async with rt.db.write() as own:
        job_id = await _insert(rt, own, row)
    try:
        await rt.bus.publish(JOBS_ENQUEUED, {"kind": kind})
    except Exception as exc:  # runners poll anyway
        log.warning("job notification not published: %s", type(exc).__name__)
    return job_id


async def _insert(rt: Runtime, conn: AsyncConnection, row: dict[str, Any]) -> str:
    if row["unique_key"] is None:
        await conn.execute(insert(t.jobs).values(row))
        return str(row["id"])
    await conn.execute(rt.db.upsert(t.jobs).values(row).on_conflict_do_nothing(index_elements=["unique_key"]))
    existing = await conn.scalar(select(t.jobs.c.id).where(t.jobs.c.unique_key == row["unique_key"]))
    return str(existing)


async def get_job(rt: Runtime, job_id: str) -> dict[str, Any] | None:
    """The job row as a dict (status, attempts, last_error, result...), for callers tracking a job."""
    async with rt.db.read() as conn:
        row = (await conn.execute(select(t.jobs).where(t.jobs.c.id == job_id))).first()
    return None if row is None else dict(row._mapping)
