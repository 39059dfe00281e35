"""Analytics over stored messages: ``/messages/analytics/aggregates`` (S49),
``/messages/analytics/histogram`` (S50) and ``/messages/presence`` (S51).

Statistics come from ``rollups.stats``: hour and day rollups where they are trusted, SQL over
the raw messages for the rest (SQLAlchemy's JSON path ``as_float`` renders ``JSON_EXTRACT`` on
SQLite and ``#>>`` on PostgreSQL), merged exactly (rollups.py says when a rollup is trusted). The
variance is the population variance (divided by n; the SDK model and the contract do not say which,
and ARTIK's sample shows a variance for a single point of 0). It is computed from M2 = sum((x-mean)²)
per part, merged with Chan's formula, so large values with a small spread keep their digits.
Minute, hour and day buckets are grouped by ``ts - ts % size`` (UTC boundaries, since epoch ms are
UTC); months and years merge day buckets in Python. Empty buckets are omitted.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from thingcloud import tables as t
from thingcloud.areas.messages import rollups
from thingcloud.areas.messages.filters import NUMERIC_CLASSES, field_value
from thingcloud.areas.messages.queries import DAY_MS, device_manifest, readable_device
from thingcloud.areas.messages.writer import month_start
from thingcloud.auth.permissions import Access, Principal, check_device
from thingcloud.errors import ValidationFailed
from thingcloud.runtime import Runtime

MINUTE_MS = 60_000
BUCKET_MS = {"minute": MINUTE_MS, "hour": 3_600_000, "day": DAY_MS}
YEAR_MS = 366 * DAY_MS
HISTOGRAM_LIMITS = {
    "minute": 3_600_000,
    "hour": DAY_MS,
    "day": 31 * DAY_MS,
    "month": 10 * YEAR_MS,
    "year": 10 * YEAR_MS,
}
PRESENCE_LIMITS = {**HISTOGRAM_LIMITS, "month": YEAR_MS}
AGGREGATE_RANGE_MS = 31 * DAY_MS
SETTLE_MS = 60_000  # aggregates count only messages received at least a minute ago (S49)


def _required(name: str, value: Any) -> Any:
    if value is None or value == "":
        raise ValidationFailed.field(name, "Required parameter")
    return value


def _range(start: int | None, end: int | None, limit_ms: int, limit_text: str) -> tuple[int, int]:
    first, last = _required("startDate", start), _required("endDate", end)
    if first < 0 or last < 0:
        raise ValidationFailed.field("startDate" if first < 0 else "endDate", "Minimum value 0")
    if first > last:
        raise ValidationFailed.field("endDate", "endDate must not be before startDate")
    if last - first > limit_ms:
        raise ValidationFailed.field("endDate", f"Maximum range {limit_text}")
    return int(first), int(last)


def _interval(interval: str | None, limits: dict[str, int]) -> str:
    value = str(_required("interval", interval)).lower()
    if value not in limits:
        raise ValidationFailed.field("interval", "Must be one of minute, hour, day, month, year")
    return value


_LIMIT_TEXT = {"minute": "1 hour", "hour": "1 day", "day": "31 days", "month": "10 years", "year": "10 years"}


def bucket_start(ts: int, interval: str) -> int:
    """The UTC start of the ``interval`` containing ``ts``."""
    if interval in BUCKET_MS:
        return ts - ts % BUCKET_MS[interval]
    if interval == "month":
        return month_start(ts)
    year = dt.datetime.fromtimestamp(ts / 1000, tz=dt.UTC).year
    return int(dt.datetime(year, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


async def _numeric_field(rt: Runtime, sdid: str, field: str) -> str:
    spec = (await device_manifest(rt, sdid)).find_field(field)
    if spec is None:
        raise ValidationFailed.field("field", f"Unknown field '{field}'")
    if spec.value_class not in NUMERIC_CLASSES:
        raise ValidationFailed.field("field", "Numeric field only")
    return str(spec.path)


async def aggregates(
    rt: Runtime,
    principal: Principal,
    sdid: str | None,
    field: str | None,
    start: int | None,
    end: int | None,
) -> dict[str, Any]:
    """``GET /messages/analytics/aggregates`` (S49): dates rounded down to the minute, ``start ≤ ts <
    end``, ≤ 31 days, messages received at least a minute ago."""
    did = str(_required("sdid", sdid))
    name = str(_required("field", field))
    first, last = _range(start, end, AGGREGATE_RANGE_MS, "31 days")
    first, last = first - first % MINUTE_MS, last - last % MINUTE_MS
    await readable_device(rt, principal, did)
    path = await _numeric_field(rt, did, name)
    groups = await rollups.stats(rt, did, path, first, last, rt.clock.now_ms() - SETTLE_MS, None)
    stats = groups.get(None, rollups.Stats()).view()
    return {"sdid": did, "startDate": first, "endDate": last, "field": name, "size": 1, "data": [stats]}


async def histogram(
    rt: Runtime,
    principal: Principal,
    sdid: str | None,
    field: str | None,
    start: int | None,
    end: int | None,
    interval: str | None,
) -> dict[str, Any]:
    """``GET /messages/analytics/histogram`` (S50): per UTC bucket of ``start ≤ ts < end``."""
    did = str(_required("sdid", sdid))
    name = str(_required("field", field))
    unit = _interval(interval, HISTOGRAM_LIMITS)
    first, last = _range(start, end, HISTOGRAM_LIMITS[unit], _LIMIT_TEXT[unit])
    await readable_device(rt, principal, did)
    path = await _numeric_field(rt, did, name)
    fixed = BUCKET_MS.get(unit)
    groups = await rollups.stats(rt, did, path, first, last, None, fixed or DAY_MS)
    merged: dict[int, rollups.Stats] = {}
    for day, part in sorted(groups.items(), key=lambda kv: kv[0] or 0):
        merged.setdefault(bucket_start(int(day or 0), unit), rollups.Stats()).merge(part)
    data = [{**acc.view(), "ts": key} for key, acc in sorted(merged.items())]
    return {
        "sdid": did,
        "startDate": first,
        "endDate": last,
        "field": name,
        "interval": unit,
        "size": len(data),
        "data": data,
    }


async def _presence_devices(rt: Runtime, principal: Principal, sdid: str | None) -> list[str]:
    if sdid:
        await readable_device(rt, principal, sdid)
        return [sdid]
    if principal.kind == "device":
        return [str(principal.did)]
    if principal.kind != "user":
        raise ValidationFailed.field("sdid", "Required parameter")
    async with rt.db.read() as conn:
        rows = [
            dict(r)
            for r in (
                await conn.execute(select(t.devices).where(t.devices.c.uid == principal.uid))
            ).mappings()
        ]
    for row in rows:
        await check_device(rt, principal, row, Access.READ)
    return [row["id"] for row in rows]


async def presence(
    rt: Runtime,
    principal: Principal,
    sdid: str | None,
    field_presence: str | None,
    start: int | None,
    end: int | None,
    interval: str | None,
) -> dict[str, Any]:
    """``GET /messages/presence`` (S51): the start of every UTC interval of ``start ≤ ts ≤ end`` that
    holds at least one message (carrying ``fieldPresence`` when given)."""
    unit = _interval(interval, PRESENCE_LIMITS)
    limit_text = "1 year" if unit == "month" else _LIMIT_TEXT[unit]
    first, last = _range(start, end, PRESENCE_LIMITS[unit], limit_text)
    dids = await _presence_devices(rt, principal, sdid)
    m = t.messages
    starts: set[int] = set()
    async with rt.db.read() as conn:
        for did in dids:
            where = [m.c.sdid == did, m.c.ts >= first, m.c.ts <= last]
            if field_presence:
                spec = (await device_manifest(rt, did)).find_field(field_presence)
                if spec is None:
                    if sdid:
                        raise ValidationFailed.field("fieldPresence", f"Unknown field '{field_presence}'")
                    continue
                rows = await conn.execute(select(m.c.ts, m.c.data).where(*where))
                starts.update(
                    bucket_start(ts, unit) for ts, data in rows if field_value(data, spec.path) is not None
                )
                continue
            size = BUCKET_MS.get(unit, DAY_MS)
            bucket = m.c.ts - m.c.ts % size
            buckets = await conn.execute(select(bucket).where(*where).distinct())
            starts.update(bucket_start(int(b), unit) for (b,) in buckets)
    data = [{"startDate": s} for s in sorted(starts)]
    return {
        "sdid": sdid,
        "fieldPresence": field_presence,
        "interval": unit.upper(),
        "startDate": first,
        "endDate": last,
        "size": len(data),
        "data": data,
    }
