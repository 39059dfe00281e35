"""Dry-run of a rule over stored messages (beyond ARTIK): when would it have fired, with what actions.

The rule's source devices' messages in ``[startDate, endDate]`` are replayed in ``ts`` order through
the same evaluation, state and ``holds`` functions the engine uses, from an empty state, with
duration timers and schedule instants (at most ``MAX_INSTANTS``) simulated in message time. Actions
are planned (targets expanded, parameters resolved) but never sent, and nothing is written. At most
``MAX_MESSAGES`` are replayed (``truncated`` says when there were more).
"""

from __future__ import annotations

import heapq
from typing import Any

from sqlalchemy import or_, select

from thingcloud import tables as t
from thingcloud.areas.rules import actions as rule_actions
from thingcloud.areas.rules.engine import holds, matches, next_state
from thingcloud.areas.rules.evaluation import evaluate
from thingcloud.areas.rules.language import Program
from thingcloud.areas.rules.schemas import DryRunFiring, DryRunResult
from thingcloud.areas.rules.service import compile_body, visible_rule
from thingcloud.auth.permissions import Principal
from thingcloud.errors import ValidationFailed
from thingcloud.runtime import Runtime

MAX_MESSAGES = 10_000
MAX_INSTANTS = 1_000
DAY_MS = 86_400_000


async def replay(
    rt: Runtime, principal: Principal, rule_id: str, start: int | None, end: int | None
) -> DryRunResult:
    row = await visible_rule(rt, principal, rule_id)
    end = end if end is not None else rt.clock.now_ms()
    start = start if start is not None else end - DAY_MS
    if start > end:
        raise ValidationFailed.field("startDate", "startDate must not be after endDate")
    program = await compile_body(rt, row["body"])
    m = t.messages.c
    sources = []
    if program.source_devices:
        sources.append(m.sdid.in_(sorted(program.source_devices)))
    if program.source_types:
        sources.append((m.uid == row["uid"]) & m.sdtid.in_(sorted(program.source_types)))
    rows: Any = []
    if sources:  # a rule on a schedule alone reads no messages
        async with rt.db.read() as conn:
            query = (
                select(m.mid, m.sdid, m.sdtid, m.ts, m.data)
                .where(or_(*sources), m.ts >= start, m.ts <= end)
                .order_by(m.ts, m.mid)
                .limit(MAX_MESSAGES + 1)
            )
            rows = (await conn.execute(query)).all()
    truncated = len(rows) > MAX_MESSAGES
    firings = await _simulate(rt, row, program, list(rows[:MAX_MESSAGES]), start, end)
    return DryRunResult(
        ruleId=rule_id,
        startDate=start,
        endDate=end,
        messages=min(len(rows), MAX_MESSAGES),
        truncated=truncated,
        firings=firings,
    )


async def _simulate(
    rt: Runtime, row: Any, program: Program, rows: list[Any], start: int, end: int
) -> list[DryRunFiring]:
    states: dict[tuple[int, str], dict[str, Any]] = {}
    timers: list[tuple[int, int, str, int]] = []  # (due, cond index, did, since)
    firings: list[DryRunFiring] = []
    by_index = {c.index: c for c in program.conditions}

    async def read(sdid: str, path: str) -> Any:
        return await rule_actions.last_value(rt, sdid, path)

    async def run_timers(until: int) -> None:
        while timers and timers[0][0] <= until:
            due, index, did, since = heapq.heappop(timers)
            if index < 0:  # a schedule instant
                ok, matched, _ = await holds(rt, row, program, states, None, due)
                if ok:
                    planned = await rule_actions.plan(rt, row, program, matched)
                    firings.append(DryRunFiring(ts=due, cause="schedule", actions=planned))
                continue
            state = states.get((index, did))
            if state is None or not state["result"] or state["since"] != since or program.scheduled:
                continue
            dtid = by_index[index].source.dtid
            ok, matched, _ = await holds(rt, row, program, states, (did, dtid) if dtid else None, due)
            if ok:
                planned = await rule_actions.plan(rt, row, program, matched)
                firings.append(DryRunFiring(ts=due, cause="timer", actions=planned))

    for cond in program.conditions:
        at = start
        while cond.schedule is not None and len(timers) < MAX_INSTANTS:
            due = cond.schedule.next_after(at)
            if due is None or due > end:
                break
            heapq.heappush(timers, (due, -1, "", 0))
            at = due

    for mid, sdid, sdtid, ts, data in rows:
        await run_timers(ts - 1)
        instant = False
        for cond in program.conditions:
            if not matches(cond, sdid, sdtid):
                continue
            result, value, _ = await evaluate(cond, data, read)
            if result is None:
                continue
            since, arms = next_state(cond, states.get((cond.index, sdid)), result, ts)
            states[(cond.index, sdid)] = {"result": result, "since": since, "value": value}
            instant = instant or (result and cond.duration_ms is None)
            if arms and cond.duration_ms is not None:
                heapq.heappush(timers, (ts + cond.duration_ms, cond.index, sdid, ts))
        if instant and not program.scheduled:
            dtid = sdtid if program.source_types else None
            ok, matched, _ = await holds(rt, row, program, states, (sdid, str(dtid)) if dtid else None, ts)
            if ok:
                planned = await rule_actions.plan(rt, row, program, matched)
                firings.append(DryRunFiring(ts=ts, mid=mid, cause="message", actions=planned))
    await run_timers(end)
    return firings
