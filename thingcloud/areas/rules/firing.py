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

from collections import Counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

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
    """Store trace entries in a transaction of their own (timers and schedules; the engine writes a
    batch's entries with its condition states, ``write_traces``)."""
    if not traces:
        return
    async with rt.db.write() as conn:
        alive = await living_rules(conn, {r for r, _ in traces})
        await write_traces(rt, conn, [(r, e) for r, e in traces if r in alive])


async def living_rules(conn: AsyncConnection, rule_ids: set[str]) -> set[str]:
    """Which of ``rule_ids`` still exist (a rule deleted meanwhile gets no state and no trace)."""
    if not rule_ids:
        return set()
    return set((await conn.execute(select(t.rules.c.id).where(t.rules.c.id.in_(rule_ids)))).scalars().all())


async def write_traces(rt: Runtime, conn: AsyncConnection, traces: list[tuple[str, dict[str, Any]]]) -> None:
    """Insert trace entries in the caller's transaction and keep about the newest
    ``rule_trace_entries`` per rule. Trimming is amortized: a rule is trimmed once it has had half
    that many new entries on this node, not at every batch (ranking every touched rule's entries in
    each batch cost the engine ~20 ms per 500 rules, inside a write transaction ingest waits for on
    SQLite). A rule therefore holds up to 1.5x (2x after a restart) the entries; the trace shows
    the newest ``rule_trace_entries``."""
    if not traces:
        return
    tr = t.rule_traces
    keep = max(rt.settings.rule_trace_entries, 1)
    await conn.execute(tr.insert(), [{"rule_id": r, "at": e["at"], "entry": e} for r, e in traces])
    _untrimmed.update(r for r, _ in traces)
    due = sorted(r for r in {r for r, _ in traces} if _untrimmed[r] >= max(keep // 2, 1))
    if not due:
        return
    oldest_kept = (
        select(tr.c.id)
        .where(tr.c.rule_id == bindparam("r"))
        .order_by(tr.c.id.desc())
        .offset(keep - 1)
        .limit(1)
        .scalar_subquery()
    )
    await conn.execute(
        delete(tr).where(tr.c.rule_id == bindparam("r"), tr.c.id < oldest_kept), [{"r": r} for r in due]
    )
    for r in due:
        del _untrimmed[r]


# Trace entries written per rule on this node since its last trim (write_traces).
_untrimmed: Counter[str] = Counter()


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
