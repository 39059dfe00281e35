"""Frames of the WebSocket channels (REFERENCE.md §5.2): parsing what clients send, rendering what
the server sends, and the error frames.

Errors come from the one error tree (``thingcloud/errors.py``): a service raises the same ``ApiError``
it raises for REST, and ``error_frame`` renders it as ``{"error": {"code", "message", "cid"}}``. The
WebSocket frames of ARTIK carry HTTP-like codes, so a field validation (4001 over REST, e.g. "Invalid
ts value") is sent with code 400 and its field errors; every other error keeps its own code.

Close codes: a refused or cut-off session gets its error frame first, then a close with
``CLOSE_POLICY`` (1008) and the error message as the reason; a client that lets its send queue fill
gets ``CLOSE_SLOW`` (1013, "try again later": it may reconnect, on ``/live`` with ``since=``).
"""

from __future__ import annotations

from typing import Any

import orjson

from thingcloud.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_SLOW = 1013

PING = orjson.dumps({"type": "ping"}).decode()
EVENT_NAMES = frozenset(
    {
        "device.new",
        "device.connected",
        "device.updated",
        "device.disconnected",
        "device.deleted",
        "device.status.online",
        "device.status.offline",
        "user.profile.updated",
    }
)


# The error frames of §5.2, as members of the error tree.
def invalid_json() -> BadRequest:
    return BadRequest("Bad Request")


def missing_sdid() -> BadRequest:
    return BadRequest("Missing sdid value")


def missing_ddid() -> BadRequest:
    return BadRequest("Missing ddid value")


def registration_timeout() -> BadRequest:
    return BadRequest("Registration timeout")


def not_registered() -> Unauthorized:
    return Unauthorized("Device not registered")


MAX_CID_CHARS = 128


def frame_cid(frame: dict[str, Any]) -> Any:
    """The correlation id a client put on a frame, echoed in our answers: a string or an integer of
    reasonable size. Anything else is "403 Wrong cid" (§5.2), answered without echoing it back."""
    cid = frame.get("cid")
    if cid is None:
        return None
    if isinstance(cid, bool) or not isinstance(cid, str | int) or len(str(cid)) > MAX_CID_CHARS:
        raise Forbidden("Wrong cid")
    return cid


def no_permission() -> Forbidden:
    return Forbidden("You do not have the right permission: devices")


def replaced(did: str) -> Conflict:
    return Conflict(f"Device {did} was registered on another connection")


def revoked(why: str) -> Unauthorized:
    return Unauthorized(f"Session closed: {why}")


def error_frame(error: ApiError, cid: Any = None, **extra: Any) -> str:
    code = error.status if isinstance(error, ValidationFailed) else error.error_code
    body: dict[str, Any] = {"code": code, "message": error.message}
    if isinstance(error, ValidationFailed) and error.errors:
        body["errors"] = [[e.render() for e in error.errors]]
    if cid is not None:
        body["cid"] = cid
    body.update(extra)
    return orjson.dumps({"error": body}).decode()


def parse_frame(raw: str | bytes | None, max_bytes: int) -> dict[str, Any]:
    """One client frame as a JSON object, or the contract's error (400 invalid JSON, 413 too big)."""
    if raw is None:
        raise invalid_json()
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Frame exceeds {max_bytes} bytes")
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_json() from None
    if not isinstance(frame, dict):
        raise invalid_json()
    return frame


def text_field(frame: dict[str, Any], key: str) -> str | None:
    """A non-empty string field; anything else counts as absent."""
    value = frame.get(key)
    return value if isinstance(value, str) and value else None


def registered_frame(cid: Any) -> str:
    # SAMI shows "code":"200"; the Swift SDK requires an int, so an int it is.
    return orjson.dumps({"data": {"message": "OK", "code": 200, "cid": cid}}).decode()


def list_frame(dids: list[str], cid: Any) -> str:
    return orjson.dumps({"data": {"code": 200, "message": dids, "cid": cid}}).decode()


def ack_frame(mid: str, cid: Any) -> str:
    return orjson.dumps({"data": {"mid": mid, "cid": cid}}).decode()


def action_frame(action: dict[str, Any]) -> str:
    """A stored action (``Pending.public()`` of an action) as the device channel sends it."""
    return orjson.dumps(
        {
            "ddid": action.get("ddid"),
            "mid": action.get("mid"),
            "type": "action",
            "ts": action.get("ts"),
            "data": action.get("data"),
        }
    ).decode()


def message_frame(message: dict[str, Any], seq: int) -> str:
    """A normalized message for ``/live``, with its resume cursor (the feed seq, as a string)."""
    return orjson.dumps({**message, "cursor": str(seq)}).decode()


def gap_frame(cursor: int, through: int) -> str:
    """On resume: the messages after ``cursor`` up to ``through`` were trimmed from the feed."""
    return orjson.dumps({"type": "gap", "cursor": str(cursor), "through": str(through)}).decode()


def event_frame(event: str, ts: int, data: dict[str, Any]) -> str:
    return orjson.dumps({"event": event, "ts": ts, "data": data}).decode()


def query_bool(value: str | None) -> bool | None:
    """Query booleans: true/false, 1/0 (REFERENCE.md §0.2); None when absent; anything else 400."""
    if value is None or value == "":
        return None
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValidationFailed.field("query", "Boolean field only")


def query_list(*values: str | None) -> list[str]:
    """Comma lists (``sdids=a,b``) merged with single values (``sdid=a``), in order, without repeats."""
    seen: dict[str, None] = {}
    for value in values:
        for part in (value or "").split(","):
            if part.strip():
                seen[part.strip()] = None
    return list(seen)


def event_matcher(patterns: list[str]) -> Any:
    """``events=device.*,user.profile.updated``: ``*`` matches any rest of the name."""
    if not patterns:
        return lambda _name: True
    exact = {p for p in patterns if "*" not in p}
    prefixes = tuple(p.split("*", 1)[0] for p in patterns if "*" in p)

    def matches(name: str) -> bool:
        return name in exact or (bool(prefixes) and name.startswith(prefixes))

    return matches
