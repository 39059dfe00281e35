"""Reading a rule's trace (beyond ARTIK): its recent evaluations, newest first.

The engine and the timers write the entries (firing.write_traces), keeping about the newest
``rule_trace_entries`` per rule, so the trace is always on and its size is bounded per rule.
"""

from __future__ import annotations

from sqlalchemy import select

from thingcloud import tables as t
from thingcloud.areas.rules.schemas import TraceEntry
from thingcloud.areas.rules.service import visible_rule
from thingcloud.auth.permissions import Principal
from thingcloud.runtime import Runtime


async def recent(rt: Runtime, principal: Principal, rule_id: str) -> list[TraceEntry]:
    await visible_rule(rt, principal, rule_id)
    tr = t.rule_traces
    async with rt.db.read() as conn:
        rows = await conn.execute(
            select(tr.c.entry)
            .where(tr.c.rule_id == rule_id)
            .order_by(tr.c.id.desc())
            .limit(rt.settings.rule_trace_entries)
        )
        return [TraceEntry.model_validate(r[0]) for r in rows]
