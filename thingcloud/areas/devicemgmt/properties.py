"""Device properties of device management (Device Mirror, REFERENCE.md §3.16, S83–S86).

Three kinds, read together as ``{"serverProperties", "systemProperties", "deviceProperties"}``:

* server properties — written by the owner side (S83, deleted by S86), typed by the DM manifest;
* device properties — what devices report over the device-management protocol
  (``record_device_properties``, called by the channel layer), merged leaf by leaf, newest ``ts`` wins;
* system properties — kept by the server: ``did``, ``availability`` and ``connection`` from the status
  the device channels keep, ``lastRegistration`` = the last time the device joined a channel.

Stored leaves live flattened in ``dm_properties`` (one row per dot path), which makes the cross-device
query with a ``filter`` (S85, ``dids_matching`` for tasks) an indexed lookup; reads nest them again.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import tables as t
from thingcloud.areas.devicemgmt.filters import match_text, matching_dids, parse_filter, type_matches
from thingcloud.areas.devicemgmt.manifest import (
    DEVICE,
    GROUP_TYPE,
    MAX_DEPTH,
    MAX_LEAVES,
    SERVER,
    SYSTEM,
    manifest_document,
    manifest_specs,
    specs_of,
)
from thingcloud.areas.devices.status import availability
from thingcloud.errors import FieldError, ValidationFailed
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

LAST_REGISTRATION = f"{SYSTEM}.lastRegistration"
MAX_PATH = 500
MAX_TEXT = 10_000  # characters of a server property's String value
SYSTEM_NAMES = frozenset({"did", "availability", "connection", "lastRegistration"})

_props = t.dm_properties
_status = t.device_status


# --- Flattening and nesting ------------------------------------------------------------------------------


def flatten(values: Any, field: str) -> dict[str, Any]:
    """A nested object (dotted keys allowed: ``{"device.timezone": ...}``) → ``{"device.timezone": leaf}``.
    Lists and scalars are leaves; ``null`` leaves are dropped (absent, REFERENCE.md §0.2)."""
    if not isinstance(values, dict):
        raise ValidationFailed.field(field, "Must be a JSON object of properties")
    leaves: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: list[str]) -> None:
        for key, value in node.items():
            parts = [*prefix, *str(key).split(".")]
            path = ".".join(parts)
            if any(not p for p in parts) or len(parts) > MAX_DEPTH or len(path) > MAX_PATH:
                raise ValidationFailed.field(f"{field}.{path}", "Invalid property path")
            if isinstance(value, dict):
                walk(value, parts)
            elif value is not None:
                leaves[path] = value
            if len(leaves) > MAX_LEAVES:
                raise ValidationFailed.field(field, f"Maximum {MAX_LEAVES} properties")

    walk(values, [])
    return leaves


def nest(rows: list[tuple[str, Any, int]], with_ts: bool) -> dict[str, Any]:
    """``[(relative dot path, value, ts)]`` → a nested object; leaves as ``{"value", "ts"}`` with
    ``with_ts``. A path that is both a leaf and a group (a device changed its shape) keeps the group."""
    tree: dict[str, Any] = {}
    for path, value, ts in sorted(rows, key=lambda r: r[0].count(".")):
        *groups, leaf = path.split(".")
        node = tree
        for group in groups:
            child = node.get(group)
            if not isinstance(child, dict) or (with_ts and set(child) == {"value", "ts"}):
                child = node[group] = {}
            node = child
        if leaf not in node:
            node[leaf] = {"value": value, "ts": ts} if with_ts else value
    return tree


def property_row(did: str, dtid: str, path: str, value: Any, ts: int) -> dict[str, Any]:
    return {"did": did, "path": path, "dtid": dtid, "value": value, "match": match_text(value), "ts": ts}


# --- Server properties -----------------------------------------------------------------------------------


async def write_server_properties(rt: Runtime, did: str, values: dict[str, Any]) -> dict[str, Any]:
    """Merge server properties into device ``did`` (S83, and server-property write tasks).

    Every name must be a server property of the type's DM manifest and every value of its type; on
    any problem nothing is written (400 naming each bad key). Returns all server properties."""
    device = await rt.devices.get(did)
    specs = specs_of(await manifest_document(rt, device.dtid))
    leaves = flatten(values, "body")
    problems: list[FieldError] = []
    for path, value in leaves.items():
        spec = specs.get(f"{SERVER}.{path}")
        if spec is None or spec.kind != "server" or spec.value_type == GROUP_TYPE:
            read_only = path.split(".")[0] in SYSTEM_NAMES or path.startswith((f"{SYSTEM}.", f"{DEVICE}."))
            why = (
                "Read-only here: only server properties are written"
                if read_only
                else "Unknown server property"
            )
            problems.append(FieldError(path, (why,)))
        elif not type_matches(spec.value_type, value):
            problems.append(FieldError(path, (f"Must be a {spec.value_type} value",)))
        elif isinstance(value, str) and len(value) > MAX_TEXT:
            problems.append(FieldError(path, (f"Maximum length {MAX_TEXT}",)))
    if problems:
        raise ValidationFailed("Validation Error", problems)
    now = rt.clock.now_ms()
    rows = [property_row(did, device.dtid, f"{SERVER}.{path}", value, now) for path, value in leaves.items()]
    async with rt.db.write() as conn:
        if rows:
            stmt = rt.db.upsert(_props)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[_props.c.did, _props.c.path],
                    set_={"value": stmt.excluded.value, "match": stmt.excluded.match, "ts": stmt.excluded.ts},
                ),
                rows,
            )
        found = await conn.execute(
            select(_props.c.path, _props.c.value, _props.c.ts).where(
                _props.c.did == did, _props.c.path.startswith(f"{SERVER}.")
            )
        )
        stored = [(path.split(".", 1)[1], value, ts) for path, value, ts in found]
    return nest(stored, with_ts=False)


async def delete_server_properties(rt: Runtime, did: str) -> None:
    """S86: every server property of ``did`` goes; system and device properties stay."""
    await rt.devices.get(did)
    async with rt.db.write() as conn:
        await conn.execute(delete(_props).where(_props.c.did == did, _props.c.path.startswith(f"{SERVER}.")))


# --- Device and system properties --------------------------------------------------------------------------


def _newer_wins(stmt: Any) -> Any:
    """Upsert keeping the value with the newest ``ts`` (reports may arrive out of order)."""
    return stmt.on_conflict_do_update(
        index_elements=[_props.c.did, _props.c.path],
        set_={"value": stmt.excluded.value, "match": stmt.excluded.match, "ts": stmt.excluded.ts},
        where=_props.c.ts <= stmt.excluded.ts,
    )


async def record_device_properties(rt: Runtime, did: str, values: dict[str, Any], ts_ms: int) -> None:
    """What a device reports (``{"device": {"timezone": "..."}}``), merged leaf by leaf into its
    stored device properties; a leaf older than the stored one is ignored. Reports are the device's
    own truth, so they are stored whether or not the manifest names them."""
    device = await rt.devices.get(did)
    leaves = flatten(values, DEVICE)
    if not leaves:
        return
    rows = [
        property_row(did, device.dtid, f"{DEVICE}.{path}", value, ts_ms) for path, value in leaves.items()
    ]
    async with rt.db.write() as conn:
        await conn.execute(_newer_wins(rt.db.upsert(_props)), rows)


async def record_registration(rt: Runtime, did: str, ts_ms: int) -> None:
    """``systemProperties.lastRegistration``: the device joined a device channel at ``ts_ms``."""
    device = await rt.devices.get(did)
    async with rt.db.write() as conn:
        await conn.execute(
            _newer_wins(rt.db.upsert(_props)),
            [property_row(did, device.dtid, LAST_REGISTRATION, ts_ms, ts_ms)],
        )


async def attach(rt: Runtime) -> None:
    """Follow the device channels' ``device.connected`` events (on every node: the write is idempotent)."""

    async def on_connected(_subject: str, payload: dict[str, Any]) -> None:
        did, ts = payload.get("did"), payload.get("ts")
        if not isinstance(did, str) or not isinstance(ts, int):
            return
        try:
            await record_registration(rt, did, ts)
        except Exception as exc:  # deleted meanwhile, or the database is away: best effort, as presence
            log.warning("devicemgmt: registration of %s not recorded: %s", did, type(exc).__name__)

    await rt.bus.subscribe("device.connected", on_connected)


# --- Reading ---------------------------------------------------------------------------------------------


def _system(rt: Runtime, did: str, status: Any, rows: list[tuple[str, Any, int]]) -> dict[str, Any]:
    registered = next((value for path, value, _ in rows if path == LAST_REGISTRATION), None)
    connection = None
    if status is not None:
        connection = {"connected": bool(status["connected"]), "lastSeenOn": status["last_seen_on"]}
    return {
        "did": did,
        "availability": availability(rt, status),
        "connection": connection,
        "lastRegistration": registered,
    }


def render(
    rt: Runtime, did: str, rows: list[tuple[str, Any, int]], status: Any, with_ts: bool
) -> dict[str, Any]:
    """One device's ``{"serverProperties", "systemProperties", "deviceProperties"}``. With
    ``with_ts`` stored leaves become ``{"value", "ts"}``; system properties are computed, plain."""
    sections: dict[str, list[tuple[str, Any, int]]] = {SERVER: [], DEVICE: []}
    for path, value, ts in rows:
        section, _, rest = path.partition(".")
        if section in sections:
            sections[section].append((rest, value, ts))
    return {
        SERVER: nest(sections[SERVER], with_ts),
        SYSTEM: _system(rt, did, status, rows),
        DEVICE: nest(sections[DEVICE], with_ts),
    }


Leaves = dict[str, list[tuple[str, Any, int]]]


async def _load(conn: AsyncConnection, dids: list[str]) -> tuple[Leaves, dict[str, Any]]:
    """The stored leaves and the status row of each of ``dids``."""
    rows: Leaves = {did: [] for did in dids}
    found = await conn.execute(
        select(_props.c.did, _props.c.path, _props.c.value, _props.c.ts).where(_props.c.did.in_(dids))
    )
    for did, path, value, ts in found:
        rows[did].append((path, value, ts))
    statuses = {
        r["did"]: r for r in (await conn.execute(select(_status).where(_status.c.did.in_(dids)))).mappings()
    }
    return rows, statuses


async def read_properties(rt: Runtime, did: str, with_ts: bool) -> dict[str, Any]:
    """S84: the three sections of one device."""
    async with rt.db.read() as conn:
        rows, statuses = await _load(conn, [did])
    return render(rt, did, rows[did], statuses.get(did), with_ts)


async def _matching(rt: Runtime, dtid: str, filter_expr: str | None) -> Any:
    """The ``did`` subquery of the devices of ``dtid`` matching ``filter_expr`` (400 on a bad one)."""
    terms = parse_filter(filter_expr, await manifest_specs(rt, dtid))
    return matching_dids(dtid, terms, rt.clock.now_ms(), rt.settings.http_offline_after).subquery()


async def query_properties(
    rt: Runtime, dtid: str, filter_expr: str | None, count: int, offset: int, with_ts: bool
) -> tuple[list[dict[str, Any]], int]:
    """S85: a page of the devices of ``dtid`` matching ``filter_expr`` (ordered by id) with their
    properties, and how many match in all."""
    matched = await _matching(rt, dtid, filter_expr)
    async with rt.db.read() as conn:
        total = int((await conn.execute(select(func.count()).select_from(matched))).scalar_one())
        paged = select(matched.c.did).order_by(matched.c.did).limit(count).offset(offset)
        page = [r[0] for r in await conn.execute(paged)]
        if not page:
            return [], total
        rows, statuses = await _load(conn, page)
    items = [{"did": did, **render(rt, did, rows[did], statuses.get(did), with_ts)} for did in page]
    return items, total


async def dids_matching(rt: Runtime, dtid: str, filter_expr: str | None) -> list[str]:
    """The devices of ``dtid`` whose properties match ``key=value,...`` (dot paths), all of them
    when the filter is None; 400 for a path the manifest does not define."""
    matched = await _matching(rt, dtid, filter_expr)
    async with rt.db.read() as conn:
        return [r[0] for r in await conn.execute(select(matched.c.did).order_by(matched.c.did))]
