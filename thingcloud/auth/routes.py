"""JSON endpoints of the accounts server: ``/token``, ``/tokenInfo``, ``/checkToken``, ``/revokeToken``,
``/device/code``, and their ``/v1.1/accounts/*`` aliases that the SDKs call on the API host.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from thingcloud.auth import oauth, tokens
from thingcloud.errors import Forbidden, Unauthorized
from thingcloud.rest.deps import Caller, RuntimeDep, client_address

router = APIRouter(tags=["Tokens"])


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int | None
    scope: str
    refresh_token: str | None = None


class TokenInfo(BaseModel):
    client_id: str | None = None
    user_id: str | None = None
    device_id: str | None = None
    expires_in: int | None = None


class TokenInfoEnvelope(BaseModel):
    data: TokenInfo


class MessageData(BaseModel):
    message: str


class MessageEnvelope(BaseModel):
    data: MessageData


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str | None = None


class DeviceCodeResponse(BaseModel):
    device_code: str
    user_code: str
    verification_url: str
    expires_in: int
    interval: int


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@router.post("/token", response_model=TokenResponse, summary="Obtain an access token (OAuth2)")
@router.post("/v1.1/accounts/token", response_model=TokenResponse, summary="Obtain an access token (alias)")
async def token(request: Request, rt: RuntimeDep) -> JSONResponse:
    issued = await oauth.exchange(
        rt,
        await _form(request),
        request.headers.get("authorization"),
        _bearer(request),
        client_address(request.scope, rt),
    )
    return JSONResponse(issued.oauth_body(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


# ``exclude_unset``: the body carries only what the token is bound to (REFERENCE.md §1.4): no
# ``user_id`` for application tokens, ``device_id`` for device tokens only.
@router.get(
    "/tokenInfo",
    response_model=TokenInfoEnvelope,
    response_model_exclude_unset=True,
    summary="Information about the token used",
)
@router.get(
    "/v1.1/accounts/tokenInfo",
    response_model=TokenInfoEnvelope,
    response_model_exclude_unset=True,
    summary="Token information (alias)",
)
async def token_info(rt: RuntimeDep, caller: Caller) -> TokenInfoEnvelope:
    return TokenInfoEnvelope(data=TokenInfo(**tokens.token_info(rt, caller)))


@router.post(
    "/checkToken", response_model=MessageEnvelope, summary="Check a token (deprecated: see tokenInfo)"
)
@router.post("/v1.1/accounts/checkToken", response_model=MessageEnvelope, summary="Check a token (alias)")
async def check_token(rt: RuntimeDep, body: TokenRequest | None = None) -> MessageEnvelope:
    if body is None or not body.token:
        raise Unauthorized()
    await tokens.authenticate(rt, body.token)
    return MessageEnvelope(data=MessageData(message="Valid token"))


@router.put("/revokeToken", response_model=MessageEnvelope, summary="Revoke the user token used")
async def revoke_token(rt: RuntimeDep, caller: Caller) -> MessageEnvelope:
    if caller.kind == "device":
        raise Forbidden("Device tokens are revoked with DELETE /v1.1/devices/{did}/tokens")
    await tokens.revoke_token(rt, caller)
    return MessageEnvelope(data=MessageData(message="Token successfully revoked"))


@router.post("/device/code", response_model=DeviceCodeResponse, summary="Start the limited-input device flow")
async def device_code(request: Request, rt: RuntimeDep) -> dict[str, Any]:
    form = await _form(request)
    return await oauth.start_device_flow(rt, form.get("client_id"), form.get("scope"))
