"""HTTP routes that send messages and actions: ``POST /v1.1/messages`` and ``POST /v1.1/actions``.

These are the hot path, so they are plain Starlette endpoints served by ``rest/hotpath.py`` (no
FastAPI dependency machinery, router or pydantic per request): the body is decoded with orjson,
authentication and rate limits go through the same ``authenticate_scope`` as every route, errors
through the same ``as_api_error``. Their OpenAPI
entries are written by hand below and merged into the generated document by ``create_app``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from thingcloud.areas.messages import retention
from thingcloud.areas.messages.service import ingest
from thingcloud.errors import PayloadTooLarge, ValidationFailed
from thingcloud.rest.deps import Caller, RuntimeDep, authenticate_scope
from thingcloud.runtime import Runtime


async def _body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Message body exceeds {limit} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"Message body exceeds {limit} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValidationFailed.field("body", "Malformed JSON body") from None


def _answer(mid: str) -> Response:
    return Response(b'{"data":{"mid":"' + mid.encode() + b'"}}', media_type="application/json")


async def send_message(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    principal = await authenticate_scope(rt, request.scope, "messages")
    body = await _body(request, rt.settings.max_message_bytes)
    return _answer(await ingest(rt, principal, body))


async def send_actions(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    principal = await authenticate_scope(rt, request.scope, "messages")
    body = await _body(request, rt.settings.max_message_bytes)
    if isinstance(body, dict):
        body = {**body, "type": "action"}
    return _answer(await ingest(rt, principal, body))


# Served by thingcloud.rest.hotpath.HotPath, keyed by (method, path).
endpoints = {
    ("POST", "/v1.1/messages"): send_message,
    ("POST", "/v1.1/actions"): send_actions,
}

_ERRORS = {
    "400": {
        "description": "Validation error (4001): missing sdid/ddid/data, invalid ts, "
        "data not matching the manifest"
    },
    "401": {"description": "Missing or invalid token"},
    "403": {"description": "No WRITE permission on the device"},
    "404": {"description": "Unknown device"},
    "413": {"description": "Body larger than the configured limit"},
    "429": {"description": "Rate limit exceeded"},
}
_MID = {
    "type": "object",
    "properties": {"data": {"type": "object", "properties": {"mid": {"type": "string"}}}},
}


def _operation(
    summary: str, description: str, example: dict[str, Any], op_id: str, tag: str
) -> dict[str, Any]:
    return {
        "tags": [tag],
        "summary": summary,
        "description": description,
        "operationId": op_id,
        "security": [{"bearer": []}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}, "example": example}},
        },
        "responses": {
            "200": {"description": "Stored (committed)", "content": {"application/json": {"schema": _MID}}},
            **_ERRORS,
        },
    }


OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/v1.1/messages": {
        "post": _operation(
            "Send a message (or, legacy, an action)",
            "Normalized against the source device's manifest and stored; the 200 is sent only after the "
            "commit. A re-sent message (same device, client `ts` and data within the dedup window) "
            "gets the original `mid` back.",
            {"sdid": "<did>", "ts": 1700000000000, "type": "message", "data": {"temp": 21.5}},
            "send_message",
            "Messages",
        )
    },
    "/v1.1/actions": {
        "post": _operation(
            "Send actions to a device",
            "Actions must exist in the destination device's manifest; stored and delivered to the device.",
            {"ddid": "<did>", "type": "action", "data": {"actions": [{"name": "setOn", "parameters": {}}]}},
            "send_actions",
            "Messages",
        )
    },
}


# --- Retention (beyond ARTIK): a FastAPI router, documented like every other route --------------------

retention_router = APIRouter(prefix="/v1.1/devices", tags=["Messages"])


class RetentionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    days: int | None = Field(default=None, description="Days to keep this device's data; null: the default")


class Retention(BaseModel):
    did: str
    days: int | None
    defaultDays: int | None
    effectiveDays: int | None


class RetentionEnvelope(BaseModel):
    data: Retention


@retention_router.get(
    "/{did}/retention",
    response_model=RetentionEnvelope,
    summary="Get a device's message retention (extension)",
)
async def get_retention(rt: RuntimeDep, caller: Caller, did: str) -> RetentionEnvelope:
    return RetentionEnvelope(data=Retention(**await retention.get_retention(rt, caller, did)))


@retention_router.put(
    "/{did}/retention",
    response_model=RetentionEnvelope,
    summary="Set a device's message retention (extension)",
)
async def put_retention(rt: RuntimeDep, caller: Caller, did: str, body: RetentionBody) -> RetentionEnvelope:
    return RetentionEnvelope(data=Retention(**await retention.set_retention(rt, caller, did, body.days)))
