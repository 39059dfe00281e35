"""The WebSocket endpoints of REFERENCE.md §5.2 on the REST API's port, and their installation:
``/v1.1/live`` (firehose) and ``/v1.1/events`` (event feed) here, ``/v1.1/websocket`` (device
channel) in device_channel.py.

Handlers only speak frames: tokens go through ``auth.tokens``, permissions through
``auth.permissions`` and the devices service; the ``ChannelHub`` (connections.py) routes bus traffic
to the sessions (sessions.py). A refused session gets the contract's error frame, then close 1008.

``/live`` resume: every frame carries ``cursor`` (the feed seq of the message); reconnecting with
``?since=<cursor>`` first replays the stored messages after it from the feed (within
``feed_retention``; a ``{"type":"gap"}`` frame says when older ones were trimmed already), then
continues live, deduplicated by seq at the seam.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from starlette.websockets import WebSocket

from thingcloud import feed
from thingcloud.areas.devices import service as devices
from thingcloud.auth.permissions import Access, Principal, check_device
from thingcloud.auth.tokens import authenticate, parse_authorization
from thingcloud.channels import protocol
from thingcloud.channels.connections import ChannelHub
from thingcloud.channels.device_channel import device_channel, release
from thingcloud.channels.sessions import (
    EventsSession,
    LiveSession,
    WatchScope,
    WatchSession,
    drain_frames,
    refuse,
    serve,
)
from thingcloud.errors import ApiError, BadRequest, Forbidden, NotFound
from thingcloud.ids import token_digest
from thingcloud.logs import redact_query
from thingcloud.rest.errors import as_api_error
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

PAGE = 100


# --- authentication and the devices a watcher may see ---------------------------------------------


async def _principal(rt: Runtime, ws: WebSocket) -> tuple[Principal, str]:
    """The token of ``?Authorization=bearer+<token>`` (or the header), resolved; with its digest."""
    token = parse_authorization(ws.query_params.get("Authorization") or ws.headers.get("authorization"))
    principal = await authenticate(rt, token)
    return principal, token_digest(token.strip().lower())


async def may_read(rt: Runtime, principal: Principal, device: dict[str, Any]) -> bool:
    try:
        await check_device(rt, principal, device, Access.READ)
    except ApiError:
        return False
    return True


async def _user_devices(
    rt: Runtime, principal: Principal, uid: str, owner: str, dtid: str | None
) -> set[str]:
    found: set[str] = set()
    offset = 0
    while True:
        page, total, _ = await devices.list_user_devices(
            rt, principal, uid, owner=owner, dtid=dtid, count=PAGE, offset=offset
        )
        for device in page:
            if await may_read(rt, principal, device.model_dump()):
                found.add(device.id)
        offset += len(page)
        if not page or offset >= total:
            return found


async def watch_scope(
    rt: Runtime, principal: Principal, q: dict[str, str], *, shared_default: bool
) -> WatchScope:
    """The devices a /live or /events query names; refused with 400/403/404 when the token may not
    read what it asks for."""
    dids = protocol.query_list(q.get("sdid"), q.get("sdids"), q.get("did"), q.get("dids"))
    dtids = protocol.query_list(q.get("sdtids"))
    uid = q.get("uid") or None
    if principal.kind == "device":
        if dtids or uid:
            raise BadRequest("sdtids and uid are not allowed with a device token")
        dids = dids or [str(principal.did)]
    if dids:
        for did in dids:
            row = await devices.device_row(rt, did)
            try:
                await check_device(rt, principal, row, Access.READ)
            except Forbidden:
                raise protocol.no_permission() from None
        return WatchScope(set(dids), None, explicit=True)
    uid = uid or principal.uid
    if uid is None:
        raise BadRequest("Missing uid value")
    shared = protocol.query_bool(q.get("includeSharedDevices"))
    owner = "ALL" if (shared if shared is not None else shared_default) else "ME"
    found: set[str] = set()
    targets: list[str | None] = [*dtids] or [None]
    for dtid in targets:
        found |= await _user_devices(rt, principal, uid, owner, dtid)
    return WatchScope(found, uid, explicit=False, dtids=set(dtids) or None, shared=owner == "ALL")


def _query(ws: WebSocket) -> dict[str, str]:
    return dict(ws.query_params)


async def live(ws: WebSocket) -> None:
    """``GET /v1.1/live``: normalized messages of the devices the token may read, with cursors."""
    rt: Runtime = ws.app.state.runtime
    hub: ChannelHub = ws.app.state.channels
    q = _query(ws)
    try:
        principal, digest = await _principal(rt, ws)
        since = q.get("since")
        if since is not None and not since.isdigit():
            raise BadRequest("Invalid since value")
        scope = await watch_scope(rt, principal, q, shared_default=False)
        lowest, highest = await feed.bounds(rt)
    except Exception as exc:
        await refuse(ws, as_api_error(exc))
        return
    cursor = int(since) if since is not None else highest
    session = LiveSession(rt, principal, digest, scope, cursor=cursor)
    if since is not None and lowest > cursor + 1:
        # What came between the cursor and the oldest retained entry is gone (feed_retention).
        session.push(protocol.gap_frame(cursor, lowest - 1))
    # In the hub before the handshake completes: whatever is stored once the client sees the socket
    # open reaches it.
    await hub.add_live(session)
    try:
        await ws.accept()
        await serve(ws, session, lambda: hub.remove(session), drain_frames(ws, session), session.catch_up())
    finally:
        hub.remove(session)


async def events(ws: WebSocket) -> None:
    """``GET /v1.1/events``: device and profile events of the devices the token may read."""
    rt: Runtime = ws.app.state.runtime
    hub: ChannelHub = ws.app.state.channels
    q = _query(ws)
    try:
        principal, digest = await _principal(rt, ws)
        scope = await watch_scope(rt, principal, q, shared_default=True)
        names = protocol.query_list(q.get("events"), q.get("event"))
    except Exception as exc:
        await refuse(ws, as_api_error(exc))
        return
    session = EventsSession(rt, principal, digest, scope, matches=protocol.event_matcher(names))
    hub.add_events(session)
    try:
        await ws.accept()
        await serve(ws, session, lambda: hub.remove(session), drain_frames(ws, session))
    finally:
        hub.remove(session)


# --- installation -----------------------------------------------------------------------------------


class QueryRedactor(logging.Filter):
    """uvicorn logs each WebSocket handshake with its query string (``Authorization=bearer+…``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and "WebSocket" in str(record.msg):
            record.args = tuple(_redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def _redact(value: str) -> str:
    path, sep, query = value.partition("?")
    return f"{path}{sep}{redact_query(query)}" if sep else value


def install(app: FastAPI) -> None:
    """Register the three endpoints; ``start``/``stop`` run from the app's lifespan."""
    app.add_api_websocket_route("/v1.1/live", live)
    app.add_api_websocket_route("/v1.1/events", events)
    app.add_api_websocket_route("/v1.1/websocket", device_channel)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QueryRedactor) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(QueryRedactor())


async def start(app: FastAPI, rt: Runtime) -> ChannelHub:
    async def readable(session: WatchSession, did: str) -> bool:
        assert session.principal is not None
        try:
            row = await devices.device_row(rt, did)
        except NotFound:
            return False
        return await may_read(rt, session.principal, row)

    hub = ChannelHub(rt, readable, release)
    await hub.start()
    app.state.channels = hub
    return hub
