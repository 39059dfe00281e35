"""The rules engine: a durable consumer of the ingest feed that evaluates rules and fires their actions.

Flow. ``register`` adds the feed consumer ``rules.engine`` (commit order, checkpointed, one node at a
time by lease) and an in-memory ``RuleIndex`` of the enabled, valid rules by source device and source
device type, so a message only evaluates the rules that can match it. Every node keeps its index
current from ``rules.changed`` on the bus (the consumer may move to any node when a lease expires).

State. Each condition keeps its latest state per device in ``rule_states`` (result, since when it
holds, the value seen): conditions met at different times combine (AND over time). A message that
makes a condition without ``duration`` true fires the rule if every other condition holds. A
``duration`` condition arms a timer instead (timers.py); the timer fires the rule when it has held
long enough.

Idempotency and loops: firing.py (each firing is claimed once per cause — the feed seq of the
message — and rate-limited per rule). The states a feed batch changes are written once per batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, cast, select, update

from thingcloud import tables as t
from thingcloud.areas.rules import actions as rule_actions
from thingcloud.areas.rules.evaluation import evaluate
from thingcloud.areas.rules.firing import fire, living_rules, new_trace, write_traces
from thingcloud.areas.rules.language import Condition, Program
from thingcloud.areas.scenes import service as scenes
from thingcloud.errors import ApiError
from thingcloud.feed import FeedEntry

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

CONSUMER = "rules.engine"
RULES_CHANGED = "rules.changed"


@dataclass
class Compiled:
    row: dict[str, Any]
    program: Program


class RuleIndex:
    """Enabled, valid rules by the device and device type their conditions read."""

    def __init__(self) -> None:
        self.rules: dict[str, Compiled] = {}
        self.by_device: dict[str, set[str]] = defaultdict(set)
        self.by_type: dict[str, set[str]] = defaultdict(set)

    def put(self, compiled: Compiled) -> None:
        self.remove(compiled.row["id"])
        rule_id = compiled.row["id"]
        self.rules[rule_id] = compiled
        for did in compiled.program.source_devices:
            self.by_device[did].add(rule_id)
        for dtid in compiled.program.source_types:
            self.by_type[dtid].add(rule_id)

    def remove(self, rule_id: str) -> None:
        old = self.rules.pop(rule_id, None)
        if old is None:
            return
        for did in old.program.source_devices:
            self.by_device[did].discard(rule_id)
        for dtid in old.program.source_types:
            self.by_type[dtid].discard(rule_id)

    def candidates(self, did: str, dtid: str) -> list[Compiled]:
        ids = self.by_device.get(did, set()) | self.by_type.get(dtid, set())
        return [self.rules[i] for i in sorted(ids) if i in self.rules]


def matches(cond: Condition, did: str, dtid: str) -> bool:
    return cond.source.sdid == did if cond.source.sdid else cond.source.dtid == dtid


def state_holds(cond: Condition, state: dict[str, Any] | None, at: int) -> bool:
    if state is None or not state["result"]:
        return False
    return cond.duration_ms is None or (
        state["since"] is not None and state["since"] + cond.duration_ms <= at
    )


def next_state(
    cond: Condition, prior: dict[str, Any] | None, result: bool, at: int
) -> tuple[int | None, bool]:
    """A condition's new ``since`` after a message evaluated it to ``result`` at ``at``, and whether a
    duration timer must be armed. True since before stays true since then, unless the condition has a
    duration with ``acceptUpdate: false`` (any new message restarts the wait)."""
    if not result:
        return None, False
    keeps = prior is not None and prior["result"] and (cond.duration_ms is None or cond.accept_update)
    since = int(prior["since"]) if keeps and prior is not None and prior["since"] is not None else at
    return since, cond.duration_ms is not None and since == at


async def load_states(rt: Runtime, rule_id: str) -> dict[tuple[int, str], dict[str, Any]]:
    return (await load_states_of(rt, {rule_id})).get(rule_id, {})


async def load_states_of(rt: Runtime, rule_ids: set[str]) -> dict[str, dict[tuple[int, str], dict[str, Any]]]:
    """The condition states of several rules, in one query: ``{rule_id: {(cond, did): state}}``."""
    s = t.rule_states
    out: dict[str, dict[tuple[int, str], dict[str, Any]]] = {r: {} for r in rule_ids}
    if not rule_ids:
        return out
    async with rt.db.read() as conn:
        rows = (await conn.execute(select(s).where(s.c.rule_id.in_(sorted(rule_ids))))).mappings().all()
    for r in rows:
        out[r["rule_id"]][(r["cond"], r["did"])] = dict(r)
    return out


async def holds(
    rt: Runtime,
    row: Any,
    program: Program,
    states: dict[tuple[int, str], dict[str, Any]],
    trigger: tuple[str, str] | None,
    at: int,
) -> tuple[bool, dict[str, str], str]:
    """Does every condition hold at ``at``? Returns (ok, the devices ``matched`` binds, why not)."""
    matched: dict[str, str] = {}
    by_type: dict[str, list[Condition]] = defaultdict(list)
    for cond in program.conditions:
        if cond.schedule is not None:
            continue  # holds at its instants: the schedule job is what asks
        if cond.source.sdid is not None:
            if not state_holds(cond, states.get((cond.index, cond.source.sdid)), at):
                return False, matched, f"condition {cond.index} does not hold"
        elif cond.source.selector == "every":
            d = t.devices.c
            async with rt.db.read() as conn:
                dids = [
                    r[0]
                    for r in await conn.execute(
                        select(d.id).where(d.uid == row["uid"], d.dtid == cond.source.dtid)
                    )
                ]
            if not dids or not all(state_holds(cond, states.get((cond.index, x)), at) for x in dids):
                return False, matched, f"condition {cond.index} does not hold for every device"
        else:
            by_type[str(cond.source.dtid)].append(cond)
    for dtid, conds in by_type.items():
        seen = sorted({did for (i, did) in states if any(c.index == i for c in conds)})
        if trigger is not None and trigger[1] == dtid:
            seen = [trigger[0]] + [x for x in seen if x != trigger[0]]
        found = next(
            (x for x in seen if all(state_holds(c, states.get((c.index, x)), at) for c in conds)), None
        )
        if found is None:
            return False, matched, f"no device of {dtid} meets conditions {[c.index for c in conds]}"
        matched[dtid] = found
    return True, matched, "all conditions hold"


async def save_batch(
    rt: Runtime, changed: list[dict[str, Any]], traces: list[tuple[str, dict[str, Any]]]
) -> None:
    """A feed batch's condition states (upserts, one executemany) and trace entries, in one
    transaction; a rule deleted meanwhile is skipped. One transaction rather than a statement per
    state and a transaction each: on SQLite every write transaction waits for, and makes wait, the
    ingest writer."""
    if not changed and not traces:
        return
    s = t.rule_states
    async with rt.db.write() as conn:
        alive = await living_rules(conn, {c["rule_id"] for c in changed} | {r for r, _ in traces})
        states = [c for c in changed if c["rule_id"] in alive]
        if states:
            stmt = rt.db.upsert(s)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["rule_id", "cond", "did"],
                    set_={k: stmt.excluded[k] for k in ("result", "since", "value", "ts")},
                ),
                states,
            )
        await write_traces(rt, conn, [(r, e) for r, e in traces if r in alive])


@dataclass
class Firing:
    """A firing decided while evaluating a batch, sent once the batch's evaluation is done."""

    compiled: Compiled
    key: str
    matched: dict[str, str]
    trace: dict[str, Any]


async def fire_all(rt: Runtime, firings: list[Firing]) -> None:
    """Send a batch's firings: each rule's in order (its rate limit counts them one by one), different
    rules concurrently, so their actions share group commits instead of waiting for each other's."""
    by_rule: dict[str, list[Firing]] = defaultdict(list)
    for firing in firings:
        by_rule[firing.compiled.row["id"]].append(firing)

    async def in_order(queue: list[Firing]) -> None:
        for f in queue:
            try:
                await fire(rt, f.compiled.row, f.compiled.program, f.key, f.matched, f.trace)
            except Exception as exc:  # one broken rule never stops the others
                log.exception("rule %s failed to fire (%s)", f.compiled.row["id"], f.key)
                f.trace.update(fired=False, reason=f"error: {exc}")

    await asyncio.gather(*(in_order(queue) for queue in by_rule.values()))


class RuleEngine:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.index = RuleIndex()
        self.loaded = False

    async def start(self) -> None:
        if not self.rt.settings.rules_engine:
            return
        # No database access here: the server starts (and answers /readyz) before its migrations ran
        # or while the database is down; the index is loaded by the consumer's first batch.
        await self.rt.bus.subscribe(RULES_CHANGED, self._on_changed)
        await self.rt.feed.add(CONSUMER, self.handle, batch=500, start_at="latest")

    async def load_index(self) -> None:
        """Every rule into the index. ``loaded`` is set first, so a change announced while this runs
        is applied too (both read the rule's current row)."""
        self.loaded = True
        async with self.rt.db.read() as conn:
            ids = [r[0] for r in await conn.execute(select(t.rules.c.id))]
        for rule_id in ids:
            await self.reload(rule_id)

    async def _on_changed(self, _subject: str, payload: dict[str, Any]) -> None:
        if not self.loaded:
            return  # the first batch loads everything
        try:
            await self.reload(str(payload.get("id")))
        except Exception:  # the database is down: a stale entry at worst, refreshed by the next change
            log.exception("rule %s not refreshed in the index", payload.get("id"))

    async def reload(self, rule_id: str) -> None:
        """Refresh one rule in the index (gone, disabled, invalid or recompiled)."""
        from thingcloud.areas.rules.service import compile_body

        async with self.rt.db.read() as conn:
            row = (await conn.execute(select(t.rules).where(t.rules.c.id == rule_id))).mappings().first()
        if row is None or not row["enabled"] or row["invalidated_on"] is not None:
            self.index.remove(rule_id)
            return
        try:
            program = await compile_body(self.rt, row["body"])
        except ApiError as exc:  # a device or manifest went away: the device.deleted entry invalidates it
            log.warning("rule %s no longer compiles: %s", rule_id, exc)
            self.index.remove(rule_id)
            return
        self.index.put(Compiled(dict(row), program))

    async def handle(self, entries: list[FeedEntry]) -> None:
        """One feed batch. Condition states are read once per rule and written once per batch, with
        the trace entries, in one transaction: if the batch is handed over again after a crash, it
        recomputes the same states (``since`` is a message's commit time) and re-arms the same timers
        (idempotent job keys), and its firings are already claimed."""
        if not self.loaded:
            await self.load_index()
        traces: list[tuple[str, dict[str, Any]]] = []
        candidates = {
            c.row["id"]
            for e in entries
            if e.kind == "message" and e.did
            for c in self.index.candidates(e.did, str(e.payload.get("sdtid")))
        }
        states = await load_states_of(self.rt, candidates)
        changed: dict[tuple[str, int, str], dict[str, Any]] = {}
        firings: list[Firing] = []
        for entry in entries:
            if entry.kind == "device.deleted" and entry.did:
                await self.invalidate_device(entry.did)
                await scenes.invalidate_device(self.rt, entry.did)  # scenes go invalid the same way
            elif entry.kind == "message" and entry.did:
                payload = entry.payload
                for compiled in self.index.candidates(entry.did, str(payload.get("sdtid"))):
                    rule_id = compiled.row["id"]
                    try:
                        trace = await self.on_message(
                            compiled, entry, states.setdefault(rule_id, {}), changed, firings
                        )
                        traces.append((rule_id, trace))
                    except Exception as exc:  # one broken rule never stops the others
                        log.exception("rule %s failed on feed seq %d", rule_id, entry.seq)
                        traces.append((rule_id, new_trace(self.rt, "message", entry, [], f"error: {exc}")))
        await fire_all(self.rt, firings)
        await save_batch(self.rt, list(changed.values()), traces)

    async def on_message(
        self,
        compiled: Compiled,
        entry: FeedEntry,
        states: dict[tuple[int, str], dict[str, Any]],
        changed: dict[tuple[str, int, str], dict[str, Any]],
        firings: list[Firing],
    ) -> dict[str, Any]:
        """Evaluate one rule on one message: update its condition states (in ``states``, noted in
        ``changed`` for the batch's write), arm duration timers, and if it now holds add its firing
        to ``firings`` (sent after the batch's evaluation, ``fire_all``, which completes the trace)."""
        from thingcloud.areas.rules import timers

        rt, row, program = self.rt, compiled.row, compiled.program
        payload = entry.payload
        did, dtid, cts, data = (
            entry.did or "",
            str(payload.get("sdtid")),
            int(payload["cts"]),
            payload.get("data"),
        )

        async def read(sdid: str, path: str) -> Any:
            return await rule_actions.last_value(rt, sdid, path)

        shown: list[dict[str, Any]] = []
        instant = False
        arm: list[tuple[Condition, int]] = []
        for cond in program.conditions:
            if not matches(cond, did, dtid):
                continue
            result, value, right = await evaluate(cond, data, read)
            shown.append(
                {
                    "index": cond.index,
                    "field": cond.field,
                    "operator": cond.operator,
                    "value": value,
                    "operand": right,
                    "result": result,
                }
            )
            if result is None:
                continue
            since, arms = next_state(cond, states.get((cond.index, did)), result, cts)
            instant = instant or (result and cond.duration_ms is None)
            if arms:
                arm.append((cond, cts))
            state = {
                "rule_id": row["id"],
                "cond": cond.index,
                "did": did,
                "result": result,
                "since": since,
                "value": value,
                "ts": cts,
            }
            states[(cond.index, did)] = state
            changed[(row["id"], cond.index, did)] = state
        for cond, since in arm:
            await timers.arm(rt, row["id"], cond, did, since)
        trace = new_trace(rt, "message", entry, shown, "")
        if arm:
            trace["reason"] = "duration timer armed"
            return trace
        if not instant:
            trace["reason"] = "no condition without duration became true"
            return trace
        if program.scheduled:
            trace["reason"] = "condition state updated; the rule fires on its schedule"
            return trace
        ok, matched, why = await holds(rt, row, program, states, (did, dtid), cts)
        if not ok:
            trace["reason"] = why
            return trace
        trace["reason"] = "all conditions hold"
        firings.append(Firing(compiled, f"seq:{entry.seq}", matched, trace))
        return trace

    async def invalidate_device(self, did: str) -> None:
        """A device a rule uses was deleted: the rule is invalid (stops firing, GET shows why)."""
        r = t.rules.c
        now = self.rt.clock.now_ms()
        async with self.rt.db.read() as conn:
            ids = [
                x[0]
                for x in await conn.execute(
                    select(r.id).where(r.invalidated_on.is_(None), cast(r.body, Text).contains(did))
                )
            ]
        for rule_id in ids:
            error = {
                "errorCode": 404,
                "fieldPath": {"path": [{"text": "rule"}]},
                "messageArgs": [did],
                "messageKey": "rule.device.deleted",
                "message": f"Device {did} used by the rule was deleted",
            }
            async with self.rt.db.write() as conn:
                await conn.execute(
                    update(t.rules).where(r.id == rule_id).values(invalidated_on=now, error=error)
                )
            await self.rt.bus.publish(RULES_CHANGED, {"id": rule_id})


async def register(rt: Runtime) -> RuleEngine:
    """Start this node's engine: its index, and the feed consumer (the app lifespan starts the feed)."""
    engine = RuleEngine(rt)
    await engine.start()
    return engine
