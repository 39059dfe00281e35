"""Recurring housekeeping jobs: trimming the feed past every consumer, purging finished jobs.

Both are idempotent deletes of rows nobody needs any more, in short transactions, so running one
twice (after a lost lease) or on any node is harmless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete

from thingcloud import feed
from thingcloud import tables as t
from thingcloud.jobs import RECURRING_PREFIX, Job, job

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime

FEED_TRIM_EVERY = 300.0
JOBS_TRIM_EVERY = 3600.0


@job("feed.trim", every=FEED_TRIM_EVERY)
async def trim_feed(rt: Runtime, _job: Job) -> dict[str, Any]:
    """Feed entries older than ``feed_retention`` that every consumer has checkpointed past."""
    return await feed.trim(rt)


@job("jobs.trim", every=JOBS_TRIM_EVERY)
async def trim_jobs(rt: Runtime, _job: Job) -> dict[str, Any]:
    """Succeeded and dead jobs older than ``job_retention`` (recurring rows are never finished)."""
    j = t.jobs
    cutoff = rt.clock.now_ms() - rt.settings.job_retention * 1000
    async with rt.db.write() as conn:
        result = await conn.execute(
            delete(j).where(
                j.c.status.in_(("succeeded", "dead")),
                j.c.updated_on < cutoff,
                j.c.unique_key.is_(None) | ~j.c.unique_key.startswith(RECURRING_PREFIX),
            )
        )
    return {"deleted": max(result.rowcount or 0, 0)}
