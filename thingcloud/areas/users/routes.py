"""HTTP routes of the users area: ``/users/self`` and ``/users/{uid}/properties`` (S1–S5)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from thingcloud.areas.users import service
from thingcloud.areas.users.schemas import AppPropertiesBody, AppPropertiesEnvelope, UserEnvelope
from thingcloud.auth.permissions import Access, check_user, require_application, require_user_token
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter(prefix="/v1.1/users", tags=["Users"])

AidQuery = Query(default=None, min_length=1, max_length=64, description="Must be the token's application")


@router.get("/self", response_model=UserEnvelope, summary="Get the current user's profile")
async def get_self(rt: RuntimeDep, caller: Caller) -> UserEnvelope:
    uid = require_user_token(caller)
    return UserEnvelope(data=await service.get_user(rt, uid))


@router.get(
    "/{uid}/properties", response_model=AppPropertiesEnvelope, summary="Get a user's application properties"
)
async def get_user_properties(
    rt: RuntimeDep, caller: Caller, uid: str, aid: str | None = AidQuery
) -> AppPropertiesEnvelope:
    token_aid = require_application(caller)
    await check_user(rt, caller, uid, Access.READ)
    return AppPropertiesEnvelope(data=await service.get_properties(rt, uid, token_aid, aid))


@router.post(
    "/{uid}/properties",
    response_model=AppPropertiesEnvelope,
    summary="Create a user's application properties",
)
async def create_user_properties(
    rt: RuntimeDep, caller: Caller, uid: str, body: AppPropertiesBody, aid: str | None = AidQuery
) -> AppPropertiesEnvelope:
    token_aid = require_application(caller)
    await check_user(rt, caller, uid, Access.WRITE)
    props = await service.create_properties(rt, uid, token_aid, aid, body.aid, body.properties)
    return AppPropertiesEnvelope(data=props)


@router.put(
    "/{uid}/properties",
    response_model=AppPropertiesEnvelope,
    summary="Update a user's application properties",
)
async def update_user_properties(
    rt: RuntimeDep, caller: Caller, uid: str, body: AppPropertiesBody, aid: str | None = AidQuery
) -> AppPropertiesEnvelope:
    token_aid = require_application(caller)
    await check_user(rt, caller, uid, Access.WRITE)
    props = await service.update_properties(rt, uid, token_aid, aid, body.aid, body.properties)
    return AppPropertiesEnvelope(data=props)


@router.delete(
    "/{uid}/properties",
    response_model=AppPropertiesEnvelope,
    summary="Delete a user's application properties",
)
async def delete_user_properties(
    rt: RuntimeDep, caller: Caller, uid: str, aid: str | None = AidQuery
) -> AppPropertiesEnvelope:
    token_aid = require_application(caller)
    await check_user(rt, caller, uid, Access.WRITE)
    return AppPropertiesEnvelope(data=await service.delete_properties(rt, uid, token_aid, aid))
