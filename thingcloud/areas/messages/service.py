"""The one ingest path: every channel (REST, WebSocket, MQTT) turns what a device or app sent into a
stored, normalized message or action through ``ingest``.

Order of work: envelope checks → device (cached) → permission → manifest normalization (cached,
compiled) → group-commit writer (acknowledged only after the commit) → the writer publishes on the bus.
Nothing is stored unless every check passed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from thingcloud.areas.devices.directory import DeviceInfo
from thingcloud.areas.devicetypes import service as devicetypes
from thingcloud.areas.messages.writer import Pending
from thingcloud.auth.permissions import Access, Principal, check_device
from thingcloud.errors import Forbidden, ValidationFailed
from thingcloud.ids import new_message_id
from thingcloud.runtime import Runtime


def _int_ts(value: Any, now: int, grace_ms: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationFailed.field("ts", "Numeric field only", message="Invalid ts value")
    ts = int(value)
    if ts < 0:
        raise ValidationFailed.field("ts", "Invalid ts value", message="Invalid ts value")
    if ts > now + grace_ms:
        raise ValidationFailed.field(
            "ts", "Invalid ts value (in future)", message="Invalid ts value (in future)"
        )
    return ts


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationFailed.field(key, "Text field only")
    return value


def dedup_digest(data: Any) -> str:
    return hashlib.sha1(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def manifest_for(rt: Runtime, device: DeviceInfo) -> Any:
    version = device.manifest_version if device.policy == "DEVICE" else None
    return await devicetypes.manifest(rt, device.dtid, version)


async def ingest(rt: Runtime, principal: Principal, body: Any) -> str:
    """Store one message (``type`` message, default) or action (``type`` action); return its mid."""
    if not isinstance(body, dict):
        raise ValidationFailed.field("body", "JSON object expected")
    kind = body.get("type") or "message"
    if kind not in ("message", "action"):
        raise ValidationFailed.field("type", "Must be 'message' or 'action'")
    now = rt.clock.now_ms()
    client_ts = _int_ts(body.get("ts"), now, rt.settings.future_grace_seconds * 1000)
    data = body.get("data")
    if data is None:
        raise ValidationFailed.field("data", "Required parameter")
    if kind == "action":
        return await _ingest_action(rt, principal, body, data, client_ts, now)
    sdid = _text(body, "sdid") or (principal.did if principal.kind == "device" else None)
    if sdid is None:
        raise ValidationFailed.field("sdid", "Required parameter")
    if principal.kind == "device" and principal.did != sdid:
        raise Forbidden("A device token may only send messages as its own device")
    device = await rt.devices.get(sdid)
    await check_device(rt, principal, device.as_row(), Access.WRITE)
    manifest = await manifest_for(rt, device)
    normalized = manifest.normalize(data)
    row = message_row(device, manifest.version, normalized, client_ts if client_ts is not None else now, now)
    # Only messages with a client ts can be recognized as re-sent.
    digest = dedup_digest(normalized) if client_ts is not None else None
    return await rt.writer.submit(Pending("message", row, sdid, digest))


def message_row(device: DeviceInfo, mv: int, normalized: Any, ts: int, now: int) -> dict[str, Any]:
    """The stored columns of a normalized message of ``device`` (live or imported)."""
    return {
        "mid": new_message_id(now),
        "sdid": device.id,
        "sdtid": device.dtid,
        "uid": device.uid,
        "ts": ts,
        "cts": now,
        "mv": mv,
        "data": normalized,
    }


def history_message(rt: Runtime, device: DeviceInfo, manifest: Any, body: Any, now: int) -> Pending:
    """One imported historical message, checked and normalized exactly as ``ingest`` does, except
    that its ``ts`` is required; raises ``ValidationFailed`` for a bad one. Its dedup key is that of a
    re-sent live message, so an import overlapping what the device sent (or a re-run) adds nothing."""
    if not isinstance(body, dict):
        raise ValidationFailed.field("body", "JSON object expected")
    ts = _int_ts(body.get("ts"), now, rt.settings.future_grace_seconds * 1000)
    if ts is None:
        raise ValidationFailed.field("ts", "Required parameter")
    data = body.get("data")
    if data is None:
        raise ValidationFailed.field("data", "Required parameter")
    normalized = manifest.normalize(data)
    row = message_row(device, manifest.version, normalized, ts, now)
    return Pending("message", row, device.id, dedup_digest(normalized), history=True)


async def _ingest_action(
    rt: Runtime, principal: Principal, body: dict[str, Any], data: Any, client_ts: int | None, now: int
) -> str:
    ddid = _text(body, "ddid")
    if ddid is None:
        raise ValidationFailed.field("ddid", "Required parameter")
    sdid = _text(body, "sdid")
    if principal.kind == "device" and sdid is not None and sdid != principal.did:
        raise Forbidden("A device token may only send as its own device")
    if principal.kind == "device":
        sdid = principal.did
    elif sdid is not None:
        # A user or application names the source itself: only a device it may read, so an action
        # cannot be made to look as if it came from someone else's device.
        source = await rt.devices.get(sdid)
        await check_device(rt, principal, source.as_row(), Access.READ)
    device = await rt.devices.get(ddid)
    await check_device(rt, principal, device.as_row(), Access.WRITE)
    manifest = await manifest_for(rt, device)
    normalized = manifest.normalize_actions(data)  # also refuses keys besides "actions"
    row = {
        "mid": new_message_id(now),
        "ddid": ddid,
        "ddtid": device.dtid,
        "sdid": sdid,
        "uid": device.uid,
        "ts": client_ts if client_ts is not None else now,
        "cts": now,
        "mv": manifest.version,
        "data": normalized,
    }
    return await rt.writer.submit(Pending("action", row, ddid))


async def publish_committed(rt: Runtime, items: list[Pending]) -> None:
    """Fast path for live consumers: each stored message/action on the bus (after the commit);
    imported history is not live."""
    for item in items:
        if item.history:
            continue
        subject = f"message.{item.did}" if item.kind == "message" else f"action.{item.did}"
        await rt.bus.publish(subject, item.public())
