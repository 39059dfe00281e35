"""``GET /v1.1/websocket``, the device channel (REFERENCE.md §5.2): devices register (several per
socket, each with a token holding READ and WRITE on it), send messages and actions through the same
``ingest`` as ``POST /v1.1/messages`` (acked only after the commit), and receive the actions sent to
them. One connection per device: a new registration takes the device over (``ChannelHub.claim``),
the old socket is told why and keeps its other devices. Joining and leaving update the status
(connected, availability) and emit ``device.connected``/``device.disconnected`` and
``device.status.online``/``offline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket

from thingcloud.areas.devices import service as devices
from thingcloud.areas.devices.status import write_status
from thingcloud.areas.messages.service import ingest
from thingcloud.auth.permissions import Access, Principal, check_device
from thingcloud.auth.tokens import authenticate, parse_authorization
from thingcloud.channels import devicemgmt, protocol
from thingcloud.channels.connections import ChannelHub
from thingcloud.channels.sessions import CLOSE_WAIT, DeviceSession, refuse, serve
from thingcloud.errors import ApiError, BadRequest, Forbidden, NotFound, RateLimited
from thingcloud.ids import token_digest
from thingcloud.rest.errors import as_api_error
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64  # messages of one device socket being ingested at once (group commit batches them)


async def presence(rt: Runtime, did: str, row: dict[str, Any], principal: Principal, online: bool) -> None:
    """Status (connected, availability) and the events of a device joining or leaving a channel."""
    try:
        async with rt.db.write() as conn:
            await write_status(
                rt, conn, did, connected=online, availability="online" if online else "offline"
            )
    except Exception as exc:  # deleted meanwhile, or the database is away: presence is best effort
        log.warning("channels: presence of %s not recorded: %s", did, type(exc).__name__)
    data = {"did": did, "uid": row.get("uid"), "dtid": row.get("dtid"), "aid": principal.aid}
    data["ts"] = rt.clock.now_ms()
    await rt.bus.publish("device.connected" if online else "device.disconnected", data)
    await rt.bus.publish(f"device.status.{'online' if online else 'offline'}", data)


async def release(session: DeviceSession, did: str, error: ApiError | None) -> None:
    """``did`` leaves ``session`` (unregister, revocation, close): offline unless another socket
    holds it now. With an error the socket is told why, and closed once it holds no device."""
    hub = session.hub
    entry = session.devices.get(did)
    if entry is None:
        return
    principal, _, row = entry
    if hub.let_go(session, did):
        await presence(session.rt, did, row, principal, online=False)
    if error is not None:
        if session.devices:
            session.push(protocol.error_frame(error, sdid=did))
        else:
            session.finish(error, protocol.CLOSE_POLICY, error.message)


async def _register(session: DeviceSession, hub: ChannelHub, frame: dict[str, Any]) -> None:
    rt, cid = session.rt, frame.get("cid")
    did = protocol.text_field(frame, "sdid")
    if did is None:
        raise protocol.missing_sdid()
    # A token in the frame, or else the one on the socket's URL (?Authorization=bearer+..., §5.2).
    given = protocol.text_field(frame, "Authorization") or session.authorization
    token = parse_authorization(given)
    principal = await authenticate(rt, token)
    try:
        row = await devices.device_row(rt, did)
        await check_device(rt, principal, row, Access.READ)
        await check_device(rt, principal, row, Access.WRITE)
    except (Forbidden, NotFound):
        raise protocol.no_permission() from None
    if session.finished.is_set():
        return
    again = did in session.devices
    session.devices[did] = (principal, token_digest(token.strip().lower()), row)
    holder = hub.held_by(did)
    if holder is not session:
        await hub.claim(session, did)
        if holder is None and not again:
            await presence(rt, did, row, principal, online=True)
    if session.ack:
        session.push(protocol.registered_frame(cid))
    devicemgmt.device_ready(session, did)


async def _limit(rt: Runtime, principal: Principal, did: str) -> None:
    """Per-device and per-user (or application) limits of the websocket category (§2.6)."""
    actors = [("device", did)]
    if principal.kind != "device":
        actors.append(principal.rate_actor)
    for actor, key in actors:
        status = await rt.limiter.hit(actor, key, "websocket")
        if status is not None and status.exceeded:
            prefix = "DEVICE " if actor == "device" else ""
            raise RateLimited(f"{prefix}{status.exceeded} rate limit exceeded")


async def _send_data(session: DeviceSession, frame: dict[str, Any], gate: asyncio.Semaphore) -> None:
    """A message or an action sent on the socket: the same ingest as REST; acked after the commit."""
    cid = frame.get("cid")
    try:
        if frame.get("type") == "action":
            ddid = protocol.text_field(frame, "ddid")
            if ddid is None:
                raise protocol.missing_ddid()
            sender = protocol.text_field(frame, "sdid") or (ddid if ddid in session.devices else None)
            sender = sender or next(iter(session.devices), None)
        else:
            sender = protocol.text_field(frame, "sdid")
            if sender is None:
                raise protocol.missing_sdid()
        entry = session.devices.get(sender or "")
        if entry is None:
            raise protocol.not_registered()
        principal = entry[0]
        await _limit(session.rt, principal, str(sender))
        try:
            mid = await ingest(session.rt, principal, frame)
        except Forbidden:
            raise protocol.no_permission() from None
        if session.ack:
            session.push(protocol.ack_frame(mid, cid))
    except Exception as exc:
        error = as_api_error(exc)
        # ARTIK sends rate-limit errors only to clients that asked for acks (§2.6).
        if session.ack or not isinstance(error, RateLimited):
            session.push(protocol.error_frame(error, cid))
    finally:
        gate.release()


async def _device_frames(ws: WebSocket, session: DeviceSession, hub: ChannelHub) -> None:
    rt = session.rt
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    inflight: set[asyncio.Task[None]] = set()
    registered = asyncio.Event()

    async def deadline() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(registered.wait(), rt.settings.websocket_register_timeout)
            return
        session.finish(protocol.registration_timeout(), protocol.CLOSE_POLICY, "Registration timeout")

    timer = asyncio.ensure_future(deadline())
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                session.finish(None, protocol.CLOSE_NORMAL, "")
                return
            cid = None
            try:
                frame = protocol.parse_frame(
                    message.get("text") or message.get("bytes"), rt.settings.max_message_bytes
                )
                cid = protocol.frame_cid(frame)
                kind = frame.get("type") or "message"
                if kind == "register":
                    await _register(session, hub, frame)
                    registered.set()
                elif kind == "unregister":
                    did = protocol.text_field(frame, "sdid")
                    if did is None:
                        raise protocol.missing_sdid()
                    if did not in session.devices:
                        raise protocol.not_registered()
                    await release(session, did, None)
                    if session.ack:
                        session.push(protocol.registered_frame(cid))
                elif kind == "list":
                    session.push(protocol.list_frame(sorted(session.devices), cid))
                elif kind in devicemgmt.FRAME_TYPES:
                    await devicemgmt.websocket_frame(session, frame)
                elif kind in ("message", "action"):
                    await gate.acquire()
                    task = asyncio.ensure_future(_send_data(session, frame, gate))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                elif kind != "ping":
                    raise BadRequest("Unknown frame type")
            except Exception as exc:
                session.push(protocol.error_frame(as_api_error(exc), cid))
    finally:
        timer.cancel()
        if inflight:
            # Messages being stored finish (and are stored) even when the socket goes away.
            await asyncio.wait(inflight, timeout=CLOSE_WAIT)


async def device_channel(ws: WebSocket) -> None:
    """``GET /v1.1/websocket``: devices register, send messages (acked after the commit) and get actions."""
    rt: Runtime = ws.app.state.runtime
    hub: ChannelHub = ws.app.state.channels
    await ws.accept()
    try:
        ack = bool(protocol.query_bool(ws.query_params.get("ack")))
    except ApiError as exc:
        await refuse(ws, exc)
        return
    session = DeviceSession(rt, ack, hub, ws.query_params.get("Authorization"))
    hub.add_device_session(session)
    try:
        await serve(ws, session, lambda: hub.remove(session), _device_frames(ws, session, hub))
    finally:
        hub.remove(session)
        for did in list(session.devices):
            await release(session, did, None)
