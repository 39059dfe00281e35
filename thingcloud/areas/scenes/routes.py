"""HTTP routes of scenes (S9, S72–S77)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query

from thingcloud.areas.scenes import service
from thingcloud.areas.scenes.schemas import (
    SceneActivation,
    SceneActivationEnvelope,
    SceneCreate,
    SceneEnvelope,
    SceneList,
    ScenesEnvelope,
    SceneUpdate,
    error_responses,
)
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter(prefix="/v1.1", tags=["Scenes"])

COUNT = Query(None, description="Page size, 1-100 (default 100)")
OFFSET = Query(None, description="Items to skip (default 0)")


@router.get(
    "/users/{uid}/scenes",
    response_model=ScenesEnvelope,
    summary="Get a user's scenes created by the current application",
    description="User or application token (the user must have authorized the application); the "
    "application needs READ on the Scene device type `cloud.artik.scene`. Offset-paged, in "
    "`data.scenes`.",
    responses=error_responses(400, 401, 403),
)
async def get_user_scenes(
    rt: RuntimeDep, caller: Caller, uid: str, count: int | None = COUNT, offset: int | None = OFFSET
) -> ScenesEnvelope:
    items, total, offset = await service.list_user_scenes(rt, caller, uid, count, offset)
    return ScenesEnvelope(data=SceneList(scenes=items), total=total, offset=offset, count=len(items))


@router.get(
    "/scenes",
    response_model=ScenesEnvelope,
    summary="Get the scenes created by the current application",
    description="User token only: the token's user's scenes created by its application. Offset-paged, "
    "in `data.scenes`.",
    responses=error_responses(400, 401, 403),
)
async def get_scenes(
    rt: RuntimeDep, caller: Caller, count: int | None = COUNT, offset: int | None = OFFSET
) -> ScenesEnvelope:
    items, total, offset = await service.list_scenes(rt, caller, count, offset)
    return ScenesEnvelope(data=SceneList(scenes=items), total=total, offset=offset, count=len(items))


@router.post(
    "/scenes",
    response_model=SceneEnvelope,
    summary="Create a scene",
    description="`name`, `actions` (rule actions: `ddid` or an `every` selector, `action`, "
    "`parameters` of `value`/`valueFrom`/operations, checked against the target manifests), "
    "`description`, `uid` (required with an application token). Needs WRITE on the Scene device type "
    "and on every device the scene sends to (READ on `valueFrom` devices).",
    responses=error_responses(400, 401, 403, 404),
)
async def create_scene(rt: RuntimeDep, caller: Caller, body: SceneCreate) -> SceneEnvelope:
    return SceneEnvelope(data=await service.create_scene(rt, caller, body))


@router.get(
    "/scenes/{sceneId}",
    response_model=SceneEnvelope,
    summary="Get a scene",
    description="A scene made invalid by a deleted device still answers, with `invalidatedOn` and `error`.",
    responses=error_responses(401, 403, 404),
)
async def get_scene(rt: RuntimeDep, caller: Caller, sceneId: str) -> SceneEnvelope:
    return SceneEnvelope(data=await service.get_scene(rt, caller, sceneId))


@router.put(
    "/scenes/{sceneId}",
    response_model=SceneEnvelope,
    summary="Update a scene",
    description="Any of `name`, `description`, `actions` (checked as on create; new actions make an "
    "invalidated scene valid again). `uid` is ignored.",
    responses=error_responses(400, 401, 403, 404),
)
async def update_scene(rt: RuntimeDep, caller: Caller, sceneId: str, body: SceneUpdate) -> SceneEnvelope:
    return SceneEnvelope(data=await service.update_scene(rt, caller, sceneId, body))


@router.delete(
    "/scenes/{sceneId}",
    response_model=SceneEnvelope,
    summary="Delete a scene",
    responses=error_responses(401, 403, 404),
)
async def delete_scene(rt: RuntimeDep, caller: Caller, sceneId: str) -> SceneEnvelope:
    return SceneEnvelope(data=await service.delete_scene(rt, caller, sceneId))


@router.post(
    "/scenes/{sceneId}",
    response_model=SceneActivationEnvelope,
    summary="Activate a scene (send its actions)",
    description="Sends every action as POST /actions does: one action message per target device "
    "(`every` expanded to the owner's devices of the type), stored and delivered to connected devices. "
    "Each action counts against the caller's message rate limit. Nothing is sent on 400 (scene "
    "invalidated by a deleted device, or a `valueFrom` parameter the target refuses), 403 or 429. "
    "Beyond ARTIK: the answer also lists the `mids` of the actions sent.",
    responses=error_responses(400, 401, 403, 404, 429),
)
async def activate_scene(
    rt: RuntimeDep, caller: Caller, sceneId: str, body: Any = Body(None, description="Ignored (may be {})")
) -> SceneActivationEnvelope:
    scene, mids = await service.activate_scene(rt, caller, sceneId)
    return SceneActivationEnvelope(data=SceneActivation(**scene.model_dump(), mids=mids))
