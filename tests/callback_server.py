"""A real HTTP server on 127.0.0.1 standing in for subscribers' callback endpoints.

Each path under ``/cb/<name>`` is one endpoint whose behaviour a test sets (``ok``, ``fail`` = 500,
``hang``, ``redirect``, ``huge``; or a list of statuses to answer in turn). Every POST is recorded
with its headers and body, and its OAuth 1.0 signature is verified here with oauthlib's *server* side
(``ResourceEndpoint``), independently of ThingCloud's signing code, plus the ``oauth_body_hash``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from oauthlib.oauth1 import RequestValidator, ResourceEndpoint
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .conftest import free_port


class Validator(RequestValidator):
    """ARTIK's scheme: consumer key = token = client id, both secrets = the client secret."""

    def __init__(self, secrets: dict[str, str]) -> None:
        super().__init__()
        self.secrets = secrets
        self.seen: set[tuple[str, str, str]] = set()

    enforce_ssl = False  # the test endpoint is plain HTTP on loopback
    client_key_length = (20, 64)
    access_token_length = (20, 64)
    nonce_length = (10, 64)

    @property
    def safe_characters(self) -> set[str]:
        return set(string.ascii_letters + string.digits)

    @property
    def dummy_client(self) -> str:
        return "dummyclientdummyclientdummyclient"

    @property
    def dummy_access_token(self) -> str:
        return "dummytokendummytokendummytoken00"

    def validate_client_key(self, client_key: str, request: Any) -> bool:
        return client_key in self.secrets

    def validate_access_token(self, client_key: str, token: str, request: Any) -> bool:
        return token == client_key

    def validate_timestamp_and_nonce(
        self,
        client_key: str,
        timestamp: str,
        nonce: str,
        request: Any,
        request_token: Any = None,
        access_token: Any = None,
    ) -> bool:
        key = (client_key, timestamp, nonce)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def validate_realms(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def get_client_secret(self, client_key: str, request: Any) -> str:
        return self.secrets.get(client_key, "dummy")

    def get_access_token_secret(self, client_key: str, token: str, request: Any) -> str:
        return self.secrets.get(client_key, "dummy")


@dataclass
class Received:
    name: str
    url: str
    headers: dict[str, str]
    body: bytes
    signed: bool
    signature_valid: bool
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class CallbackServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.secrets: dict[str, str] = {}
        self.validator = Validator(self.secrets)
        self.endpoint = ResourceEndpoint(self.validator)
        self.behaviour: dict[str, Any] = {}
        self.received: list[Received] = []
        self.events: list[tuple[str, str, float]] = []  # (name, what, when)
        self.hang_seconds = 5.0
        self.lock = threading.Lock()
        app = Starlette(routes=[Route("/cb/{name}", self.handle, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def url(self, name: str, query: str = "user=earl") -> str:
        return f"{self.base}/cb/{name}" + (f"?{query}" if query else "")

    def start(self) -> CallbackServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "callback server did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def _verify(self, url: str, headers: dict[str, str], body: bytes) -> tuple[bool, bool]:
        auth = headers.get("authorization", "")
        if not auth.startswith("OAuth "):
            return False, False
        valid, _request = self.endpoint.validate_protected_resource_request(
            url, http_method="POST", body=body.decode(), headers=headers
        )
        params = dict(parse_qsl(auth[6:].replace('"', "").replace(", ", "&")))
        digest = base64.b64encode(hashlib.sha1(body).digest()).decode()
        return True, bool(valid) and params.get("oauth_body_hash") == digest

    async def handle(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        url = str(request.url)
        signed, valid = self._verify(url, headers, body)
        with self.lock:
            self.received.append(Received(name, url, headers, body, signed, valid))
        mode = self.behaviour.get(name, "ok")
        if isinstance(mode, list):
            mode = mode.pop(0) if mode else "ok"
        if mode == "hang":
            self.events.append((name, "hang-start", time.monotonic()))
            await asyncio.sleep(self.hang_seconds)
            self.events.append((name, "hang-end", time.monotonic()))
            return Response("late", status_code=200)
        if mode == "redirect":
            return Response(status_code=302, headers={"Location": f"{self.base}/cb/{name}-redirected"})
        if mode == "huge":

            async def chunks() -> Any:
                for _ in range(1000):
                    yield b"x" * 65536

            return StreamingResponse(chunks(), status_code=200)
        if isinstance(mode, int):
            return Response(str(mode), status_code=mode)
        if mode == "fail":
            return Response("down", status_code=500)
        return Response("ok", status_code=200)

    def of(self, name: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.name == name]

    def notifications(self, name: str) -> list[Received]:
        return [r for r in self.of(name) if r.signed]

    def confirmations(self, name: str) -> list[Received]:
        return [r for r in self.of(name) if not r.signed]

    def wait(
        self, name: str, count: int = 1, *, signed: bool | None = None, timeout: float = 30
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.of(name)
            if signed is not None:
                got = [r for r in got if r.signed == signed]
            if len(got) >= count:
                return got
            assert time.monotonic() < deadline, f"{name}: {len(got)} of {count} callbacks received"
            time.sleep(0.05)
