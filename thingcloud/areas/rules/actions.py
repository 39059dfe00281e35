"""Sending a rule's actions: targets expanded (``ddid``, ``every``, ``matched``), parameters resolved
(``value``, ``valueFrom``, operations), and each action sent through ``messages.service.ingest`` — the
path ``POST /actions`` takes — with the rule owner's rights, so it is normalized against the target's
manifest, stored, counted and delivered to a connected device exactly like any other action.

``last_value`` reads the device snapshot (``device_snapshots``, the table ``/messages/last`` and
``includeSnapshot`` read), which the group commit updates in the same transaction as the message.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from thingcloud import tables as t
from thingcloud.areas.messages.service import ingest
from thingcloud.areas.rules.evaluation import resolve
from thingcloud.areas.rules.language import Program, RuleAction
from thingcloud.auth.permissions import AppPermissions, Principal
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)


async def last_value(rt: Runtime, did: str, path: str) -> Any:
    """The newest stored value of a device's field (None if it never sent one)."""
    s = t.device_snapshots
    async with rt.db.read() as conn:
        return await conn.scalar(select(s.c.value).where(s.c.did == did, s.c.path == path))


def rule_principal(row: Any) -> Principal:
    """The rights a rule acts with: its owner's, through the application that created it."""
    return Principal(
        kind="user",
        token_id=f"rule:{row['id']}",
        uid=row["uid"],
        aid=row["aid"],
        did=None,
        scope=frozenset({"read", "write"}),
        app=AppPermissions(),
        expires_at=None,
    )


async def targets(rt: Runtime, row: Any, action: RuleAction, matched: dict[str, str]) -> list[str]:
    target = action.target
    if target.ddid is not None:
        return [target.ddid]
    if target.selector == "matched":
        did = matched.get(str(target.dtid))
        return [did] if did else []
    d = t.devices.c
    async with rt.db.read() as conn:
        found = await conn.execute(
            select(d.id).where(d.uid == row["uid"], d.dtid == target.dtid).order_by(d.created_on)
        )
        return [r[0] for r in found]


async def plan(rt: Runtime, row: Any, program: Program, matched: dict[str, str]) -> list[dict[str, Any]]:
    """The action messages the rule would send now: ``[{"ddid", "name", "parameters"}]``."""

    async def read(did: str, path: str) -> Any:
        return await last_value(rt, did, path)

    out = []
    for action in program.actions:
        parameters = {k: await resolve(v, read) for k, v in action.parameters.items()}
        for ddid in await targets(rt, row, action, matched):
            out.append({"ddid": ddid, "name": action.name, "parameters": parameters})
    return out


async def send(
    rt: Runtime, row: Any, planned: list[dict[str, Any]], principal: Principal | None = None
) -> list[dict[str, Any]]:
    """Send planned actions one by one; each result is ``{"ddid", "name", "mid"}`` or has an ``error``
    (a target deleted meanwhile, a parameter the manifest refuses): the others are still sent. A rule
    sends with its owner's rights (``rule_principal``); a Scene activated through the API, with the
    caller's (``principal``)."""
    principal = principal or rule_principal(row)
    results = []
    for item in planned:
        body = {
            "type": "action",
            "ddid": item["ddid"],
            "data": {"actions": [{"name": item["name"], "parameters": item["parameters"]}]},
        }
        try:
            mid = await ingest(rt, principal, body)
            results.append({"ddid": item["ddid"], "name": item["name"], "mid": mid})
        except Exception as exc:
            log.warning(
                "rule/scene %s: action %s to %s failed: %s", row["id"], item["name"], item["ddid"], exc
            )
            results.append(
                {"ddid": item["ddid"], "name": item["name"], "error": str(exc) or type(exc).__name__}
            )
    return results


async def send_all(
    rt: Runtime, row: Any, program: Program, matched: dict[str, str], test: bool = False
) -> list[str]:
    """Plan and send; the mids of the actions stored."""
    results = await send(rt, row, await plan(rt, row, program, matched))
    return [r["mid"] for r in results if "mid" in r]
