"""The REST hot path: a pure-ASGI dispatcher that serves a few high-rate endpoints (sending messages
and actions) without FastAPI's per-request machinery.

It sits just inside ``RequestContext`` (request id, CORS and rate-limit headers, metrics, access log),
so those still apply; authentication, permissions and rate limits are the same functions every route
uses, and errors are rendered by the same ``as_api_error`` into the same ARTIK body. Measured on these
machines, FastAPI's middleware stack and router cost more per request than the ingest itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from thingcloud.rest.errors import as_api_error

Endpoint = Callable[[Request], Awaitable[Response]]


class HotPath:
    def __init__(self, app: ASGIApp, endpoints: Mapping[tuple[str, str], Endpoint]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            self.endpoints.get((scope.get("method", ""), scope.get("path", "")))
            if scope["type"] == "http"
            else None
        )
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = _Template(scope["path"])  # the metrics label, as the router would set it
        scope.setdefault("state", {})["device_data"] = True  # RequestContext: the access-log choice
        try:
            response = await endpoint(Request(scope, receive))
        except ClientDisconnect:
            return  # the client left before its body arrived (a load generator stopping): no one to answer
        except Exception as exc:
            error = as_api_error(exc)
            request_id = scope.get("state", {}).get("request_id")
            headers = {"Retry-After": "1"} if error.status == 503 else None
            response = Response(
                orjson.dumps(error.body(request_id)), error.status, headers, media_type="application/json"
            )
        await response(scope, receive, send)


class _Template:
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path
