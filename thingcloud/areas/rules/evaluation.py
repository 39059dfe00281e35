"""Evaluating rule conditions and operands (REFERENCE.md §3.8.1): pure functions, no database.

A condition compares the value of one field of a message with its operand, by the field's valueClass:
numbers numerically, strings as text (with ``contains``), booleans as booleans. Operands resolve to a
value through ``resolve``: a constant, another device's last value (``valueFrom``, read through the
``LastValue`` callable the engine passes in), or an operation — ``concat`` casts everything to text,
``add``/``sub`` everything to numbers (non-numeric text counts 0, booleans 1/0).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from thingcloud.areas.rules.language import NUMERIC, Condition, Operand

LastValue = Callable[[str, str], Awaitable[Any]]
MISSING = object()


def field_value(data: Any, path: str) -> Any:
    """The value at a dotted path of a message's data, or ``MISSING``."""
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def as_number(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return 0.0
        return number if math.isfinite(number) else 0.0
    return 0.0


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


async def resolve(operand: Operand, last_value: LastValue) -> Any:
    """The value of an operand now; a compound parameter value resolves member by member."""
    if operand.kind == "value":
        if isinstance(operand.value, dict):
            return {k: await resolve(v, last_value) for k, v in operand.value.items()}
        return operand.value
    if operand.kind == "valueFrom":
        assert operand.sdid is not None and operand.field is not None
        return await last_value(operand.sdid, operand.field)
    values = [await resolve(item, last_value) for item in operand.items]
    if operand.kind == "concat":
        return "".join(as_text(v) for v in values if v is not None)
    numbers = [as_number(v) for v in values]
    result = float(sum(numbers)) if operand.kind == "add" else numbers[0] - sum(numbers[1:])
    return int(result) if result.is_integer() else result


def compare(value_class: str, operator: str, left: Any, right: Any) -> bool:
    """``left`` (the message's value) ``operator`` ``right`` (the operand), by valueClass."""
    if right is None:
        return False  # a valueFrom whose device never sent that field: nothing to compare with
    if value_class in NUMERIC:
        a, b = as_number(left), as_number(right)
    elif value_class == "Boolean":
        a_bool, b_bool = as_bool(left), as_bool(right)
        if a_bool is None or b_bool is None:
            return operator == "!="
        return (a_bool == b_bool) if operator == "=" else (a_bool != b_bool)
    else:
        a_text, b_text = as_text(left), as_text(right)
        if operator == "contains":
            return b_text in a_text
        if operator == "does not contain":
            return b_text not in a_text
        return _ordered(operator, a_text, b_text)
    return _ordered(operator, a, b)


def _ordered(operator: str, a: Any, b: Any) -> bool:
    if operator == "=":
        return bool(a == b)
    if operator == "!=":
        return bool(a != b)
    if operator == "<":
        return bool(a < b)
    if operator == "<=":
        return bool(a <= b)
    if operator == ">":
        return bool(a > b)
    if operator == ">=":
        return bool(a >= b)
    return False


async def evaluate(condition: Condition, data: Any, last_value: LastValue) -> tuple[bool | None, Any, Any]:
    """(result, message value, operand value) of a condition on one message's data; result None when
    the message does not concern the condition (its field is absent and the operator needs it)."""
    value = field_value(data, condition.field)
    if condition.operator == "is in message":
        return value is not MISSING, _shown(value), None
    if condition.operator == "is not in message":
        return value is MISSING, _shown(value), None
    if value is MISSING:
        return None, None, None
    assert condition.operand is not None
    right = await resolve(condition.operand, last_value)
    return compare(condition.value_class, condition.operator, value, right), value, right


def _shown(value: Any) -> Any:
    return None if value is MISSING else value
