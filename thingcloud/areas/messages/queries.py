"""Reading stored messages and actions back: ``GET /messages`` and ``GET /actions`` in every parameter
combination (S45, S47), ``/messages/last`` (S48) and ``/messages/snapshots`` (S52).

Paging is keyset paging on ``(ts, mid)`` with a snapshot horizon, carried in an opaque signed cursor
(``next``, passed back as ``offset``). The guarantee: a page sequence whose first page was read at T
returns exactly the matching messages whose commit was visible at T, each once, in order, however
many messages (backdated or not) arrive meanwhile. The first page records the newest committed feed
seq S0 (the feed is commit-ordered, see ``thingcloud/feed.py``) and the clock H read after it. Every
message committed before T has ``cts ≤ H`` (cts is taken at ingest, before the commit) and a feed seq
≤ S0; every message committed later has a seq > S0. So a page reads ``cts ≤ H`` and drops the mids
the feed lists after S0 for the devices queried — which also drops a message that was received
before T but committed after it. This holds while those feed entries exist: the feed keeps entries
for ``feed_retention``, so a cursor older than that is refused (400) rather than answered inexactly.
The cursor is bound to its query (devices, range, filter, order) by an HMAC: a tampered cursor, or
one from another query, is a 400.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, func, or_, select

from thingcloud import tables as t
from thingcloud.areas.devices.service import device_row, page_bounds
from thingcloud.areas.devices.status import _nest
from thingcloud.areas.messages.filters import Condition, Predicate, compile_filter, presence_predicate
from thingcloud.areas.messages.service import manifest_for
from thingcloud.areas.messages.writer import ACTION_KEYS, MESSAGE_KEYS
from thingcloud.auth.permissions import Access, Principal, check_device
from thingcloud.errors import Forbidden, NotFound, ValidationFailed
from thingcloud.runtime import Runtime

DAY_MS = 86_400_000
MAX_RANGE_MS = 31 * DAY_MS  # REFERENCE.md S45 [INF limit: 31 days]
MAX_SDIDS = 100
SCAN_CHUNK = 500


@dataclass(frozen=True)
class Stream:
    """Messages or actions: their table, device column and feed kind."""

    table: Table
    device_column: str
    feed_kind: str
    keys: tuple[str, ...]


MESSAGES = Stream(t.messages, "sdid", "message", MESSAGE_KEYS)
ACTIONS = Stream(t.actions, "ddid", "action", ACTION_KEYS)


@dataclass(frozen=True)
class Query:
    """One paged query: which devices, which range, which messages of it, in which order."""

    stream: Stream
    dids: tuple[str, ...]
    start: int
    end: int
    order: str
    identity: str  # what a cursor is bound to
    predicate: Predicate | None = None
    condition: Condition = None  # the predicate's SQL pre-filter (filters.py): rows failing it never match


@dataclass(frozen=True)
class Cursor:
    horizon_cts: int
    horizon_seq: int
    ts: int | None = None
    mid: str | None = None


# --- parameters ---------------------------------------------------------------------------------------


def parse_order(order: str | None) -> str:
    value = (order or "asc").lower()
    if value not in ("asc", "desc"):
        raise ValidationFailed.field("order", "Must be 'asc' or 'desc'")
    return value


def parse_count(count: int | None) -> int:
    """Clamped to [1, 100] like every list of this server (REFERENCE.md §2.3)."""
    return page_bounds(count, None)[0]


def parse_range(start: int | None, end: int | None, limit_ms: int) -> tuple[int, int]:
    missing = [name for name, v in (("startDate", start), ("endDate", end)) if v is None]
    if missing:
        raise ValidationFailed.field(missing[0], "Required parameter")
    assert start is not None and end is not None
    if start < 0 or end < 0:
        raise ValidationFailed.field("startDate" if start < 0 else "endDate", "Minimum value 0")
    if start > end:
        raise ValidationFailed.field("endDate", "endDate must not be before startDate")
    if end - start > limit_ms:
        raise ValidationFailed.field("endDate", f"Maximum range {limit_ms // DAY_MS} days")
    return start, end


def parse_sdids(text: str | None, name: str = "sdids") -> list[str]:
    listed = list(dict.fromkeys(d.strip() for d in (text or "").split(",") if d.strip()))
    if not listed:
        raise ValidationFailed.field(name, "Required parameter")
    if len(listed) > MAX_SDIDS:
        raise ValidationFailed.field(name, f"Maximum {MAX_SDIDS} device ids")
    return listed


async def readable_device(rt: Runtime, principal: Principal, did: str) -> dict[str, Any]:
    """The device row, after the one permission check (404 unknown, 403 not readable)."""
    row = await device_row(rt, did)
    await check_device(rt, principal, row, Access.READ)
    return row


async def device_manifest(rt: Runtime, did: str) -> Any:
    return await manifest_for(rt, await rt.devices.get(did))


# --- cursors ------------------------------------------------------------------------------------------


def _encode(rt: Runtime, query: Query, cursor: Cursor) -> str:
    body = f"{cursor.horizon_cts}|{cursor.horizon_seq}|{cursor.ts}|{cursor.mid}"
    signature = rt.box.sign(f"cursor|{query.identity}|{body}")[:32]
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=") + "." + signature


def _decode(rt: Runtime, query: Query, text: str) -> Cursor:
    invalid = ValidationFailed.field("offset", "Invalid cursor: pass back the 'next' of the same query")
    encoded, _, signature = text.partition(".")
    try:
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise invalid from None
    # The cursor carries the first half of the HMAC (shorter cursors; 128 bits still unforgeable).
    expected = rt.box.sign(f"cursor|{query.identity}|{body}")[:32]
    if not hmac.compare_digest(expected, signature):
        raise invalid
    try:
        cts, seq, ts, mid = body.split("|")
        cursor = Cursor(int(cts), int(seq), int(ts), mid)
    except ValueError:
        raise invalid from None
    if rt.clock.now_ms() - cursor.horizon_cts > rt.settings.feed_retention * 1000:
        raise ValidationFailed.field("offset", "Cursor expired: start the query again")
    return cursor


async def _start(rt: Runtime) -> Cursor:
    """The horizon of a new page sequence: the newest committed feed seq, then the clock."""
    async with rt.db.read() as conn:
        seq = (await conn.execute(select(func.coalesce(func.max(t.feed.c.seq), 0)))).scalar_one()
    return Cursor(rt.clock.now_ms(), int(seq))


# --- paging -------------------------------------------------------------------------------------------


def public(stream: Stream, row: Any) -> dict[str, Any]:
    return {key: row[key] for key in stream.keys}


async def page(rt: Runtime, query: Query, offset: str | None, count: int) -> tuple[list[dict[str, Any]], str]:
    """One page of ``query`` from the cursor ``offset`` (None/"" = a new sequence): (items, next)."""
    cursor = _decode(rt, query, offset) if offset else await _start(rt)
    s = query.stream
    table = s.table
    device = table.c[s.device_column]
    ts, mid = table.c.ts, table.c.mid
    matches: list[Any] = []
    async with rt.db.read() as conn:
        late = {
            r[0]
            for r in await conn.execute(
                select(t.feed.c.ref).where(
                    t.feed.c.seq > cursor.horizon_seq,
                    t.feed.c.kind == s.feed_kind,
                    t.feed.c.did.in_(query.dids),
                )
            )
        }
        key = (cursor.ts, cursor.mid)
        # Without an SQL pre-filter, read ahead: most rows may fail the predicate.
        unfiltered = query.predicate is not None and query.condition is None
        chunk = max(count + 1 + len(late), SCAN_CHUNK if unfiltered else 0)
        while len(matches) <= count:
            where = [
                device.in_(query.dids),
                ts >= query.start,
                ts <= query.end,
                table.c.cts <= cursor.horizon_cts,
            ]
            if query.condition is not None:
                where.append(query.condition)
            if key[0] is not None:
                if query.order == "asc":
                    where.append(or_(ts > key[0], and_(ts == key[0], mid > key[1])))
                else:
                    where.append(or_(ts < key[0], and_(ts == key[0], mid < key[1])))
            ordering = (ts.asc(), mid.asc()) if query.order == "asc" else (ts.desc(), mid.desc())
            stmt = select(table).where(*where).order_by(*ordering).limit(chunk)
            rows = list((await conn.execute(stmt)).mappings())
            for row in rows:
                key = (row["ts"], row["mid"])
                if row["mid"] in late or (query.predicate and not query.predicate(row["data"])):
                    continue
                matches.append(row)
                if len(matches) > count:
                    break
            if len(rows) < chunk:
                break
    items = [public(s, r) for r in matches[:count]]
    following = ""
    if len(matches) > count:
        last = items[-1]
        following = _encode(
            rt, query, Cursor(cursor.horizon_cts, cursor.horizon_seq, last["ts"], last["mid"])
        )
    return items, following


def envelope(
    query: Query | None,
    items: list[dict[str, Any]],
    count: int,
    offset: str | None,
    following: str,
    **ids: Any,
) -> dict[str, Any]:
    """The message-query envelope (REFERENCE.md §2.2 #4)."""
    return {
        **ids,
        "startDate": query.start if query else None,
        "endDate": query.end if query else None,
        "order": query.order if query else "asc",
        "count": count,
        "size": len(items),
        "offset": offset or "",
        "next": following,
        "data": items,
    }


def _identity(*parts: object) -> str:
    return "\x1f".join("" if p is None else str(p) for p in parts)


# --- GET /messages ------------------------------------------------------------------------------------


async def _by_mid(rt: Runtime, principal: Principal, stream: Stream, mid: str, uid: str | None) -> Any:
    if principal.kind == "app" and not uid:
        raise ValidationFailed.field("uid", "Required parameter")
    async with rt.db.read() as conn:
        row = (await conn.execute(select(stream.table).where(stream.table.c.mid == mid))).mappings().first()
    if row is None or (uid and row["uid"] != uid):
        raise NotFound(f"Message {mid} not found")
    await readable_device(rt, principal, row[stream.device_column])
    return row


async def _user_devices(rt: Runtime, principal: Principal, uid: str) -> tuple[str, ...]:
    """The devices of ``uid`` that the caller may read (403 when it may read none of several)."""
    async with rt.db.read() as conn:
        rows = [
            dict(r) for r in (await conn.execute(select(t.devices).where(t.devices.c.uid == uid))).mappings()
        ]
    readable = []
    for row in rows:
        try:
            await check_device(rt, principal, row, Access.READ)
        except Forbidden:
            continue
        readable.append(row["id"])
    if rows and not readable:
        raise Forbidden.missing("user", [uid])
    return tuple(readable)


async def get_messages(
    rt: Runtime,
    principal: Principal,
    *,
    uid: str | None,
    sdid: str | None,
    sdids: str | None,
    mid: str | None,
    field_presence: str | None,
    filter_text: str | None,
    start: int | None,
    end: int | None,
    order: str | None,
    count: int | None,
    offset: str | None,
) -> dict[str, Any]:
    """``GET /messages`` (S45): by mid; by device and range (+ fieldPresence, + filter); by a list of
    devices and range; by user and range."""
    size = parse_count(count)
    direction = parse_order(order)
    if mid:
        row = await _by_mid(rt, principal, MESSAGES, mid, uid)
        return envelope(None, [public(MESSAGES, row)], size, offset, "", uid=row["uid"], sdid=row["sdid"])
    predicate: Predicate | None = None
    condition: Condition = None
    if sdid:
        device = await readable_device(rt, principal, sdid)
        if field_presence and start is None and end is None:
            first, last = 0, 2**62
        else:
            first, last = parse_range(start, end, MAX_RANGE_MS)
        if filter_text is not None or field_presence:
            manifest = await device_manifest(rt, sdid)
            sqlite = rt.db.is_sqlite
            parts = []
            if filter_text is not None:
                parts.append(compile_filter(filter_text, manifest, sqlite))
            if field_presence:
                parts.append(presence_predicate(field_presence, manifest, sqlite))
            tests = [test for test, _ in parts]
            predicate = tests[0] if len(tests) == 1 else (lambda data: all(test(data) for test in tests))
            known = [c for _, c in parts if c is not None]
            condition = known[0] if len(known) == 1 else and_(*known) if known else None
        query = Query(
            MESSAGES,
            (sdid,),
            first,
            last,
            direction,
            _identity("m", sdid, first, last, direction, filter_text, field_presence),
            predicate,
            condition,
        )
        items, following = await page(rt, query, offset, size)
        return envelope(query, items, size, offset, following, uid=uid or device["uid"], sdid=sdid)
    if filter_text is not None or field_presence:
        raise ValidationFailed.field("sdid", "Required parameter")
    if sdids:
        listed = parse_sdids(sdids)
        for did in listed:
            await readable_device(rt, principal, did)
        first, last = parse_range(start, end, MAX_RANGE_MS)
        query = Query(
            MESSAGES, tuple(listed), first, last, direction, _identity("ms", sdids, first, last, direction)
        )
        items, following = await page(rt, query, offset, size)
        return envelope(query, items, size, offset, following, uid=uid, sdids=",".join(listed))
    owner = uid or (principal.uid if principal.kind == "user" else None)
    if owner is None or (start is None and end is None and not uid):
        raise ValidationFailed.field("sdid", "Required parameter: sdid, sdids, mid or uid")
    first, last = parse_range(start, end, MAX_RANGE_MS)
    dids = await _user_devices(rt, principal, owner)
    query = Query(MESSAGES, dids, first, last, direction, _identity("mu", owner, first, last, direction))
    items, following = await page(rt, query, offset, size) if dids else ([], "")
    return envelope(query, items, size, offset, following, uid=owner)


# --- GET /actions -------------------------------------------------------------------------------------


async def get_actions(
    rt: Runtime,
    principal: Principal,
    *,
    uid: str | None,
    ddid: str | None,
    mid: str | None,
    action: str | None,
    start: int | None,
    end: int | None,
    order: str | None,
    count: int | None,
    offset: str | None,
) -> dict[str, Any]:
    """``GET /actions`` (S47): by mid; by device and range; by action name, device and range."""
    size = parse_count(count)
    direction = parse_order(order)
    if mid:
        row = await _by_mid(rt, principal, ACTIONS, mid, uid)
        return envelope(None, [public(ACTIONS, row)], size, offset, "", uid=row["uid"], ddid=row["ddid"])
    if not ddid:
        raise ValidationFailed.field("ddid", "Required parameter")
    device = await readable_device(rt, principal, ddid)
    first, last = parse_range(start, end, MAX_RANGE_MS)
    predicate: Predicate | None = None
    if action:
        wanted = action.lower()
        predicate = lambda data: any(  # noqa: E731
            isinstance(a, dict) and str(a.get("name", "")).lower() == wanted for a in data.get("actions", [])
        )
    query = Query(
        ACTIONS,
        (ddid,),
        first,
        last,
        direction,
        _identity("a", ddid, first, last, direction, action),
        predicate,
    )
    items, following = await page(rt, query, offset, size)
    return envelope(query, items, size, offset, following, uid=uid or device["uid"], ddid=ddid)


# --- GET /messages/last and /messages/snapshots -------------------------------------------------------


async def _newest(
    rt: Runtime, did: str, count: int, predicate: Predicate | None, condition: Condition = None
) -> list[dict[str, Any]]:
    m = t.messages
    found: list[dict[str, Any]] = []
    key: tuple[int, str] | None = None
    chunk = count if predicate is None else max(count, SCAN_CHUNK)
    async with rt.db.read() as conn:
        while len(found) < count:
            stmt = select(m).where(m.c.sdid == did)
            if condition is not None:
                stmt = stmt.where(condition)
            if key is not None:
                stmt = stmt.where(or_(m.c.ts < key[0], and_(m.c.ts == key[0], m.c.mid < key[1])))
            rows = list(
                (await conn.execute(stmt.order_by(m.c.ts.desc(), m.c.mid.desc()).limit(chunk))).mappings()
            )
            for row in rows:
                key = (row["ts"], row["mid"])
                if predicate is None or predicate(row["data"]):
                    found.append(public(MESSAGES, row))
                    if len(found) == count:
                        break
            if len(rows) < chunk:
                break
    return found


async def last_messages(
    rt: Runtime, principal: Principal, sdids: str | None, count: int | None, field_presence: str | None
) -> dict[str, Any]:
    """``GET /messages/last`` (S48): up to ``count`` newest messages per device, newest first."""
    listed = parse_sdids(sdids)
    size = parse_count(count)
    data: list[dict[str, Any]] = []
    for did in listed:
        await readable_device(rt, principal, did)
    for did in listed:
        predicate, condition = (
            presence_predicate(field_presence, await device_manifest(rt, did), rt.db.is_sqlite)
            if field_presence
            else (None, None)
        )
        data.extend(await _newest(rt, did, size, predicate, condition))
    return {"sdids": ",".join(listed), "count": size, "size": len(data), "data": data}


async def snapshots(rt: Runtime, principal: Principal, sdids: str | None, include_ts: bool) -> dict[str, Any]:
    """``GET /messages/snapshots`` (S52): the last value of every field of each device."""
    listed = parse_sdids(sdids)
    for did in listed:
        await readable_device(rt, principal, did)
    leaves: dict[str, list[Any]] = {did: [] for did in listed}
    snap = t.device_snapshots
    async with rt.db.read() as conn:
        rows = await conn.execute(
            select(snap.c.did, snap.c.path, snap.c.value, snap.c.ts)
            .where(snap.c.did.in_(listed))
            .order_by(snap.c.did, snap.c.path)
        )
        for did, path, value, ts in rows:
            leaves[did].append((path, value, ts))
    data = [{"sdid": did, "data": _nest(leaves[did], include_ts)} for did in listed]
    return {"sdids": ",".join(listed), "size": len(data), "data": data}
