"""Durable rule jobs (thingcloud/jobs): duration timers (``rules.timer``) and schedule instants
(``rules.schedule``, see schedules.py).

When a message makes a ``duration`` condition true, the engine enqueues a job due when the condition
will have held for its duration (``run_at = since + duration``). The job row is the durable part: it
is in the database, so a server killed with SIGKILL finds it again on restart and runs it then — on
time if the server is back, at once if the due time passed while it was down. Nothing is cancelled
explicitly: when the job runs it compares its ``since`` with the condition's current state and does
nothing if the condition stopped holding (or was restarted by a newer message, with
``acceptUpdate: false``) meanwhile. A timer later than ``rule_timer_max_lateness`` seconds is not fired
but recorded as ``missed`` (an action hours late can be worse than none). The job may run twice (a
node dying mid-job): the firing key ``timer:<cond>:<did>:<since>`` makes that harmless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from thingcloud import jobs
from thingcloud import tables as t
from thingcloud.areas.rules import schedules
from thingcloud.areas.rules.engine import holds, load_states
from thingcloud.areas.rules.firing import fire, new_trace, record_traces
from thingcloud.areas.rules.language import Condition
from thingcloud.areas.rules.schedules import SCHEDULE_JOB
from thingcloud.errors import ApiError

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime

TIMER_JOB = "rules.timer"


async def record_missed(
    rt: Runtime, rule_id: str, key: str, late: int, trace: dict[str, Any]
) -> dict[str, Any]:
    f = t.rule_firings
    async with rt.db.write() as conn:
        await conn.execute(
            rt.db.upsert(f)
            .values(
                rule_id=rule_id,
                key=key,
                fired_on=rt.clock.now_ms(),
                outcome="missed",
                detail={"lateMs": late},
            )
            .on_conflict_do_nothing(index_elements=["rule_id", "key"])
        )
    trace["reason"] = f"missed: ran {late // 1000} s late (limit {rt.settings.rule_timer_max_lateness} s)"
    await record_traces(rt, [(rule_id, trace)])
    return {"outcome": "missed", "lateMs": late}


async def arm(rt: Runtime, rule_id: str, cond: Condition, did: str, since: int) -> None:
    assert cond.duration_ms is not None
    due = since + cond.duration_ms
    await jobs.enqueue(
        rt,
        TIMER_JOB,
        {"rule": rule_id, "cond": cond.index, "did": did, "since": since, "due": due},
        run_at=due,
        unique_key=f"rule-timer:{rule_id}:{cond.index}:{did}:{since}",
    )


@jobs.job(TIMER_JOB)
async def on_timer(rt: Runtime, job: jobs.Job) -> dict[str, Any]:
    from thingcloud.areas.rules.service import compile_body

    p = job.payload
    rule_id, index, did, since, due = p["rule"], int(p["cond"]), str(p["did"]), int(p["since"]), int(p["due"])
    async with rt.db.read() as conn:
        row = (await conn.execute(select(t.rules).where(t.rules.c.id == rule_id))).mappings().first()
    if row is None or not row["enabled"] or row["invalidated_on"] is not None:
        return {"outcome": "rule gone, disabled or invalid"}
    states = await load_states(rt, rule_id)
    state = states.get((index, did))
    if state is None or not state["result"] or state["since"] != since:
        return {"outcome": "condition no longer holds since then"}
    try:
        program = await compile_body(rt, row["body"])
    except ApiError as exc:
        return {"outcome": f"rule no longer compiles: {exc}"}
    now = rt.clock.now_ms()
    key = f"timer:{index}:{did}:{since}"
    trace = new_trace(rt, "timer", None, [{"index": index, "did": did, "since": since, "due": due}], "")
    trace["sdid"] = did
    late = now - due
    if late > rt.settings.rule_timer_max_lateness * 1000:
        return await record_missed(rt, rule_id, key, late, trace)
    if program.scheduled:
        trace["reason"] = "condition has held long enough; the rule fires on its schedule"
        await record_traces(rt, [(rule_id, trace)])
        return {"outcome": trace["reason"]}
    dtid = next((c.source.dtid for c in program.conditions if c.index == index and c.source.dtid), None)
    ok, matched, why = await holds(rt, row, program, states, (did, dtid) if dtid else None, max(now, due))
    if not ok:
        trace["reason"] = why
    else:
        await fire(rt, row, program, key, matched, trace)
    await record_traces(rt, [(rule_id, trace)])
    return {"outcome": trace["reason"], "lateMs": max(late, 0)}


@jobs.job(SCHEDULE_JOB)
async def on_schedule(rt: Runtime, job: jobs.Job) -> dict[str, Any]:
    """One instant of a rule's schedule: enqueue the next one, then fire if the rule holds."""
    from thingcloud.areas.rules.service import compile_body

    p = job.payload
    rule_id, index, due, version = p["rule"], int(p["cond"]), int(p["due"]), int(p["version"])
    async with rt.db.read() as conn:
        row = (await conn.execute(select(t.rules).where(t.rules.c.id == rule_id))).mappings().first()
    if row is None or row["modified_on"] != version:
        return {"outcome": "rule gone or changed since this instant was planned"}
    if not row["enabled"] or row["invalidated_on"] is not None:
        return {"outcome": "rule disabled or invalid"}
    try:
        program = await compile_body(rt, row["body"])
    except ApiError as exc:
        return {"outcome": f"rule no longer compiles: {exc}"}
    cond = next((c for c in program.conditions if c.index == index and c.schedule is not None), None)
    if cond is None or cond.schedule is None:
        return {"outcome": "no schedule at this condition any more"}
    following = cond.schedule.next_after(
        max(due, rt.clock.now_ms() - rt.settings.rule_timer_max_lateness * 1000)
    )
    if following is not None:
        await schedules.enqueue(rt, None, jobs, rule_id, index, following, version)
    now = rt.clock.now_ms()
    key = f"schedule:{index}:{due}"
    trace = new_trace(
        rt, "schedule", None, [{"index": index, "schedule": cond.schedule.text, "due": due}], ""
    )
    late = now - due
    if late > rt.settings.rule_timer_max_lateness * 1000:
        return await record_missed(rt, rule_id, key, late, trace)
    states = await load_states(rt, rule_id)
    ok, matched, why = await holds(rt, row, program, states, None, now)
    if not ok:
        trace["reason"] = why
    else:
        await fire(rt, row, program, key, matched, trace)
    await record_traces(rt, [(rule_id, trace)])
    return {"outcome": trace["reason"], "lateMs": max(late, 0)}
