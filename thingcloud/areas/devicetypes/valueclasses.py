"""Value classes of manifest fields and how a message value is coerced to each (REFERENCE.md §3.6.3).

One small function per ``valueClass`` (``String``, ``Boolean``, ``Integer``, ``Long``, ``Double``,
``Float``): numeric text becomes a number, ``"true"``/``1`` a boolean, and out-of-range or non-numeric
values raise ``ValueInvalid`` carrying the user-facing reason. ``manifests`` picks the coercer of each
field once, when a manifest is compiled, so ingest calls it directly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Final

VALUE_CLASSES: Final = ("String", "Boolean", "Integer", "Long", "Double", "Float")
# Authors (and Java tooling) also write "java.lang.Double" or "double": accept them, store the short name.
VALUE_CLASS_ALIASES: Final = {
    alias: name for name in VALUE_CLASSES for alias in (name.lower(), f"java.lang.{name}".lower())
}
_INT_RE: Final = re.compile(r"[+-]?\d+")
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,4})?")

TEXT_ONLY: Final = "Text field only"
NUMERIC_ONLY: Final = "Numeric field only"
BOOLEAN_ONLY: Final = "Boolean field only"
WHOLE_ONLY: Final = "Whole number only"
OBJECT_EXPECTED: Final = "JSON object expected"


class ValueInvalid(Exception):
    """A value that cannot be coerced; carries the user-facing reason (cheap: raised only on bad input)."""


def _to_string(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return repr(value)
    raise ValueInvalid(TEXT_ONLY)


_BOOLEAN_TEXT: Final = {"true": True, "1": True, "false": False, "0": False}


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and (found := _BOOLEAN_TEXT.get(value.strip().lower())) is not None:
        return found
    raise ValueInvalid(BOOLEAN_ONLY)


def _number(value: object) -> int | float | Decimal:
    """A JSON number, or numeric text as int (exact) or Decimal; bools, NaN and other text are not numbers."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:  # NaN != NaN
        return value
    if isinstance(value, str) and len(text := value.strip()) <= 64:  # no 10,000-digit parsing
        if _INT_RE.fullmatch(text):
            return int(text)
        if _NUMBER_RE.fullmatch(text):
            return Decimal(text)
    raise ValueInvalid(NUMERIC_ONLY)


def _integral(value: object, low: int, high: int) -> int:
    number = _number(value)
    if number > high:
        raise ValueInvalid(f"Maximum value {high}")
    if number < low:
        raise ValueInvalid(f"Minimum value {low}")
    if isinstance(number, int):
        return number
    if number != int(number):
        raise ValueInvalid(WHOLE_ONLY)
    return int(number)


def _real(value: object, limit: float) -> float:
    number = _number(value)
    try:
        result = float(number)
    except OverflowError:  # an int beyond any double
        result = math.inf if number > 0 else -math.inf
    if result > limit:
        raise ValueInvalid(f"Maximum value {limit!r}")
    if result < -limit:
        raise ValueInvalid(f"Minimum value {-limit!r}")
    return result


_INT32, _INT64 = 2**31, 2**63
_FLOAT32_MAX = 3.4028234663852886e38
COERCERS: Final[Mapping[str, Callable[[object], object]]] = MappingProxyType(
    {
        "String": _to_string,
        "Boolean": _to_bool,
        "Integer": lambda v: _integral(v, -_INT32, _INT32 - 1),
        "Long": lambda v: _integral(v, -_INT64, _INT64 - 1),
        "Double": lambda v: _real(v, 1.7976931348623157e308),
        "Float": lambda v: _real(v, _FLOAT32_MAX),
    }
)


def group_coercer(value: object) -> object:  # groups are walked, never coerced
    raise ValueInvalid(OBJECT_EXPECTED)


def value_class_of(raw: object) -> str | None:
    """The canonical name of an authored ``valueClass`` (``java.lang.double`` → ``Double``), or None."""
    return VALUE_CLASS_ALIASES.get(raw.strip().lower()) if isinstance(raw, str) else None
