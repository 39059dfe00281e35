"""One MQTT device connection (REFERENCE.md §5.3): CONNECT with the device id and token, data
published on ``/v1.1/messages/<did>`` stored through the same ``ingest`` as ``POST /messages``, and
actions and errors sent on ``/v1.1/actions/<did>`` and ``/v1.1/errors/<did>``.

The guarantee: a QoS 1 PUBLISH gets its PUBACK only once its message is committed, in the order
the PUBLISHes arrived (MQTT 3.1.1 §4.6), while several are stored at once (the group-commit writer
batches them). A publish the cloud refuses for good (403 topic, 413, 400, 429, a manifest error) is
acknowledged too — the error goes to the errors topic, like an HTTP 4xx answer; one that failed for
a passing reason (the database is away) is not: the connection is closed, so the device sends it
again when it reconnects.

The connection is a ``DeviceSession`` of the ``ChannelHub`` holding one device, so it shares the
device channel's rules: one connection per device across MQTT and ``/websocket`` on every node (the
newer one takes over), presence and events when it comes and goes, cut-off on revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import orjson

from thingcloud.areas.devices import service as devices
from thingcloud.areas.messages.service import ingest
from thingcloud.auth.permissions import Access, check_device
from thingcloud.auth.tokens import authenticate
from thingcloud.channels import devicemgmt, protocol
from thingcloud.channels.connections import ChannelHub
from thingcloud.channels.device_channel import presence, release
from thingcloud.channels.mqtt import packets
from thingcloud.channels.sessions import CLOSE_WAIT, DeviceSession
from thingcloud.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)
from thingcloud.ids import new_id, token_digest
from thingcloud.rest.errors import as_api_error
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds a client has to send CONNECT after opening the connection
MAX_IN_FLIGHT = 64  # publishes of one connection being stored at once
MAX_BUFFERED = 256 * 1024  # bytes waiting to be sent to a client that does not read: it is dropped
PROTOCOLS = {("MQTT", 4), ("MQIsdp", 3)}  # 3.1.1, and 3.1 which has the same packets for this subset


class DeviceRateLimited(RateLimited):
    """429 with the ``X-Rate-Limit-*`` values, which the errors topic carries in the error (§5.3)."""

    def __init__(self, message: str, fields: dict[str, str]) -> None:
        super().__init__(message)
        self.fields = fields


class MqttSession(DeviceSession):
    """The hub's view of one MQTT connection: one device, the topics it subscribed to."""

    kind = "mqtt"

    def __init__(self, rt: Runtime, hub: ChannelHub, writer: asyncio.StreamWriter, did: str) -> None:
        super().__init__(rt, False, hub)
        self.writer = writer
        self.did = did
        self.actions = False  # subscribed to /v1.1/actions/<did>
        self.errors = False  # subscribed to /v1.1/errors/<did>
        self.tasks = False  # subscribed to /v1.1/devicemgmt/<did>/tasks (channels/devicemgmt.py)
        self.acks: deque[list[Any]] = deque()  # [packet id, stored?] of QoS 1 publishes, in order
        self.inflight: set[asyncio.Task[None]] = set()  # publishes being stored

    @property
    def actions_topic(self) -> str:
        return f"/v1.1/actions/{self.did}"

    @property
    def errors_topic(self) -> str:
        return f"/v1.1/errors/{self.did}"

    def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_BUFFERED:
            self.finish(None, protocol.CLOSE_SLOW, "Slow consumer")
            self.writer.transport.abort()
            return
        self.writer.write(data)

    def report(self, error: ApiError, **extra: Any) -> None:
        """The contract's error JSON on the errors topic, if the device subscribed to it."""
        if not self.errors:
            return
        code = error.status if isinstance(error, ValidationFailed) else error.error_code
        body: dict[str, Any] = {"code": code, "message": error.message, **extra, "id": new_id()}
        if isinstance(error, ValidationFailed) and error.errors:
            body["errors"] = [[e.render() for e in error.errors]]
        self.send(packets.publish(self.errors_topic, orjson.dumps({"error": body})))

    def acknowledge(self, entry: list[Any]) -> None:
        """``entry`` is stored: send the PUBACKs that are due, never ahead of an earlier publish."""
        entry[1] = True
        while self.acks and self.acks[0][1]:
            self.send(packets.puback(self.acks.popleft()[0]))

    # --- what the hub hands a device session ----------------------------------------------------------

    def push(self, frame: str) -> None:
        """WebSocket frames: an MQTT session gets its actions and errors through the methods below."""

    def send_action(self, action: dict[str, Any]) -> None:
        if self.actions and action.get("ddid") == self.did:
            data = action.get("data")
            actions = data.get("actions", []) if isinstance(data, dict) else []
            self.send(packets.publish(self.actions_topic, orjson.dumps(actions)))

    def accepts_tasks(self, did: str) -> bool:
        return self.tasks and did == self.did

    def send_task(self, did: str, message: dict[str, Any]) -> None:
        if self.tasks and did == self.did:
            self.send(packets.publish(devicemgmt.tasks_topic(did), orjson.dumps(message)))

    def taken_over(self, did: str) -> None:
        self.report(protocol.replaced(did))
        self.finish(None, protocol.CLOSE_POLICY, "Replaced by a newer connection")

    def finish(self, error: ApiError | None, code: int, reason: str) -> None:
        """End the connection (MQTT 3.1.1 has no server DISCONNECT): the error, if any, goes to the
        errors topic, then the socket is closed and the read loop ends."""
        if self.finished.is_set():
            return
        super().finish(error, code, reason)
        if error is not None:
            self.report(error)
        self.writer.close()


# --- the connection ------------------------------------------------------------------------------------


async def serve_connection(
    rt: Runtime, hub: ChannelHub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Run one client connection from CONNECT to its end; malformed input closes only this one."""
    max_packet = rt.settings.mqtt_max_message_bytes + 64 * 1024  # room for a 413 instead of a close
    session: MqttSession | None = None
    try:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                first = await packets.read_packet(reader, max_packet)
        except (packets.Malformed, EOFError, asyncio.IncompleteReadError, TimeoutError, OSError):
            return
        if not isinstance(first, packets.Connect):
            return  # the first packet must be CONNECT (§3.1)
        session = await _open(rt, hub, writer, first)
        if session is not None:
            await _run(session, reader, first.keepalive, max_packet)
    finally:
        if session is not None:
            session.finish(None, protocol.CLOSE_NORMAL, "")
            hub.remove(session)
            for did in list(session.devices):
                await release(session, did, None)
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_WAIT):
                await writer.wait_closed()


async def _open(
    rt: Runtime, hub: ChannelHub, writer: asyncio.StreamWriter, connect: packets.Connect
) -> MqttSession | None:
    """Check the credentials (username = device id, password = a token with READ and WRITE on it),
    answer CONNACK and take the device over; None when refused."""
    code = packets.ACCEPTED
    did, token = connect.username, connect.password
    if (connect.protocol, connect.level) not in PROTOCOLS:
        code = packets.UNACCEPTABLE_PROTOCOL
    elif not connect.client_id and not connect.clean_session:
        code = packets.IDENTIFIER_REJECTED
    elif not did or not token:
        code = packets.BAD_CREDENTIALS
    if code != packets.ACCEPTED or did is None or token is None:
        writer.write(packets.connack(code))
        return None
    try:
        text = token.decode("ascii", "replace")
        principal = await authenticate(rt, text)
        row = await devices.device_row(rt, did)
        await check_device(rt, principal, row, Access.READ)
        await check_device(rt, principal, row, Access.WRITE)
    except Unauthorized:
        code = packets.BAD_CREDENTIALS
    except (Forbidden, NotFound):
        code = packets.NOT_AUTHORIZED
    except Exception as exc:  # the database is away: "server unavailable", the device retries later
        log.warning("mqtt: connect of %s failed: %s", did, type(exc).__name__)
        code = packets.SERVER_UNAVAILABLE
    if code != packets.ACCEPTED:
        writer.write(packets.connack(code))
        return None
    session = MqttSession(rt, hub, writer, did)
    session.devices[did] = (principal, token_digest(text.strip().lower()), row)
    hub.add_device_session(session)
    holder = hub.held_by(did)
    try:
        await hub.claim(session, did)  # the connection that held the device (any channel, any node) ends
    except Exception as exc:  # the bus is away: the device cannot be taken over safely, it retries
        log.warning("mqtt: connect of %s failed: %s", did, type(exc).__name__)
        hub.remove(session)
        session.devices.clear()
        writer.write(packets.connack(packets.SERVER_UNAVAILABLE))
        return None
    writer.write(packets.connack(packets.ACCEPTED))
    if holder is None:
        await presence(rt, did, row, principal, online=True)
    return session


async def _run(session: MqttSession, reader: asyncio.StreamReader, keepalive: int, max_packet: int) -> None:
    # Keep-alive: a client silent for one and a half times its interval is gone (§3.1.2.10).
    limit = keepalive * 1.5 if keepalive else None
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    inflight = session.inflight
    try:
        while not session.finished.is_set():
            try:
                async with asyncio.timeout(limit):
                    packet = await packets.read_packet(reader, max_packet)
            except packets.Malformed as exc:
                log.info("mqtt: malformed packet from %s: %s", session.did, exc)
                return
            except (EOFError, asyncio.IncompleteReadError, TimeoutError, OSError):
                return
            if isinstance(packet, packets.Publish):
                if packet.qos == 2:
                    log.info("mqtt: QoS 2 publish from %s refused (QoS 0 and 1 only)", session.did)
                    return
                entry = None
                if packet.packet_id is not None:
                    entry = [packet.packet_id, False]
                    session.acks.append(entry)
                await gate.acquire()
                task = asyncio.ensure_future(_store(session, packet, entry, gate))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            elif isinstance(packet, packets.Subscribe):
                _subscribe(session, packet)
            elif isinstance(packet, packets.Unsubscribe):
                for topic in packet.filters:
                    if topic == session.actions_topic:
                        session.actions = False
                    elif topic == session.errors_topic:
                        session.errors = False
                    elif topic == devicemgmt.tasks_topic(session.did):
                        session.tasks = False
                session.send(packets.unsuback(packet.packet_id))
            elif isinstance(packet, packets.Control):
                if packet.kind == packets.PINGREQ:
                    session.send(packets.PINGRESP_PACKET)
                elif packet.kind == packets.DISCONNECT:
                    return
                # PUBACK of a QoS 1 delivery: nothing to do, the server sends QoS 0 only.
            else:
                return  # a second CONNECT is a protocol violation (§3.1.0-2)
    finally:
        if inflight:
            # Publishes being stored finish (and are stored) even when the client went away.
            await asyncio.wait(inflight, timeout=CLOSE_WAIT)


async def _store(
    session: MqttSession, packet: packets.Publish, entry: list[Any] | None, gate: asyncio.Semaphore
) -> None:
    try:
        await _ingest(session, packet)
    except Exception as exc:
        error = as_api_error(exc)
        if error.status >= 500:
            # Not stored: no PUBACK, and the connection ends so that the device sends it again.
            session.finish(None, protocol.CLOSE_GOING_AWAY, "Storage unavailable")
            return
        session.report(error, **(error.fields if isinstance(error, DeviceRateLimited) else {}))
    finally:
        gate.release()
    if entry is not None:
        session.acknowledge(entry)


async def _ingest(session: MqttSession, packet: packets.Publish) -> None:
    rt, did = session.rt, session.did
    management = packet.topic in (devicemgmt.results_topic(did), devicemgmt.properties_topic(did))
    if packet.topic != f"/v1.1/messages/{did}" and not management:
        raise Forbidden("You do not have publish permission to topic")
    entry = session.devices.get(did)
    if entry is None:
        raise Forbidden("Source device is disconnected")
    # ARTIK counts every publish, valid or not (§2.6).
    status = await rt.limiter.hit("device", did, "mqtt")
    if status is not None and status.exceeded:
        fields = {name.decode().title(): value.decode() for name, value in status.headers()}
        raise DeviceRateLimited(f"DEVICE {status.exceeded} rate limit exceeded", fields)
    limit = rt.settings.mqtt_max_message_bytes
    if len(packet.payload) > limit:
        raise PayloadTooLarge(f"Plan quota exceeded for device {did}. Reason: Max payload Size limit")
    try:
        data = orjson.loads(packet.payload)
    except orjson.JSONDecodeError:
        raise BadRequest("Bad Request") from None
    if not isinstance(data, dict):
        raise BadRequest("Bad Request")
    if management:
        kind = devicemgmt.RESULT_FRAME if packet.topic.endswith("/results") else devicemgmt.PROPERTIES_FRAME
        await devicemgmt.device_message(rt, did, kind, data)
        return
    await ingest(rt, entry[0], {"sdid": did, "data": data})


def _subscribe(session: MqttSession, packet: packets.Subscribe) -> None:
    codes: list[int] = []
    refused = False
    ready = False
    for topic, _qos in packet.filters:
        # Granted at QoS 0: the cloud publishes actions and errors with QoS 0 (§5.3).
        if topic == session.actions_topic:
            session.actions = True
            codes.append(0)
        elif topic == session.errors_topic:
            session.errors = True
            codes.append(0)
        elif topic == devicemgmt.tasks_topic(session.did):
            session.tasks = True
            codes.append(0)
            ready = True
        else:  # another device's topic, a wildcard, any other path: no delivery
            codes.append(packets.SUBACK_FAILURE)
            refused = True
    session.send(packets.suback(packet.packet_id, codes))
    if ready:
        devicemgmt.device_ready(session, session.did)
    if refused:
        session.report(Forbidden("You do not have subscribe permission to topic"))
