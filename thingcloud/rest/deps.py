"""FastAPI dependencies shared by every router: the runtime, the caller, the client address.

``authenticated`` resolves the bearer token through ``auth.tokens``, counts the call against the
caller's rate limit and leaves the limit headers for the middleware to send. Hot-path routes written
without FastAPI call ``authenticate_scope`` — the same function — directly.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.types import Scope

from thingcloud.auth.permissions import Principal
from thingcloud.auth.tokens import authenticate, parse_authorization
from thingcloud.errors import RateLimited, Unauthorized
from thingcloud.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def client_address(scope: Scope, rt: Runtime) -> str:
    """The caller's address; ``X-Forwarded-For`` is believed only from a configured trusted proxy."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if peer in rt.settings.trusted_proxies:
        for key, value in scope.get("headers", []):
            if key == b"x-forwarded-for":
                hops = [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
                # The right-most hop that is not one of our proxies is the real client.
                for hop in reversed(hops):
                    if hop not in rt.settings.trusted_proxies:
                        return hop
    return peer


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def authenticate_scope(rt: Runtime, scope: Scope, category: str = "rest") -> Principal:
    state: dict[str, Any] = scope.setdefault("state", {})
    try:
        principal = await authenticate(rt, parse_authorization(_header(scope, b"authorization")))
    except Unauthorized:
        # Count failed attempts against the address, so token guessing is throttled too.
        status = await rt.limiter.hit("anonymous", client_address(scope, rt))
        state["rate_status"] = status
        if status is not None and status.exceeded:
            raise RateLimited(f"{status.exceeded} rate limit exceeded") from None
        raise
    actor, key = principal.rate_actor
    status = await rt.limiter.hit(actor, key, category)
    state["rate_status"] = status
    if status is not None and status.exceeded:
        prefix = "DEVICE " if actor == "device" else ""
        raise RateLimited(f"{prefix}{status.exceeded} rate limit exceeded")
    return principal


async def authenticated(request: Request) -> Principal:
    return await authenticate_scope(request.app.state.runtime, request.scope)


Caller = Annotated[Principal, Depends(authenticated)]
