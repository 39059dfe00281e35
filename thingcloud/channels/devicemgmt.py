"""The device-management protocol on the device connections (docs/device-management.md).

MQTT (a device only its own topics, like actions):
* ``/v1.1/devicemgmt/<did>/tasks``       server → device: a task, or ``{"tid", "cancel": true}``;
* ``/v1.1/devicemgmt/<did>/results``     device → server: ``{"tid", "status", "value"?, "errorCode"?, ...}``;
* ``/v1.1/devicemgmt/<did>/properties``  device → server: its device properties, nested.

/websocket: frames ``{"type": "devicemgmt.task", "ddid", "data"}`` (server → device) and
``{"type": "devicemgmt.result" | "devicemgmt.properties", "sdid", "cid"?, "data"}`` (device → server,
acknowledged ``{"data": {"code": 200, "message": "OK", "cid"}}`` when the socket asked for acks).

Tasks reach a device's connection on whatever node holds it: the lifecycle publishes
``devicemgmt.deliver`` / ``devicemgmt.cancel`` on the bus, and each node's ``attach``ed handlers send to
the devices its hub holds. A device that becomes reachable (MQTT: subscribes to its tasks topic;
/websocket: registers) gets its waiting tasks at once (``device_ready``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from thingcloud.areas.devicemgmt import task_delivery
from thingcloud.areas.devicemgmt.task_lifecycle import CANCEL, DELIVER
from thingcloud.channels import protocol

if TYPE_CHECKING:
    from thingcloud.channels.connections import ChannelHub
    from thingcloud.channels.sessions import DeviceSession
    from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

TASK_FRAME = "devicemgmt.task"
RESULT_FRAME = "devicemgmt.result"
PROPERTIES_FRAME = "devicemgmt.properties"
FRAME_TYPES = (RESULT_FRAME, PROPERTIES_FRAME)

CONNECT_GATE = 8  # devices of one node looked up for pending tasks at once

_background: set[asyncio.Task[Any]] = set()
_gates: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}


def tasks_topic(did: str) -> str:
    return f"/v1.1/devicemgmt/{did}/tasks"


def results_topic(did: str) -> str:
    return f"/v1.1/devicemgmt/{did}/results"


def properties_topic(did: str) -> str:
    return f"/v1.1/devicemgmt/{did}/properties"


def task_frame(did: str, message: dict[str, Any]) -> str:
    return orjson.dumps({"type": TASK_FRAME, "ddid": did, "data": message}).decode()


def ok_frame(cid: Any) -> str:
    return orjson.dumps({"data": {"code": 200, "message": "OK", "cid": cid}}).decode()


def _spawn(work: Any) -> None:
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _send(hub: ChannelHub, claimed: list[tuple[str, dict[str, Any]]]) -> None:
    for did, message in claimed:
        session = hub.held_by(did)
        if session is not None:
            session.send_task(did, message)


async def _deliver(hub: ChannelHub, tid: str, dids: list[str]) -> None:
    try:
        await _send(hub, await task_delivery.claim_for_sending(hub.rt, tid, dids))
    except Exception as exc:  # the sweep and the next connection retry
        log.warning("devicemgmt: delivery of %s failed: %s", tid, type(exc).__name__)


async def attach(rt: Runtime, hub: ChannelHub) -> None:
    """Subscribe this node to task deliveries and cancellations (after the hub started)."""

    def reachable(payload: dict[str, Any]) -> list[str]:
        out = []
        for did in payload.get("dids") or ():
            session = hub.held_by(str(did))
            if session is not None and session.accepts_tasks(str(did)):
                out.append(str(did))
        return out

    async def on_deliver(_subject: str, payload: dict[str, Any]) -> None:
        dids = reachable(payload)
        if dids:
            _spawn(_deliver(hub, str(payload["tid"]), dids))

    async def on_cancel(_subject: str, payload: dict[str, Any]) -> None:
        for did in reachable(payload):
            session = hub.held_by(did)
            if session is not None:
                session.send_task(did, {"tid": payload["tid"], "cancel": True})

    await rt.bus.subscribe(DELIVER, on_deliver)
    await rt.bus.subscribe(CANCEL, on_cancel)


def _connect_gate(rt: Runtime) -> asyncio.Semaphore:
    """Bounds the database work of devices reaching the node at once (10,000 reconnecting after a
    restart would otherwise each hold a pooled connection, and run the pool dry)."""
    loop = asyncio.get_running_loop()
    found = _gates.get(id(rt))
    if found is None or found[0] is not loop:
        found = _gates[id(rt)] = (loop, asyncio.Semaphore(CONNECT_GATE))
    return found[1]


def device_ready(session: DeviceSession, did: str) -> None:
    """``did`` can receive tasks on ``session`` now: send what waits for it."""

    async def work() -> None:
        try:
            async with _connect_gate(session.rt):
                claimed = await task_delivery.claim_pending(session.rt, did)
            await _send(session.hub, claimed)
        except Exception as exc:
            log.warning("devicemgmt: pending tasks of %s not sent: %s", did, type(exc).__name__)

    _spawn(work())


async def device_message(rt: Runtime, did: str, kind: str, data: Any) -> None:
    """A result or a properties report from ``did`` (either channel); errors are the error tree's."""
    if kind == RESULT_FRAME:
        await task_delivery.record_result(rt, did, data)
    else:
        await task_delivery.record_properties(rt, did, data)


async def websocket_frame(session: DeviceSession, frame: dict[str, Any]) -> None:
    """``devicemgmt.result`` / ``devicemgmt.properties`` on /websocket, from a registered device."""
    did = protocol.text_field(frame, "sdid")
    if did is None:
        raise protocol.missing_sdid()
    if did not in session.devices:
        raise protocol.not_registered()
    await device_message(session.rt, did, str(frame.get("type")), frame.get("data"))
    if session.ack:
        session.push(ok_frame(frame.get("cid")))
