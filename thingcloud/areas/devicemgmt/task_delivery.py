"""The service side of the device-management protocol (docs/device-management.md): the task message a
device receives, claiming device tasks for sending (each send is an attempt, QUEUED → PROCESSING),
and what devices send back (a task's result, a report of their device properties).

Channel-free: thingcloud/channels/devicemgmt.py calls these from MQTT and /websocket sessions, on the
node that holds the device's connection.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from thingcloud import tables as t
from thingcloud.areas.devicemgmt import ota
from thingcloud.areas.devicemgmt import properties as dm_properties
from thingcloud.areas.devicemgmt.task_answers import answer_writer
from thingcloud.areas.devicemgmt.task_lifecycle import move
from thingcloud.areas.devicemgmt.tasks import OTA_PROPERTY
from thingcloud.errors import ValidationFailed
from thingcloud.runtime import Runtime

DEVICE_PREFIX = "deviceProperties."
ANSWERS = ("SUCCEEDED", "FAILED", "CANCELLED")

_task = t.dm_tasks
_dev = t.dm_device_tasks
# What sending and answering need of a task: not its ``dids`` (10,000 ids for a large task, which
# every one of its 10,000 answers would otherwise load and parse).
_SENDING = (
    _task.c.id,
    _task.c.task_type,
    _task.c.property,
    _task.c.parameters,
    _task.c.status,
    _task.c.expires_on,
)


async def task_message(
    rt: Runtime, task: dict[str, Any], did: str, attempt: int, image: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the device receives: the task id, the operation, the property path (``device.timezone``,
    without ``deviceProperties.``), the value of a write, and for an update where to download the
    image (a URL with a per-task token) and its SHA-256."""
    params = task["parameters"] or {}
    message: dict[str, Any] = {
        "tid": task["id"],
        "taskType": task["task_type"],
        "property": task["property"].removeprefix(DEVICE_PREFIX),
        "attempt": attempt,
        "expiresOn": task["expires_on"],
    }
    if task["task_type"] == "W":
        message["value"] = params.get("value")
    update_id = (params.get("update") or {}).get("updateId")
    if task["property"] == OTA_PROPERTY and update_id:
        image = image or await ota.update_row(rt, update_id)
        message["update"] = {
            "updateId": update_id,
            "version": image["version"],
            "size": image["size"],
            "sha256": image["sha256"],
            "url": ota.download_url(rt, task["id"], did),
        }
    return message


async def _tasks(rt: Runtime, tids: set[str]) -> dict[str, dict[str, Any]]:
    async with rt.db.read() as conn:
        rows = (await conn.execute(select(*_SENDING).where(_task.c.id.in_(tids)))).mappings()
        return {r["id"]: dict(r) for r in rows}


async def claim_for_sending(rt: Runtime, tid: str, dids: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """QUEUED → PROCESSING for ``dids`` (held by this node's connections); the messages to send.
    A device another node (or an earlier offer) claimed already is not sent twice."""
    if not dids:
        return []
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        sent = await move(
            conn, tid, dids, ("QUEUED",), "PROCESSING", now, sent_at=now, attempts=_dev.c.attempts + 1
        )
        attempts = dict(
            (
                await conn.execute(
                    select(_dev.c.did, _dev.c.attempts).where(_dev.c.tid == tid, _dev.c.did.in_(sent))
                )
            ).all()
        )
    task = (await _tasks(rt, {tid})).get(tid)
    if task is None or not sent:
        return []
    update_id = ((task["parameters"] or {}).get("update") or {}).get("updateId")
    image = await ota.update_row(rt, update_id) if update_id else None  # once for all the devices
    return [(did, await task_message(rt, task, did, attempts[did], image)) for did in sent]


async def claim_pending(rt: Runtime, did: str) -> list[tuple[str, dict[str, Any]]]:
    """A device just became reachable: its queued tasks, and those it was sent but never answered
    (the connection that got them is gone), are sent now — each send an attempt."""
    now = rt.clock.now_ms()
    async with rt.db.read() as conn:
        rows = (
            await conn.execute(
                select(_dev.c.tid)
                .select_from(_dev.join(_task, _task.c.id == _dev.c.tid))
                .where(
                    _dev.c.did == did,
                    _dev.c.status.in_(("QUEUED", "PROCESSING")),
                    _dev.c.attempts < rt.settings.dm_task_max_attempts,
                    _task.c.status.in_(("QUEUING", "PROCESSING")),
                    _task.c.expires_on > now,
                )
                .order_by(_task.c.created_on)
            )
        ).all()
    out: list[tuple[str, dict[str, Any]]] = []
    for (tid,) in rows:
        async with rt.db.write() as conn:
            # Back to QUEUED first so that the claim below counts this send as an attempt.
            await conn.execute(
                update(_dev)
                .where(_dev.c.tid == tid, _dev.c.did == did, _dev.c.status == "PROCESSING")
                .values(status="QUEUED")
            )
        out.extend(await claim_for_sending(rt, tid, [did]))
    return out


async def record_result(rt: Runtime, did: str, answer: Any) -> dict[str, Any]:
    """A device's answer ``{"tid", "status": SUCCEEDED|FAILED|CANCELLED, "value"?, "errorCode"?,
    "errorMessage"?}``: the device task's outcome; a read's value and a write's new value are stored
    as the device's properties (written in batches: task_answers.py). Returns ``{"tid", "status"}``."""
    if not isinstance(answer, dict):
        raise ValidationFailed.field("result", "A JSON object")
    tid = answer.get("tid")
    status = str(answer.get("status") or "").upper()
    if not isinstance(tid, str) or not tid:
        raise ValidationFailed.field("tid", "Required parameter")
    if status not in ANSWERS:
        raise ValidationFailed.field("status", "SUCCEEDED, FAILED or CANCELLED")
    error = None
    if status == "FAILED":
        code = answer.get("errorCode")
        error = (
            str(code)[:40] if code is not None else "DEVICE_ERROR",
            str(answer.get("errorMessage") or "")[:2000],
        )
    await answer_writer(rt).submit(did, tid, status, error, answer.get("value"))
    return {"tid": tid, "status": status}


async def record_properties(rt: Runtime, did: str, report: Any) -> None:
    """A device reports its device properties, nested like ``{"device": {"timezone": "..."}}``."""
    if not isinstance(report, dict) or not report:
        raise ValidationFailed.field("properties", "A non-empty JSON object")
    await dm_properties.record_device_properties(rt, did, report, rt.clock.now_ms())
