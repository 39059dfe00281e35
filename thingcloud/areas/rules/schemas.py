"""Request and response models of the rules API (REFERENCE.md §3.8, §4.11, S8) and its extensions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Rule(BaseModel):
    """SDK ``OutputRule``: every field it declares, ``null`` when unknown."""

    id: str
    uid: str
    aid: str | None = None
    name: str
    description: str
    rule: dict[str, Any]
    enabled: bool
    languageVersion: int
    index: int
    isTestable: bool
    scope: str
    owner: str
    createdOn: int
    modifiedOn: int
    invalidatedOn: int | None = None
    error: dict[str, Any] = Field(default_factory=dict)
    warning: dict[str, Any] | None = None


class RuleEnvelope(BaseModel):
    data: Rule


class RulesEnvelope(BaseModel):
    data: list[Rule]
    total: int
    offset: int
    count: int


class RuleCreate(BaseModel):
    """``RuleCreationInfo``; ``rule`` is checked by the rule language, not here, to report JSON paths."""

    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    description: str | None = None
    rule: Any = None
    enabled: bool | None = None
    scope: str | None = None
    uid: str | None = None


class RuleUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    name: str | None = None
    description: str | None = None
    rule: Any = None
    enabled: bool | None = None
    scope: str | None = None
    uid: str | None = None


class Executions(BaseModel):
    countApply: int
    lastApply: int | None = None


class ExecutionsEnvelope(BaseModel):
    data: Executions


class Testable(BaseModel):
    testable: bool


class TestableEnvelope(BaseModel):
    data: Testable


class ActionsSent(BaseModel):
    ruleId: str
    actionsSent: int
    mids: list[str]


class ActionsSentEnvelope(BaseModel):
    data: ActionsSent


class TraceEntry(BaseModel):
    """One evaluation of the rule: what caused it, each condition's value and result, the outcome."""

    at: int
    cause: str
    mid: str | None = None
    sdid: str | None = None
    conditions: list[dict[str, Any]]
    fired: bool
    reason: str
    actions: list[dict[str, Any]] = Field(default_factory=list)


class TraceEnvelope(BaseModel):
    data: list[TraceEntry]
    total: int


class ErrorBody(BaseModel):
    error: dict[str, Any]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of the error answers a route documents, in the ARTIK error format (§2.5)."""
    text = {
        400: 'Validation error: 4001 "Invalid rule" with the JSON path of each bad element',
        401: "Missing or invalid token",
        403: "Not the caller's rule (or another application's), or missing READ/WRITE on a device",
        404: "Unknown rule or user",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


class DryRunRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    startDate: int | None = None
    endDate: int | None = None


class DryRunFiring(BaseModel):
    ts: int
    mid: str | None = None
    cause: str
    actions: list[dict[str, Any]]


class DryRunResult(BaseModel):
    ruleId: str
    startDate: int
    endDate: int
    messages: int
    truncated: bool
    firings: list[DryRunFiring]


class DryRunEnvelope(BaseModel):
    data: DryRunResult
