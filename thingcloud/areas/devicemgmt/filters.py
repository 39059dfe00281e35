"""The property ``filter`` of device-management queries and tasks: ``key=value,key2=value2`` with dot
paths (``serverProperties.enabled=true``, ``deviceProperties.device.timezone=Europe/Paris``,
``systemProperties.availability=online``), all terms ANDed, compiled to one SQL ``SELECT did``.

Stored property leaves carry a canonical text of their value (``match_text``): a filter value is read
as the manifest's type says (``true``/``false``, an integer, a number) and compared in the same
canonical form, so ``random=73`` finds a Double stored as ``73.0``. The first property term is a
range of the ``(dtid, path, match, did)`` index of ``dm_properties`` (already in ``did`` order), every
other term an ``IN`` over the same index; system properties (availability, connection) are answered
from the status rows the device channels keep. A path the manifest does not define is a 400; a filter
that matches no device is an empty result.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, cast

import orjson
from sqlalchemy import ColumnElement, Select, and_, func, not_, or_, select

from thingcloud import tables as t
from thingcloud.areas.devicemgmt.manifest import DEVICE, GROUP_TYPE, SERVER, PropertySpec
from thingcloud.errors import ValidationFailed

MATCH_LENGTH = 200  # longer canonical texts are stored as a digest (``#`` + sha256)
MAX_TERMS = 20
INT_RANGES = {"Integer": (-(2**31), 2**31 - 1), "Long": (-(2**63), 2**63 - 1)}
FILTER_FIELD = "filter"

# System properties a filter may name, with the type of their value.
SYSTEM_FILTERS = {
    "systemProperties.did": "String",
    "systemProperties.availability": "String",
    "systemProperties.connection.connected": "Boolean",
    "systemProperties.lastRegistration": "Long",
}
AVAILABILITIES = ("online", "offline", "unknown")


def match_text(value: Any) -> str:
    """The canonical text of a stored value, as filters compare it."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)
    elif isinstance(value, str):
        text = value
    elif value is None:
        text = "null"
    else:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if len(text) > MATCH_LENGTH:
        return "#" + hashlib.sha256(text.encode()).hexdigest()
    return text


def type_matches(value_type: str, value: Any) -> bool:
    """Does a JSON value have a manifest type?"""
    if value_type == "Boolean":
        return isinstance(value, bool)
    if value_type in INT_RANGES:
        low, high = INT_RANGES[value_type]
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if value_type == "Double":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if value_type == "String":
        return isinstance(value, str)
    return False


def parse_typed(value_type: str, text: str) -> Any:
    """A filter value (text) as a value of ``value_type``; ValueError when it is not one."""
    if value_type == "Boolean":
        lowered = text.strip().lower()
        if lowered not in ("true", "false"):
            raise ValueError(text)
        return lowered == "true"
    if value_type in INT_RANGES:
        number = int(text.strip())
        if not type_matches(value_type, number):
            raise ValueError(text)
        return number
    if value_type == "Double":
        real = float(text.strip())
        if not math.isfinite(real):
            raise ValueError(text)
        return real
    return text


@dataclass(frozen=True)
class Term:
    path: str
    value: Any  # typed as the manifest says


def parse_filter(expr: str | None, specs: dict[str, PropertySpec]) -> list[Term]:
    """``key=value,...`` → terms, checked against the manifest's ``specs``; 400 on any bad term."""
    if expr is None or not expr.strip():
        return []
    terms: list[Term] = []
    if expr.count(",") >= MAX_TERMS:
        raise ValidationFailed.field(FILTER_FIELD, f"Maximum {MAX_TERMS} terms")
    for raw in expr.split(","):
        if not raw.strip():
            continue
        path, sep, text = raw.partition("=")
        path = path.strip()
        if not sep or not path:
            raise ValidationFailed.field(FILTER_FIELD, f"Expected key=value, got '{raw.strip()}'")
        if path in SYSTEM_FILTERS:
            value_type = SYSTEM_FILTERS[path]
        else:
            spec = specs.get(path)
            if spec is None or not path.startswith((SERVER + ".", DEVICE + ".")):
                raise ValidationFailed.field(FILTER_FIELD, f"Unknown property path '{path}'")
            if spec.value_type == GROUP_TYPE:
                raise ValidationFailed.field(FILTER_FIELD, f"'{path}' is a group, not a property")
            value_type = spec.value_type
        try:
            value = parse_typed(value_type, text)
        except ValueError:
            raise ValidationFailed.field(FILTER_FIELD, f"'{path}' takes a {value_type} value") from None
        if path == "systemProperties.availability" and value not in AVAILABILITIES:
            raise ValidationFailed.field(FILTER_FIELD, "availability is online, offline or unknown")
        terms.append(Term(path, value))
    return terms


def _status_dids(where: ColumnElement[bool]) -> Any:
    return select(t.device_status.c.did).where(where)


def term_clause(did: Any, dtid: str, term: Term, now_ms: int, offline_after_s: float) -> ColumnElement[bool]:
    """SQL for one term over a device id column ``did``."""
    if term.path == "systemProperties.did":
        return cast(ColumnElement[bool], did == term.value)
    status = t.device_status.c
    if term.path == "systemProperties.connection.connected":
        connected = did.in_(_status_dids(status.connected.is_(True)))
        return cast(ColumnElement[bool], connected if term.value else not_(connected))
    if term.path == "systemProperties.availability":
        # As ``devices.status.availability`` computes it: an online device that holds no channel
        # connection and has been silent for ``http_offline_after`` seconds reads as offline.
        silent_since = func.coalesce(status.last_seen_on, status.last_time_online, 0)
        fresh = or_(status.connected.is_(True), silent_since >= now_ms - int(offline_after_s * 1000))
        online = and_(status.availability == "online", fresh)
        if term.value == "online":
            return cast(ColumnElement[bool], did.in_(_status_dids(online)))
        if term.value == "offline":
            stale = or_(status.availability == "offline", and_(status.availability == "online", not_(fresh)))
            return cast(ColumnElement[bool], did.in_(_status_dids(stale)))
        return not_(did.in_(_status_dids(status.availability.in_(("online", "offline")))))
    props = t.dm_properties.c
    matched = select(props.did).where(
        props.dtid == dtid, props.path == term.path, props.match == match_text(term.value)
    )
    return cast(ColumnElement[bool], did.in_(matched))


def matching_dids(dtid: str, terms: list[Term], now_ms: int, offline_after_s: float) -> Select[Any]:
    """``SELECT did`` of the devices of ``dtid`` matching every term.

    With a property term, its index range drives the query: property rows carry the device's type
    and go with the device, so the devices table is not needed, and the range is already in ``did``
    order (a page stops after ``count`` index entries, a count reads only the index). Without one,
    the devices of the type are the base."""
    first = next((term for term in terms if term.path not in SYSTEM_FILTERS), None)
    if first is None:
        did: Any = t.devices.c.id
        where: list[ColumnElement[bool]] = [t.devices.c.dtid == dtid]
    else:
        base = t.dm_properties.alias("base")
        did = base.c.did
        where = [base.c.dtid == dtid, base.c.path == first.path, base.c.match == match_text(first.value)]
    where.extend(term_clause(did, dtid, term, now_ms, offline_after_s) for term in terms if term is not first)
    return select(did.label("did")).where(and_(*where))
