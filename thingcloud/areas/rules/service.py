"""Rules API logic (REFERENCE.md §4.11, S8): create, read, update, delete, list, executions, test runs.

Who may see a rule: its owner (user token) or an application the owner authorized (application
token); a ``thisApplication`` rule only through the application that created it. Creating or changing
a rule needs READ on every device (or device type, for selectors) it reads and WRITE on every device
it sends to, checked through ``auth.permissions``. Every change is announced on the bus
(``rules.changed``) so each node's engine index follows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from thingcloud import tables as t
from thingcloud.areas.devices.service import page_bounds
from thingcloud.areas.devicetypes import service as devicetypes
from thingcloud.areas.messages.service import manifest_for
from thingcloud.areas.rules import actions as rule_actions
from thingcloud.areas.rules import schedules
from thingcloud.areas.rules.language import LANGUAGE_VERSION, Lookup, Program, compile_rule
from thingcloud.areas.rules.schemas import Rule, RuleCreate, RuleUpdate
from thingcloud.auth.permissions import (
    Access,
    AppPermissions,
    Principal,
    check_device,
    check_user,
    has_granted,
)
from thingcloud.errors import ApiError, FieldError, Forbidden, NotFound, ValidationFailed
from thingcloud.ids import new_id
from thingcloud.runtime import Runtime

RULES_CHANGED = "rules.changed"
SCOPES = ("thisApplication", "allApplications")
LIST_SCOPES = ("thisApplication", "allApplications", "otherApplications")
NAME_MAX, DESCRIPTION_MAX = 64, 1400
OPERATOR_WORDS = {
    "=": "is equal to",
    "!=": "is not equal to",
    "<": "is less than",
    "<=": "is less than or equal to",
    ">": "is more than",
    ">=": "is more than or equal to",
    "contains": "contains",
    "does not contain": "does not contain",
}


def lookup(rt: Runtime) -> Lookup:
    async def device_manifest(did: str) -> Any:
        try:
            device = await rt.devices.get(did)
            return device.dtid, await manifest_for(rt, device)
        except NotFound:
            return None

    async def type_manifest(dtid: str) -> Any:
        try:
            return await devicetypes.manifest(rt, dtid)
        except NotFound:
            return None

    return Lookup(device_manifest, type_manifest)


async def compile_body(rt: Runtime, body: Any) -> Program:
    return await compile_rule(body, lookup(rt))


def to_rule(row: Any) -> Rule:
    return Rule(
        id=row["id"],
        uid=row["uid"],
        aid=row["aid"],
        name=row["name"],
        description=row["description"],
        rule=row["body"],
        enabled=row["enabled"],
        languageVersion=row["language_version"],
        index=row["index"],
        isTestable=row["is_testable"],
        scope=row["scope"],
        owner=row["owner"],
        createdOn=row["created_on"],
        modifiedOn=row["modified_on"],
        invalidatedOn=row["invalidated_on"],
        error=row["error"] or {},
    )


async def rule_row(rt: Runtime, rule_id: str) -> Any:
    async with rt.db.read() as conn:
        row = (await conn.execute(select(t.rules).where(t.rules.c.id == rule_id))).mappings().first()
    if row is None:
        raise NotFound(f"Rule {rule_id} not found")
    return row


async def visible_rule(rt: Runtime, principal: Principal, rule_id: str, access: Access = Access.READ) -> Any:
    """The rule, if the caller may see it (404 unknown, 403 someone else's or another app's)."""
    if principal.kind == "device":
        raise Forbidden("Rules are managed with a user or application token")
    row = await rule_row(rt, rule_id)
    if principal.kind == "user" and principal.uid != row["uid"]:
        raise Forbidden.missing("rule", [rule_id])
    if principal.kind == "app" and not await has_granted(rt, row["uid"], str(principal.aid)):
        raise Forbidden.missing("rule", [rule_id])
    if row["scope"] == "thisApplication" and row["aid"] != principal.aid:
        raise Forbidden.missing("rule", [rule_id])
    if access == Access.WRITE and access.scope not in principal.scope:
        raise Forbidden.missing("rule", [rule_id])
    return row


async def check_program(rt: Runtime, principal: Principal, program: Program, body: Any) -> None:
    """READ on what the rule reads, WRITE on what it sends to (403 naming the first refused)."""
    app = principal.app or AppPermissions()
    reads = set(program.source_devices)
    writes: set[str] = set()
    for action in program.actions:
        if action.target.ddid is not None:
            writes.add(action.target.ddid)
    for did in sorted(program.devices - writes - reads):
        reads.add(did)  # valueFrom devices
    for did in sorted(reads):
        await check_device(rt, principal, (await rt.devices.get(did)).as_row(), Access.READ)
    for did in sorted(writes):
        await check_device(rt, principal, (await rt.devices.get(did)).as_row(), Access.WRITE)
    for cond in program.conditions:
        if cond.source.dtid and not app.on_device_type(cond.source.dtid, Access.READ):
            raise Forbidden.missing("device_type", [cond.source.dtid])
    for action in program.actions:
        if action.target.dtid and not app.on_device_type(action.target.dtid, Access.WRITE):
            raise Forbidden.missing("device_type", [action.target.dtid])


async def describe(rt: Runtime, program: Program) -> str:
    """The generated description: ``IF <device> <field> <operator> <value>\\nTHEN send to ...``."""

    async def device_name(did: str) -> str:
        async with rt.db.read() as conn:
            name = await conn.scalar(select(t.devices.c.name).where(t.devices.c.id == did))
        return str(name or did)

    parts = []
    for cond in program.conditions:
        if cond.schedule is not None:
            parts.append(f"datetime is {cond.schedule.text}")
            continue
        who = (
            await device_name(cond.source.sdid)
            if cond.source.sdid
            else f"{cond.source.selector} {cond.source.dtid}"
        )
        text = f"{who} {cond.field} {OPERATOR_WORDS.get(cond.operator, cond.operator)}"
        if cond.operand is not None:
            shown = cond.operand.value if cond.operand.kind == "value" else cond.operand.kind
            text += f" {shown}"
        if cond.duration_ms:
            text += f" for {cond.duration_ms // 1000} seconds"
        parts.append(text)
    sends = []
    for action in program.actions:
        where = (
            await device_name(action.target.ddid)
            if action.target.ddid
            else f"{action.target.selector} {action.target.dtid}"
        )
        sends.append(f"send to {where} action {action.name}")
    return ("IF " + " AND ".join(parts) + "\nTHEN " + " AND ".join(sends))[:DESCRIPTION_MAX]


def text_problems(name: str | None, description: str | None, creating: bool) -> list[FieldError]:
    """``name`` (required on create, 1–64) and ``description`` (≤1400) of a rule or a scene."""
    problems = []
    if name is None and creating:
        problems.append(FieldError("name", ("Required parameter",)))
    elif name is not None and not 1 <= len(name) <= NAME_MAX:
        problems.append(
            FieldError("name", (f"Maximum length {NAME_MAX}",) if name else ("Minimum length 1",))
        )
    if description is not None and len(description) > DESCRIPTION_MAX:
        problems.append(FieldError("description", (f"Maximum length {DESCRIPTION_MAX}",)))
    return problems


def check_fields(name: str | None, description: str | None, scope: str | None, creating: bool) -> None:
    problems = text_problems(name, description, creating)
    if scope is not None and scope not in SCOPES:
        problems.append(FieldError("scope", ("Must be thisApplication or allApplications",)))
    if problems:
        raise ValidationFailed(None, problems)


async def create_rule(rt: Runtime, principal: Principal, user_id: str | None, body: RuleCreate) -> Rule:
    """``POST /rules`` (S66): the owner is ``userId``, the body's ``uid``, or the token's user."""
    if principal.kind == "device":
        raise Forbidden("Rules are managed with a user or application token")
    uid = user_id or body.uid or principal.uid
    if uid is None:
        raise ValidationFailed.field("userId", "Required parameter")
    await check_user(rt, principal, uid, Access.READ)
    check_fields(body.name, body.description, body.scope, creating=True)
    if body.rule is None:
        raise ValidationFailed("Invalid rule", [FieldError("rule", ("Required parameter",))])
    program = await compile_body(rt, body.rule)
    await check_program(rt, principal, program, body.rule)
    now = rt.clock.now_ms()
    description = body.description if body.description is not None else await describe(rt, program)
    rule_id = new_id()
    async with rt.db.write() as conn:
        top = await conn.scalar(select(func.max(t.rules.c.index)).where(t.rules.c.uid == uid))
        await conn.execute(
            t.rules.insert().values(
                id=rule_id,
                uid=uid,
                aid=principal.aid,
                name=body.name,
                description=description,
                body=body.rule,
                enabled=True if body.enabled is None else body.enabled,
                language_version=LANGUAGE_VERSION,
                index=(top or 0) + 1,
                scope=body.scope or "thisApplication",
                owner="user" if principal.kind == "user" else "application",
                is_testable=program.is_testable,
                count_apply=0,
                last_apply=None,
                invalidated_on=None,
                error=None,
                created_on=now,
                modified_on=now,
            )
        )
        row = (await conn.execute(select(t.rules).where(t.rules.c.id == rule_id))).mappings().one()
        await schedules.plan(rt, conn, row, program)
    await announce(rt, rule_id)
    return to_rule(await rule_row(rt, rule_id))


async def update_rule(rt: Runtime, principal: Principal, rule_id: str, body: RuleUpdate) -> Rule:
    """``PUT /rules/{ruleId}`` (S67): a new body is compiled and checked like on create, and clears
    the rule's condition state (the conditions may have changed meaning)."""
    row = await visible_rule(rt, principal, rule_id, Access.WRITE)
    if body.id is not None and body.id != rule_id:
        raise ValidationFailed.field(
            "id", f'The rule identifier "{body.id}" does not match with the URL parameter "{rule_id}"'
        )
    check_fields(body.name, body.description, body.scope, creating=False)
    changes: dict[str, Any] = {}
    if body.rule is not None:
        program = await compile_body(rt, body.rule)
        await check_program(rt, principal, program, body.rule)
        changes.update(body=body.rule, is_testable=program.is_testable, invalidated_on=None, error=None)
        if body.description is None and row["description"] == await _generated(rt, row["body"]):
            changes["description"] = await describe(rt, program)
    for key in ("name", "description", "enabled", "scope"):
        value = getattr(body, key)
        if value is not None:
            changes[key] = value
    if changes:
        changes["modified_on"] = rt.clock.now_ms()
        current = program if "body" in changes else await _compiled_or_none(rt, row["body"])
        async with rt.db.write() as conn:
            await conn.execute(update(t.rules).where(t.rules.c.id == rule_id).values(**changes))
            if "body" in changes:
                await conn.execute(t.rule_states.delete().where(t.rule_states.c.rule_id == rule_id))
            new = (await conn.execute(select(t.rules).where(t.rules.c.id == rule_id))).mappings().one()
            if current is not None:
                await schedules.plan(rt, conn, new, current)
        await announce(rt, rule_id)
    return to_rule(await rule_row(rt, rule_id))


async def _compiled_or_none(rt: Runtime, body: Any) -> Program | None:
    try:
        return await compile_body(rt, body)
    except ApiError:
        return None


async def _generated(rt: Runtime, body: Any) -> str | None:
    try:
        return await describe(rt, await compile_body(rt, body))
    except ApiError:
        return None


async def delete_rule(rt: Runtime, principal: Principal, rule_id: str) -> Rule:
    row = await visible_rule(rt, principal, rule_id, Access.WRITE)
    async with rt.db.write() as conn:
        await conn.execute(t.rules.delete().where(t.rules.c.id == rule_id))
    await announce(rt, rule_id)
    return to_rule(row)


async def get_rule(rt: Runtime, principal: Principal, rule_id: str) -> Rule:
    return to_rule(await visible_rule(rt, principal, rule_id))


async def list_user_rules(
    rt: Runtime,
    principal: Principal,
    uid: str,
    *,
    exclude_disabled: bool = False,
    owner: str | None = None,
    scope: str | None = None,
    count: int | None = None,
    offset: int | None = None,
) -> tuple[list[Rule], int, int]:
    """``GET /users/{uid}/rules`` (S8): the user's rules visible to the token's application."""
    if principal.kind == "device":
        raise Forbidden("Rules are managed with a user or application token")
    limit, offset = page_bounds(count, offset)
    await check_user(rt, principal, uid, Access.READ)
    scopes = [s.strip() for s in (scope or "allApplications,thisApplication").split(",") if s.strip()]
    if not scopes or any(s not in LIST_SCOPES for s in scopes):
        raise ValidationFailed.field("scope", f"Must be a comma list of {', '.join(LIST_SCOPES)}")
    if owner is not None and owner not in ("user", "application"):
        raise ValidationFailed.field("owner", "Must be user or application")
    r = t.rules.c
    mine = r.aid == principal.aid
    visible = []
    if "thisApplication" in scopes:
        visible.append(mine)
    if "allApplications" in scopes:
        visible.append(r.scope == "allApplications")
    if "otherApplications" in scopes:
        visible.append((r.scope == "allApplications") & (r.aid != principal.aid))
    from sqlalchemy import or_

    where = [r.uid == uid, or_(*visible), (r.scope == "allApplications") | mine]
    if exclude_disabled:
        where.append(r.enabled.is_(True))
    if owner is not None:
        where.append(r.owner == owner)
    async with rt.db.read() as conn:
        total = await conn.scalar(select(func.count()).select_from(t.rules).where(*where)) or 0
        rows = (
            (await conn.execute(select(t.rules).where(*where).order_by(r.index).limit(limit).offset(offset)))
            .mappings()
            .all()
        )
    return [to_rule(row) for row in rows], int(total), offset


async def executions(rt: Runtime, principal: Principal, rule_id: str) -> tuple[int, int | None]:
    row = await visible_rule(rt, principal, rule_id)
    return int(row["count_apply"]), row["last_apply"]


async def testable(rt: Runtime, principal: Principal, rule_id: str) -> bool:
    """S71: is at least one of the rule's actions testable?"""
    row = await visible_rule(rt, principal, rule_id)
    program = await compile_body(rt, row["body"])
    return any(a.is_testable for a in program.actions)


async def test_actions(rt: Runtime, principal: Principal, rule_id: str) -> list[str]:
    """S70: send every action now; 400 and nothing sent if any is not testable or the rule is invalid."""
    row = await visible_rule(rt, principal, rule_id, Access.WRITE)
    if row["invalidated_on"] is not None:
        raise ValidationFailed.field("rule", "The rule is invalid: a device it uses was deleted")
    program = await compile_body(rt, row["body"])
    untestable = [a.index for a in program.actions if not a.is_testable]
    if untestable:
        raise ValidationFailed(
            "Not all actions are testable",
            [FieldError(f"then.{i}", ("Uses valueFrom or a matched selector",)) for i in untestable],
        )
    return await rule_actions.send_all(rt, row, program, matched={}, test=True)


async def announce(rt: Runtime, rule_id: str) -> None:
    await rt.bus.publish(RULES_CHANGED, {"id": rule_id})
