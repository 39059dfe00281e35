"""HTTP routes of rules (S8, S65–S71) and their extensions (trace, dry-run)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Query, Request

from thingcloud.areas.rules import dryrun, service, tracing
from thingcloud.areas.rules.schemas import (
    ActionsSent,
    ActionsSentEnvelope,
    DryRunEnvelope,
    DryRunRequest,
    Executions,
    ExecutionsEnvelope,
    RuleCreate,
    RuleEnvelope,
    RulesEnvelope,
    RuleUpdate,
    Testable,
    TestableEnvelope,
    TraceEnvelope,
    error_responses,
)
from thingcloud.errors import ValidationFailed
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter(prefix="/v1.1", tags=["Rules"])


def user_id_of(request: Request) -> str | None:
    """``userId`` from the query, also in the ``?userId<uid>`` form the ARTIK samples send."""
    for key, value in parse_qsl(request.url.query, keep_blank_values=True):
        if key == "userId" and value:
            return value
        if key.startswith("userId") and len(key) > len("userId") and not value:
            return key[len("userId") :].strip("<>=:")
    return None


@router.get(
    "/users/{uid}/rules",
    response_model=RulesEnvelope,
    summary="Get a user's rules",
    description="The rules visible to the token's application: a flat, offset-paged array. `scope` is a "
    "comma list of thisApplication, allApplications, otherApplications.",
    responses=error_responses(400, 401, 403),
)
async def get_user_rules(
    rt: RuntimeDep,
    caller: Caller,
    uid: str,
    exclude_disabled: bool = Query(False, alias="excludeDisabled"),
    owner: str | None = Query(None, description="user | application"),
    scope: str | None = Query(None, description="Default allApplications,thisApplication"),
    count: int | None = Query(None, description="Page size, 1-100 (default 100)"),
    offset: int | None = Query(None, description="Items to skip (default 0)"),
) -> RulesEnvelope:
    items, total, offset = await service.list_user_rules(
        rt,
        caller,
        uid,
        exclude_disabled=exclude_disabled,
        owner=owner,
        scope=scope,
        count=count,
        offset=offset,
    )
    return RulesEnvelope(data=items, total=total, offset=offset, count=len(items))


@router.get(
    "/rules",
    response_model=RulesEnvelope,
    summary="Get a user's rules (legacy SAMI form)",
    description="Alias of GET /users/{uid}/rules; `uid` defaults to the token's user.",
    responses=error_responses(400, 401, 403),
)
async def get_rules_legacy(
    rt: RuntimeDep,
    caller: Caller,
    uid: str | None = Query(None),
    count: int | None = Query(None),
    offset: int | None = Query(None),
) -> RulesEnvelope:
    owner = uid or caller.uid
    if owner is None:
        raise ValidationFailed.field("uid", "Required parameter")
    items, total, offset = await service.list_user_rules(rt, caller, owner, count=count, offset=offset)
    return RulesEnvelope(data=items, total=total, offset=offset, count=len(items))


@router.post(
    "/rules",
    response_model=RuleEnvelope,
    summary="Create a rule",
    description="The owner is `userId` (query; `?userId<uid>` tolerated), the body's `uid`, or the "
    "token's user. Needs READ on the devices the rule reads and WRITE on those it sends to.",
    responses=error_responses(400, 401, 403, 404),
)
async def create_rule(rt: RuntimeDep, caller: Caller, request: Request, body: RuleCreate) -> RuleEnvelope:
    return RuleEnvelope(data=await service.create_rule(rt, caller, user_id_of(request), body))


@router.get(
    "/rules/{ruleId}",
    response_model=RuleEnvelope,
    summary="Get a rule",
    responses=error_responses(401, 403, 404),
)
async def get_rule(rt: RuntimeDep, caller: Caller, ruleId: str) -> RuleEnvelope:
    return RuleEnvelope(data=await service.get_rule(rt, caller, ruleId))


@router.put(
    "/rules/{ruleId}",
    response_model=RuleEnvelope,
    summary="Update a rule",
    responses=error_responses(400, 401, 403, 404),
)
async def update_rule(rt: RuntimeDep, caller: Caller, ruleId: str, body: RuleUpdate) -> RuleEnvelope:
    return RuleEnvelope(data=await service.update_rule(rt, caller, ruleId, body))


@router.delete(
    "/rules/{ruleId}",
    response_model=RuleEnvelope,
    summary="Delete a rule",
    responses=error_responses(401, 403, 404),
)
async def delete_rule(rt: RuntimeDep, caller: Caller, ruleId: str) -> RuleEnvelope:
    return RuleEnvelope(data=await service.delete_rule(rt, caller, ruleId))


@router.get(
    "/rules/{ruleId}/executions",
    response_model=ExecutionsEnvelope,
    response_model_exclude_none=True,
    summary="Get a rule's execution statistics",
    description="`countApply` firings; `lastApply` (omitted if it never fired).",
    responses=error_responses(401, 403, 404),
)
async def get_executions(rt: RuntimeDep, caller: Caller, ruleId: str) -> ExecutionsEnvelope:
    count, last = await service.executions(rt, caller, ruleId)
    return ExecutionsEnvelope(data=Executions(countApply=count, lastApply=last))


@router.get(
    "/rules/{ruleId}/actions",
    response_model=TestableEnvelope,
    summary="Is at least one of the rule's actions testable?",
    description="An action is testable when it uses no `matched` selector and no `valueFrom`.",
    responses=error_responses(401, 403, 404),
)
async def get_testable(rt: RuntimeDep, caller: Caller, ruleId: str) -> TestableEnvelope:
    return TestableEnvelope(data=Testable(testable=await service.testable(rt, caller, ruleId)))


@router.post(
    "/rules/{ruleId}/actions",
    response_model=ActionsSentEnvelope,
    summary="Test-run the rule's actions",
    description="The actions are really sent, as POST /actions sends them. 400 and nothing sent if any "
    "action is not testable.",
    responses=error_responses(400, 401, 403, 404),
)
async def test_actions(rt: RuntimeDep, caller: Caller, ruleId: str) -> ActionsSentEnvelope:
    mids = await service.test_actions(rt, caller, ruleId)
    return ActionsSentEnvelope(data=ActionsSent(ruleId=ruleId, actionsSent=len(mids), mids=mids))


@router.get(
    "/rules/{ruleId}/trace",
    response_model=TraceEnvelope,
    tags=["Rules (extensions)"],
    openapi_extra={"x-thingcloud-extension": True},
    summary="Recent evaluations of a rule (extension)",
    description="Beyond ARTIK: the newest evaluations first (at most THINGCLOUD_RULE_TRACE_ENTRIES): "
    "what caused each (a message or a duration timer), each condition's value, operand and result, "
    "and whether the rule fired and why (or why not: a condition not holding, the firing-rate limit, "
    "a missed timer, a failed action).",
    responses=error_responses(401, 403, 404),
)
async def get_trace(rt: RuntimeDep, caller: Caller, ruleId: str) -> TraceEnvelope:
    entries = await tracing.recent(rt, caller, ruleId)
    return TraceEnvelope(data=entries, total=len(entries))


@router.post(
    "/rules/{ruleId}/dryrun",
    response_model=DryRunEnvelope,
    tags=["Rules (extensions)"],
    openapi_extra={"x-thingcloud-extension": True},
    summary="Replay stored messages through a rule (extension)",
    description="Beyond ARTIK: replays the stored messages of the rule's source devices between "
    "`startDate` and `endDate` (epoch ms; default the last 24 hours) through the rule, from an empty "
    "state, and answers when it would have fired and with what actions. Nothing is sent or changed. "
    "`valueFrom` operands read today's last values.",
    responses=error_responses(400, 401, 403, 404),
)
async def dry_run(rt: RuntimeDep, caller: Caller, ruleId: str, body: DryRunRequest) -> DryRunEnvelope:
    return DryRunEnvelope(data=await dryrun.replay(rt, caller, ruleId, body.startDate, body.endDate))
