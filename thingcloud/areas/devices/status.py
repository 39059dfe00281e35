"""Device status and presence (S20–S22, §5.1): availability, last message/action times, connection
state, and the snapshot (last value of every field).

Reads check READ on each device; ``PUT /devices/{did}/status`` needs WRITE (owner, accepted share
recipient, or the device's own token). The writers ``write_status`` and ``write_snapshot`` take an
open connection so that ingest and the device channels can update status inside their own
transactions (with the message rows they store); ``set_availability`` is the REST entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import case, select
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import tables as t
from thingcloud.areas.devices.schemas import (
    DeviceStatus,
    DeviceStatusBatch,
    DeviceStatusData,
    Presence,
    PresenceEnvelope,
)
from thingcloud.areas.devices.service import device_row
from thingcloud.auth.permissions import Access, Principal, check_device
from thingcloud.db import Database
from thingcloud.errors import NotFound, ValidationFailed
from thingcloud.runtime import Runtime

AVAILABILITY = ("online", "offline", "unknown")
MAX_DIDS = 100

_status = t.device_status


async def write_status(
    rt: Runtime,
    conn: AsyncConnection,
    did: str,
    *,
    availability: str | None = None,
    connected: bool | None = None,
    last_message_ts: int | None = None,
    last_action_ts: int | None = None,
) -> None:
    """Upsert the status row of ``did``; ``None`` leaves a column as it is. Message and action times
    only move forward, so a late (out-of-order) message never makes the status look older."""
    now = rt.clock.now_ms()
    values: dict[str, Any] = {"did": did, "modified_on": now}
    changes: dict[str, Any] = {"modified_on": now}
    if availability is not None:
        values["availability"] = changes["availability"] = availability
        if availability == "online":
            values["last_time_online"] = changes["last_time_online"] = now
    if connected is not None:
        values["connected"] = changes["connected"] = connected
        values["last_seen_on"] = changes["last_seen_on"] = now
        if connected:
            values["last_time_online"] = changes["last_time_online"] = now
    for column, ts in (("last_message_ts", last_message_ts), ("last_action_ts", last_action_ts)):
        if ts is not None:
            values[column] = ts
            changes[column] = _forward(_status.c[column], ts)
    stmt = rt.db.upsert(_status).values(**values)
    await conn.execute(stmt.on_conflict_do_update(index_elements=[_status.c.did], set_=changes))


async def write_snapshot(
    rt: Runtime, conn: AsyncConnection, did: str, leaves: Mapping[str, tuple[Any, int]]
) -> None:
    """Record the latest value of each dotted field path (``{"state.temp": (21.5, ts)}``); a value
    older than the stored one is ignored."""
    await write_snapshots(rt, conn, {(did, path): leaf for path, leaf in leaves.items()})


async def write_snapshots(
    rt: Runtime, conn: AsyncConnection, leaves: Mapping[tuple[str, str], tuple[Any, int]]
) -> None:
    """``write_snapshot`` for many devices in one statement (ingest's group commit). Each (device,
    path) must appear once: the caller keeps the newest value of a batch."""
    if leaves:
        await conn.execute(snapshot_upsert(rt.db), snapshot_rows(leaves))


def snapshot_upsert(db: Database) -> Any:
    """The snapshot statement: a value older than the stored one is ignored. Also compiled for the
    SQLite ingest writer (``areas/messages/sqlite_writer.py``), so both paths share one statement."""
    snap = t.device_snapshots
    stmt = db.upsert(snap)
    return stmt.on_conflict_do_update(
        index_elements=[snap.c.did, snap.c.path],
        set_={"value": stmt.excluded.value, "ts": stmt.excluded.ts},
        where=snap.c.ts <= stmt.excluded.ts,
    )


def snapshot_rows(leaves: Mapping[tuple[str, str], tuple[Any, int]]) -> list[dict[str, Any]]:
    return [
        {"did": did, "path": path, "value": value, "ts": ts} for (did, path), (value, ts) in leaves.items()
    ]


async def record_activity(
    rt: Runtime, conn: AsyncConnection, activity: Mapping[str, tuple[int | None, int | None]]
) -> None:
    """Ingest's status update for many devices at once: ``{did: (last_message_ts, last_action_ts)}``.
    A device that sent a message becomes available (online, seen now); one that was only sent an
    action is not heard from, so only its ``last_action_ts`` moves. Times only move forward, as in
    ``write_status``; the connection state is left to the device channels."""
    if activity:
        await conn.execute(activity_upsert(rt.db), activity_rows(rt.clock.now_ms(), activity))


def activity_rows(now: int, activity: Mapping[str, tuple[int | None, int | None]]) -> list[dict[str, Any]]:
    return [
        {
            "did": did,
            "availability": "unknown" if message_ts is None else "online",
            "connected": False,
            "last_message_ts": message_ts,
            "last_action_ts": action_ts,
            "last_time_online": None if message_ts is None else now,
            "last_seen_on": None if message_ts is None else now,
            "modified_on": now,
        }
        for did, (message_ts, action_ts) in sorted(activity.items())  # a fixed lock order, as above
    ]


def activity_upsert(db: Database) -> Any:
    """The statement behind ``record_activity`` (also compiled for the SQLite ingest writer)."""
    stmt = db.upsert(_status)
    excluded = stmt.excluded
    heard = excluded.last_message_ts.is_not(None)
    changes = {
        "availability": case((heard, excluded.availability), else_=_status.c.availability),
        "last_time_online": case((heard, excluded.last_time_online), else_=_status.c.last_time_online),
        "last_seen_on": case((heard, excluded.last_seen_on), else_=_status.c.last_seen_on),
        "modified_on": excluded.modified_on,
        "last_message_ts": _forward(_status.c.last_message_ts, excluded.last_message_ts),
        "last_action_ts": _forward(_status.c.last_action_ts, excluded.last_action_ts),
    }
    return stmt.on_conflict_do_update(index_elements=[_status.c.did], set_=changes)


def _forward(current: Any, new: Any) -> Any:
    """The newer of two times; a NULL ``new`` keeps ``current``."""
    return case((current.is_(None) | (current < new), new), else_=current)


def _nest(rows: list[Any], with_ts: bool) -> dict[str, Any]:
    """Dotted paths → nested objects, as the manifest nests its groups."""
    tree: dict[str, Any] = {}
    for path, value, ts in rows:
        *groups, leaf = path.split(".")
        node = tree
        for group in groups:
            child = node.setdefault(group, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[leaf] = {"value": value, "ts": ts} if with_ts else value
    return tree


def availability(rt: Runtime, row: Any) -> str:
    """A device that is not connected (HTTP-only) and has been silent for ``http_offline_after``
    seconds is offline, whatever was last recorded; computed when read, so it is exact."""
    if row is None:
        return "unknown"
    recorded = str(row["availability"])
    if recorded == "online" and not row["connected"]:
        silent_since = row["last_seen_on"] or row["last_time_online"] or 0
        if rt.clock.now_ms() - silent_since > rt.settings.http_offline_after * 1000:
            return "offline"
    return recorded


async def _statuses(
    rt: Runtime, dids: list[str], include_snapshot: bool, with_ts: bool
) -> dict[str, DeviceStatus]:
    async with rt.db.read() as conn:
        rows = {
            r["did"]: r
            for r in (await conn.execute(select(_status).where(_status.c.did.in_(dids)))).mappings()
        }
        snapshots: dict[str, list[Any]] = {did: [] for did in dids}
        if include_snapshot:
            snap = t.device_snapshots
            found = await conn.execute(
                select(snap.c.did, snap.c.path, snap.c.value, snap.c.ts)
                .where(snap.c.did.in_(dids))
                .order_by(snap.c.did, snap.c.path)
            )
            for did, path, value, ts in found:
                snapshots[did].append((path, value, ts))
    result: dict[str, DeviceStatus] = {}
    for did in dids:
        row = rows.get(did)
        data = DeviceStatusData(
            lastMessageTs=row["last_message_ts"] if row else None,
            lastActionTs=row["last_action_ts"] if row else None,
            lastTimeOnline=row["last_time_online"] if row else None,
            availability=availability(rt, row),
            snapshot=_nest(snapshots[did], with_ts) if include_snapshot else None,
        )
        result[did] = DeviceStatus(did=did, data=data)
    return result


async def get_status(
    rt: Runtime, principal: Principal, did: str, include_snapshot: bool, with_ts: bool
) -> DeviceStatus:
    await check_device(rt, principal, await device_row(rt, did), Access.READ)
    return (await _statuses(rt, [did], include_snapshot or with_ts, with_ts))[did]


def parse_dids(dids: str | None) -> list[str]:
    """A comma list of 1–100 device ids, duplicates dropped, order kept."""
    listed = list(dict.fromkeys(d.strip() for d in (dids or "").split(",") if d.strip()))
    if not listed:
        raise ValidationFailed.field("dids", "Required parameter")
    if len(listed) > MAX_DIDS:
        raise ValidationFailed.field("dids", f"Maximum {MAX_DIDS} device ids")
    return listed


async def get_statuses(
    rt: Runtime, principal: Principal, dids: str | None, include_snapshot: bool, with_ts: bool
) -> DeviceStatusBatch:
    """``GET /devices/status`` (S21). All or nothing: an unknown id answers 404 and an id the caller
    may not read answers 403 for the whole call, so a batch never reveals what a single call hides."""
    listed = parse_dids(dids)
    for did in listed:
        try:
            row = await device_row(rt, did)
        except NotFound:
            raise NotFound(f"Device {did} not found") from None
        await check_device(rt, principal, row, Access.READ)
    found = await _statuses(rt, listed, include_snapshot or with_ts, with_ts)
    items = [found[did] for did in listed]
    return DeviceStatusBatch(data=items, total=len(items), offset=0, count=len(items))


async def set_availability(
    rt: Runtime, principal: Principal, did: str, availability: str | None
) -> DeviceStatus:
    """``PUT /devices/{did}/status`` (S22)."""
    if availability is None:
        raise ValidationFailed.field("availability", "Required parameter")
    if availability not in AVAILABILITY:
        raise ValidationFailed.field("availability", "Must be online, offline or unknown")
    row = await device_row(rt, did)
    await check_device(rt, principal, row, Access.WRITE)
    async with rt.db.write() as conn:
        await write_status(rt, conn, did, availability=availability)
    # uid/dtid/aid: the /events frame of the change carries them (REFERENCE.md §5.2).
    event = {"did": did, "availability": availability, "uid": row["uid"], "dtid": row["dtid"]}
    await rt.bus.publish("device.status", {**event, "aid": principal.aid})
    return (await _statuses(rt, [did], False, False))[did]


async def get_presence(rt: Runtime, principal: Principal, did: str) -> PresenceEnvelope:
    """``GET /devices/{did}/presence``: whether a channel holds the device's connection now."""
    await check_device(rt, principal, await device_row(rt, did), Access.READ)
    async with rt.db.read() as conn:
        row = (
            (
                await conn.execute(
                    select(_status.c.connected, _status.c.last_seen_on).where(_status.c.did == did)
                )
            )
            .mappings()
            .first()
        )
    presence = Presence(
        connected=bool(row["connected"]) if row else False, lastSeenOn=row["last_seen_on"] if row else None
    )
    return PresenceEnvelope(sdid=did, data=presence)
