"""Firing a rule and recording why: the idempotent claim of a firing, the per-rule rate limit, the
actions sent, and the bounded trace of evaluations (``GET /rules/{ruleId}/trace``).

A firing is claimed by inserting ``rule_firings(rule_id, key)`` — key ``seq:<feed seq>``, ``timer:…`` or
``schedule:…`` — in the transaction that counts it (``countApply``/``lastApply``); only the claimer
sends the actions, so a cause handled twice (the feed is at least once, a job may run twice) fires
once. A crash between that commit and the sends loses that firing's actions rather than repeating
them; the firing row stays, without ``detail``, to show it. At most ``rule_max_firings_per_minute``
firings per rule in any minute: beyond, the firing is recorded as ``limited`` and sends nothing, which
stops a rule whose action makes its own source fire it again, and leaves every other rule running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update

from thingcloud import tables as t
from thingcloud.areas.rules import actions as rule_actions
from thingcloud.areas.rules.language import Program
from thingcloud.feed import FeedEntry

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime

MINUTE_MS = 60_000


async def fire(
    rt: Runtime, row: Any, program: Program, key: str, matched: dict[str, str], trace: dict[str, Any]
) -> None:
    """Claim the firing ``key`` (idempotent), count it, send the actions, and note it in ``trace``."""
    now = rt.clock.now_ms()
    f = t.rule_firings
    async with rt.db.write() as conn:
        recent = await conn.scalar(
            select(func.count()).where(
                f.c.rule_id == row["id"], f.c.outcome == "fired", f.c.fired_on > now - MINUTE_MS
            )
        )
        limited = (recent or 0) >= rt.settings.rule_max_firings_per_minute
        claimed = await conn.execute(
            rt.db.upsert(f)
            .values(
                rule_id=row["id"],
                key=key,
                fired_on=now,
                outcome="limited" if limited else "fired",
                detail=None,
            )
            .on_conflict_do_nothing(index_elements=["rule_id", "key"])
        )
        if claimed.rowcount == 0:
            trace.update(fired=False, reason=f"already handled ({key})")
            return
        if not limited:
            await conn.execute(
                update(t.rules)
                .where(t.rules.c.id == row["id"])
                .values(count_apply=t.rules.c.count_apply + 1, last_apply=now)
            )
    if limited:
        trace.update(
            fired=False,
            reason=f"firing-rate limit ({rt.settings.rule_max_firings_per_minute}/minute) reached",
        )
        return
    planned = await rule_actions.plan(rt, row, program, matched)
    results = await rule_actions.send(rt, row, planned)
    async with rt.db.write() as conn:
        await conn.execute(
            update(f).where(f.c.rule_id == row["id"], f.c.key == key).values(detail={"actions": results})
        )
    failed = [r for r in results if "error" in r]
    trace.update(
        fired=True,
        actions=results,
        reason="fired" if not failed else f"fired; {len(failed)} of {len(results)} actions failed",
    )


async def record_traces(rt: Runtime, traces: list[tuple[str, dict[str, Any]]]) -> None:
    """Store trace entries and keep only the newest ``rule_trace_entries`` per rule."""
    if not traces:
        return
    tr = t.rule_traces
    keep = rt.settings.rule_trace_entries
    async with rt.db.write() as conn:
        rule_ids = {r for r, _ in traces}
        alive = set(
            (await conn.execute(select(t.rules.c.id).where(t.rules.c.id.in_(rule_ids)))).scalars().all()
        )
        traces = [(r, e) for r, e in traces if r in alive]  # a rule deleted meanwhile has no trace
        if not traces:
            return
        await conn.execute(tr.insert(), [{"rule_id": r, "at": e["at"], "entry": e} for r, e in traces])
        # One statement for every rule touched: rank each rule's entries newest first, drop past ``keep``.
        ranked = (
            select(
                tr.c.id,
                func.row_number().over(partition_by=tr.c.rule_id, order_by=tr.c.id.desc()).label("rank"),
            )
            .where(tr.c.rule_id.in_(sorted({r for r, _ in traces})))
            .subquery()
        )
        await conn.execute(delete(tr).where(tr.c.id.in_(select(ranked.c.id).where(ranked.c.rank > keep))))


def new_trace(
    rt: Runtime, cause: str, entry: FeedEntry | None, conditions: list[dict[str, Any]], reason: str
) -> dict[str, Any]:
    payload = entry.payload if entry is not None else {}
    return {
        "at": rt.clock.now_ms(),
        "cause": cause,
        "mid": payload.get("mid"),
        "sdid": payload.get("sdid"),
        "conditions": conditions,
        "fired": False,
        "reason": reason,
        "actions": [],
    }
