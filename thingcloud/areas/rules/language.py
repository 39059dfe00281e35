"""The rule language (REFERENCE.md §3.8.1): parse and validate a rule body into a compiled ``Program``.

``compile_rule`` checks the whole body at once and raises one ``ValidationFailed`` ("Invalid rule",
code 4001) listing every bad element by its JSON path (``if.and.0.field``, ``then.1.action``). Fields
and actions are looked up in the manifests of the devices (or device types, for selectors) the rule
names, through the ``Lookup`` the service passes in, so the language itself never touches the
database. Operators are checked against the field's valueClass; operations (``add``/``sub``/
``concat``) are bounded in depth and size so a hostile body cannot make evaluation expensive.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from thingcloud.areas.devicetypes.manifests import Manifest
from thingcloud.areas.rules.schedules import Schedule, ScheduleInvalid, parse_schedule
from thingcloud.errors import FieldError, ValidationFailed

INVALID_RULE = "Invalid rule"
LANGUAGE_VERSION = 1
MAX_CONDITIONS = 32
MAX_ACTIONS = 32
MAX_OPERAND_DEPTH = 4
MAX_OPERAND_NODES = 32
MAX_DURATION_SECONDS = 30 * 86400

NUMERIC = frozenset({"Integer", "Long", "Double", "Float"})
ALL_OPERATORS = ("=", "!=", "is in message", "is not in message")
ORDER_OPERATORS = ("<", "<=", ">", ">=")
TEXT_OPERATORS = ("contains", "does not contain")
PRESENCE_OPERATORS = frozenset({"is in message", "is not in message"})


def operators_for(value_class: str) -> tuple[str, ...]:
    """The operators a field of this valueClass accepts (§3.8.1)."""
    if value_class == "String":
        return ALL_OPERATORS + ORDER_OPERATORS + TEXT_OPERATORS
    if value_class in NUMERIC:
        return ALL_OPERATORS + ORDER_OPERATORS
    return ALL_OPERATORS


@dataclass(frozen=True, slots=True)
class Operand:
    """``value`` (a constant), ``valueFrom`` (another device's last value) or an operation over operands."""

    kind: str  # "value" | "valueFrom" | "add" | "sub" | "concat"
    value: Any = None
    sdid: str | None = None
    field: str | None = None
    items: tuple[Operand, ...] = ()

    @property
    def is_static(self) -> bool:
        if self.kind == "valueFrom":
            return False
        if self.kind == "value" and isinstance(self.value, dict):
            return all(o.is_static for o in self.value.values())
        return all(o.is_static for o in self.items)


@dataclass(frozen=True, slots=True)
class Source:
    """Whose messages a condition looks at: one device (``sdid``) or devices of a type (selector)."""

    sdid: str | None
    selector: str | None  # "any" | "every" | "matched"
    dtid: str | None


@dataclass(frozen=True, slots=True)
class Condition:
    index: int
    source: Source
    field: str
    value_class: str
    operator: str
    operand: Operand | None
    duration_ms: int | None = None
    accept_update: bool = True
    schedule: Schedule | None = None
    """Set for a scheduled (``datetime``) condition: it holds at the schedule's instants only."""


@dataclass(frozen=True, slots=True)
class ActionTarget:
    ddid: str | None
    selector: str | None  # "every" | "matched"
    dtid: str | None


@dataclass(frozen=True, slots=True)
class RuleAction:
    index: int
    target: ActionTarget
    name: str
    parameters: dict[str, Operand]

    @property
    def is_testable(self) -> bool:
        """Static: no ``matched`` target, no ``valueFrom`` anywhere in its parameters (§3.8.1)."""
        return self.target.selector != "matched" and all(p.is_static for p in self.parameters.values())


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled rule body: what the engine evaluates and what it sends."""

    conditions: tuple[Condition, ...]
    actions: tuple[RuleAction, ...]
    devices: frozenset[str] = field(default_factory=frozenset)
    """Every device id the rule names (sources, valueFrom, targets): deleting one invalidates it."""
    source_devices: frozenset[str] = field(default_factory=frozenset)
    source_types: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_testable(self) -> bool:
        return all(a.is_testable for a in self.actions)

    @property
    def scheduled(self) -> bool:
        """A rule with a schedule fires at its instants only (messages just update condition states)."""
        return any(c.schedule is not None for c in self.conditions)


@dataclass
class Lookup:
    """What compilation needs from the registry, given by the service: a device's type and its
    manifest (None when the device does not exist), a device type's latest manifest."""

    device_manifest: Callable[[str], Awaitable[tuple[str, Manifest] | None]]
    type_manifest: Callable[[str], Awaitable[Manifest | None]]


class _Compiler:
    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self.errors: list[FieldError] = []
        self.devices: set[str] = set()
        self.any_types: set[str] = set()
        self.has_schedule = False

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, (message,)))

    async def manifest_of(self, sdid: str | None, dtid: str | None, path: str) -> Manifest | None:
        if sdid is not None:
            self.devices.add(sdid)
            found = await self.lookup.device_manifest(sdid)
            if found is None:
                self.fail(path, f"Unknown device '{sdid}'")
                return None
            return found[1]
        assert dtid is not None
        manifest = await self.lookup.type_manifest(dtid)
        if manifest is None:
            self.fail(path, f"Unknown device type '{dtid}' (or it has no manifest)")
        return manifest

    def source(
        self, raw: Any, path: str, selectors: tuple[str, ...]
    ) -> tuple[str | None, str | None, str | None]:
        """(sdid, selector, dtid) of a ``sdid``/``ddid`` element; errors recorded at ``path``."""
        if isinstance(raw, str) and raw:
            return raw, None, None
        if isinstance(raw, dict):
            selector, dtid = raw.get("selector"), raw.get("dtid")
            if selector not in selectors:
                self.fail(f"{path}.selector", f"Must be one of: {', '.join(selectors)}")
                return None, None, None
            if not isinstance(dtid, str) or not dtid:
                self.fail(f"{path}.dtid", "Required parameter")
                return None, None, None
            return None, str(selector), dtid
        self.fail(path, "A device id or a selector object is required")
        return None, None, None

    def operand(self, raw: Any, path: str, depth: int = 0, budget: list[int] | None = None) -> Operand | None:
        budget = budget if budget is not None else [MAX_OPERAND_NODES]
        budget[0] -= 1
        if budget[0] < 0:
            if budget[0] == -1:  # reported once, where the limit was crossed
                self.fail(path, f"Operations are limited to {MAX_OPERAND_NODES} operands")
            return None
        if depth > MAX_OPERAND_DEPTH:
            self.fail(path, f"Operations may nest at most {MAX_OPERAND_DEPTH} levels")
            return None
        if not isinstance(raw, dict) or len(raw) != 1:
            self.fail(path, "Exactly one of value, valueFrom, add, sub, concat is required")
            return None
        ((kind, inner),) = raw.items()
        if kind == "value":
            if inner is None:
                self.fail(f"{path}.value", "Required parameter")
                return None
            return Operand("value", value=inner)
        if kind == "valueFrom":
            if not isinstance(inner, dict):
                self.fail(f"{path}.valueFrom", "JSON object expected")
                return None
            sdid, name = inner.get("sdid"), inner.get("field")
            if not isinstance(sdid, str) or not sdid:
                self.fail(f"{path}.valueFrom.sdid", "Required parameter")
                return None
            if not isinstance(name, str) or not name:
                self.fail(f"{path}.valueFrom.field", "Required parameter")
                return None
            return Operand("valueFrom", sdid=sdid, field=name)
        if kind in ("add", "sub", "concat"):
            if not isinstance(inner, list) or not inner:
                self.fail(f"{path}.{kind}", "A non-empty array of operands is required")
                return None
            items = [
                self.operand(item, f"{path}.{kind}.{i}", depth + 1, budget) for i, item in enumerate(inner)
            ]
            if any(i is None for i in items):
                return None
            return Operand(kind, items=tuple(i for i in items if i is not None))
        self.fail(f"{path}.{kind}", "Unknown operand: expected value, valueFrom, add, sub or concat")
        return None

    async def check_value_from(self, operand: Operand | None, path: str) -> None:
        """``valueFrom`` must name a readable field of an existing device."""
        if operand is None:
            return
        if operand.kind == "valueFrom":
            assert operand.sdid is not None and operand.field is not None
            manifest = await self.manifest_of(operand.sdid, None, f"{path}.valueFrom.sdid")
            if manifest is not None:
                spec = manifest.find_field(operand.field)
                if spec is None or spec.is_group:
                    self.fail(f"{path}.valueFrom.field", f"Unknown field '{operand.field}'")
        for i, item in enumerate(operand.items):
            await self.check_value_from(item, f"{path}.{operand.kind}.{i}")

    async def condition(self, raw: Any, index: int, path: str) -> Condition | None:
        if not isinstance(raw, dict):
            self.fail(path, "JSON object expected")
            return None
        if raw.get("transformer") is not None:
            self.fail(f"{path}.transformer", "Machine-learning transformers are not supported by this server")
        if raw.get("field") == "datetime":
            return self.scheduled(raw, index, path)
        sdid, selector, dtid = self.source(raw.get("sdid"), f"{path}.sdid", ("any", "every", "matched"))
        if selector == "any":
            if dtid in self.any_types:
                self.fail(f"{path}.sdid", "Only one 'any' selector per device type in a rule")
            self.any_types.add(str(dtid))
        name = raw.get("field")
        operator = raw.get("operator")
        if not isinstance(name, str) or not name:
            self.fail(f"{path}.field", "Required parameter")
        if not isinstance(operator, str) or not operator:
            self.fail(f"{path}.operator", "Required parameter")
        operand = None
        if operator not in PRESENCE_OPERATORS:
            if raw.get("operand") is None:
                self.fail(f"{path}.operand", "Required parameter")
            else:
                operand = self.operand(raw.get("operand"), f"{path}.operand")
        await self.check_value_from(operand, f"{path}.operand")
        duration_ms, accept_update = self.duration(raw.get("duration"), f"{path}.duration")
        if sdid is None and dtid is None:
            return None
        manifest = await self.manifest_of(sdid, dtid, f"{path}.sdid")
        if manifest is None or not isinstance(name, str) or not isinstance(operator, str):
            return None
        spec = manifest.find_field(name)
        if spec is None or spec.is_group or spec.value_class is None:
            self.fail(f"{path}.field", f"Unknown field '{name}'")
            return None
        if operator not in operators_for(spec.value_class):
            self.fail(
                f"{path}.operator", f"Operator '{operator}' does not apply to a {spec.value_class} field"
            )
            return None
        if operand is not None and operand.kind == "value" and isinstance(operand.value, dict | list):
            self.fail(f"{path}.operand.value", "A condition compares with a single value")
            return None
        return Condition(
            index,
            Source(sdid, selector, dtid),
            spec.path,
            spec.value_class,
            operator,
            operand,
            duration_ms,
            accept_update,
        )

    def scheduled(self, raw: dict[str, Any], index: int, path: str) -> Condition | None:
        if raw.get("operator") != "=":
            self.fail(f"{path}.operator", "A datetime condition uses the '=' operator")
        if raw.get("duration") is not None:
            self.fail(f"{path}.duration", "A datetime condition has no duration")
        if raw.get("sdid") is not None:
            self.fail(f"{path}.sdid", "A datetime condition names no device")
        if self.has_schedule:
            self.fail(f"{path}.field", "Only one datetime condition per rule")
        self.has_schedule = True
        operand = raw.get("operand")
        if not isinstance(operand, dict) or set(operand) != {"value"}:
            self.fail(f"{path}.operand", "A datetime condition needs {'value': <schedule>}")
            return None
        try:
            schedule = parse_schedule(operand["value"])
        except ScheduleInvalid as exc:
            self.fail(f"{path}.operand.value", str(exc))
            return None
        return Condition(index, Source(None, None, None), "datetime", "String", "=", None, schedule=schedule)

    def duration(self, raw: Any, path: str) -> tuple[int | None, bool]:
        if raw is None:
            return None, True
        if not isinstance(raw, dict):
            self.fail(path, "JSON object expected")
            return None, True
        value, accept = raw.get("value"), raw.get("acceptUpdate", True)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DURATION_SECONDS:
            self.fail(f"{path}.value", f"Whole seconds between 1 and {MAX_DURATION_SECONDS}")
            return None, True
        if not isinstance(accept, bool):
            self.fail(f"{path}.acceptUpdate", "Boolean field only")
            return None, True
        return value * 1000, accept

    async def action(self, raw: Any, index: int, path: str) -> RuleAction | None:
        if not isinstance(raw, dict):
            self.fail(path, "JSON object expected")
            return None
        ddid, selector, dtid = self.source(raw.get("ddid"), f"{path}.ddid", ("every", "matched"))
        if selector == "matched" and dtid not in self.any_types:
            self.fail(f"{path}.ddid", "A 'matched' selector needs an 'any' condition on the same device type")
        name = raw.get("action")
        if not isinstance(name, str) or not name:
            self.fail(f"{path}.action", "Required parameter")
        params_raw = raw.get("parameters") or {}
        parameters: dict[str, Operand] = {}
        if not isinstance(params_raw, dict):
            self.fail(f"{path}.parameters", "JSON object expected")
        else:
            for key, value in params_raw.items():
                operand = self.parameter(value, f"{path}.parameters.{key}")
                await self.check_value_from(operand, f"{path}.parameters.{key}")
                if operand is not None:
                    parameters[key] = operand
        if (ddid is None and dtid is None) or not isinstance(name, str) or not name:
            return None
        manifest = await self.manifest_of(ddid, dtid, f"{path}.ddid")
        if manifest is None:
            return None
        try:
            spec = manifest.action(name, f"{path}.action")
            static = {k: v for k, v in parameters.items() if v.kind == "value" and v.is_static}
            # Constant parameters are checked against the manifest now, not when the rule fires.
            manifest.normalize_action(spec.name, {k: _constant(v) for k, v in static.items()}, path)
        except ValidationFailed as exc:
            self.errors.extend(exc.errors)
            return None
        return RuleAction(index, ActionTarget(ddid, selector, dtid), spec.name, parameters)

    async def actions(self, raw: Any, path: str) -> list[RuleAction]:
        """A non-empty list of actions (a rule's ``then``, a scene's ``actions``) at ``path``."""
        actions: list[RuleAction] = []
        if not isinstance(raw, list) or not raw:
            self.fail(path, "A non-empty array of actions is required")
        elif len(raw) > MAX_ACTIONS:
            self.fail(path, f"At most {MAX_ACTIONS} actions")
        else:
            for i, item in enumerate(raw):
                act = await self.action(item, i, f"{path}.{i}")
                if act is not None:
                    actions.append(act)
        return actions

    def parameter(self, raw: Any, path: str) -> Operand | None:
        """A parameter: an operand, whose ``value`` may itself hold named operands (compound parameters)."""
        if isinstance(raw, dict) and set(raw) == {"value"} and isinstance(raw["value"], dict):
            inner = {k: self.parameter(v, f"{path}.value.{k}") for k, v in raw["value"].items()}
            if any(v is None for v in inner.values()):
                return None
            return Operand("value", value=inner)
        return self.operand(raw, path)


def _constant(operand: Operand) -> Any:
    """The plain value of a static ``value`` operand (compound parameters member by member)."""
    if isinstance(operand.value, dict):
        return {k: _constant(v) for k, v in operand.value.items()}
    return operand.value


async def compile_rule(body: Any, lookup: Lookup) -> Program:
    """The compiled form of a rule body, or ValidationFailed("Invalid rule") with every bad path."""
    c = _Compiler(lookup)
    if not isinstance(body, dict):
        raise ValidationFailed(INVALID_RULE, [FieldError("rule", ("JSON object expected",))])
    raw_if, raw_then = body.get("if"), body.get("then")
    listed: list[Any] = []
    prefix = "if.and"
    if isinstance(raw_if, dict) and "and" in raw_if:
        if isinstance(raw_if["and"], list) and raw_if["and"]:
            listed = raw_if["and"]
        else:
            c.fail("if.and", "A non-empty array of conditions is required")
    elif isinstance(raw_if, dict):
        listed, prefix = [raw_if], "if"
    elif raw_if is None:
        c.fail("if", "Required parameter")
    else:
        c.fail("if", "JSON object expected")
    if isinstance(raw_if, dict) and "or" in raw_if:
        c.fail("if.or", "Only AND is supported: create one rule per alternative")
    if len(listed) > MAX_CONDITIONS:
        c.fail(prefix, f"At most {MAX_CONDITIONS} conditions")
        listed = []
    conditions: list[Condition] = []
    for i, raw in enumerate(listed):
        cond = await c.condition(raw, i, f"{prefix}.{i}" if prefix == "if.and" else prefix)
        if cond is not None:
            conditions.append(cond)
    actions = await c.actions(raw_then, "then")
    if c.errors:
        raise ValidationFailed(INVALID_RULE, c.errors)
    return Program(
        tuple(conditions),
        tuple(actions),
        frozenset(c.devices),
        frozenset(x.source.sdid for x in conditions if x.source.sdid),
        frozenset(x.source.dtid for x in conditions if x.source.dtid),
    )


async def compile_actions(raw: Any, lookup: Lookup, path: str, message: str) -> Program:
    """A list of actions alone, checked exactly like a rule's ``then`` (errors at ``<path>.<i>…``):
    the ``Program`` of a Scene, which has no conditions (so a ``matched`` target is refused)."""
    c = _Compiler(lookup)
    actions = await c.actions(raw, path)
    if c.errors:
        raise ValidationFailed(message, c.errors)
    return Program((), tuple(actions), frozenset(c.devices))
