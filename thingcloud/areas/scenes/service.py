"""Scenes API logic (REFERENCE.md §3.9, §4.12, S9): create, read, update, delete, list, activate.

A Scene's ``actions`` are rule actions (``thingcloud.areas.rules.language``: a ``ddid`` or an
``every`` selector, parameters made of ``value``/``valueFrom``/operations), compiled and checked
against the target manifests exactly as a rule's ``then``, and activation sends them through the
rules' sending path (``rules.actions.plan``/``send`` → ``messages.service.ingest``, the path of
``POST /actions``), with the caller's rights. Who may touch a scene: the Scene device type
permission (``auth.permissions.check_scenes``), then its owner (user token) or an application the
owner authorized (application token), and only through the application that created it — the lists
show "the Scenes created by the current application". Changing or activating a scene also needs
WRITE on every device it sends to (READ on ``valueFrom`` devices).

A scene using a device that is deleted is invalidated (``invalidated_on``, ``error``) by
``invalidate_device``, which the ``device.deleted`` feed entry triggers where rules are invalidated
(``rules.engine``); it then answers 400 on activation and still 200 on GET.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Text, cast, func, select, update

from thingcloud import tables as t
from thingcloud.areas.devices.service import page_bounds
from thingcloud.areas.messages.service import manifest_for
from thingcloud.areas.rules import actions as rule_actions
from thingcloud.areas.rules.language import Program, compile_actions
from thingcloud.areas.rules.service import check_program, lookup, text_problems
from thingcloud.areas.scenes.schemas import Scene, SceneCreate, SceneUpdate
from thingcloud.auth.permissions import (
    Access,
    Principal,
    check_device,
    check_scenes,
    check_user,
    has_granted,
    require_user_token,
)
from thingcloud.errors import FieldError, Forbidden, NotFound, RateLimited, ValidationFailed
from thingcloud.ids import new_id
from thingcloud.runtime import Runtime

INVALID_SCENE = "Invalid scene"


def to_scene(row: Any) -> Scene:
    return Scene(
        id=row["id"],
        uid=row["uid"],
        aid=row["aid"],
        name=row["name"],
        description=row["description"],
        actions=row["actions"],
        invalidatedOn=row["invalidated_on"],
        error=row["error"],
        createdOn=row["created_on"],
        modifiedOn=row["modified_on"],
    )


async def scene_row(rt: Runtime, scene_id: str) -> Any:
    async with rt.db.read() as conn:
        row = (await conn.execute(select(t.scenes).where(t.scenes.c.id == scene_id))).mappings().first()
    if row is None:
        raise NotFound(f"Scene {scene_id} not found")
    return row


async def visible_scene(rt: Runtime, principal: Principal, scene_id: str, access: Access) -> Any:
    """The scene, if the caller may use it with ``access`` on the Scene device type (404 unknown;
    403 someone else's, or created by another application)."""
    check_scenes(principal, access)
    row = await scene_row(rt, scene_id)
    if principal.kind == "user" and principal.uid != row["uid"]:
        raise Forbidden.missing("scene", [scene_id])
    if principal.kind == "app" and not await has_granted(rt, row["uid"], str(principal.aid)):
        raise Forbidden.missing("scene", [scene_id])
    if row["aid"] != principal.aid:
        raise Forbidden.missing("scene", [scene_id])
    return row


async def compile_scene(rt: Runtime, actions: Any) -> Program:
    return await compile_actions(actions, lookup(rt), "actions", INVALID_SCENE)


async def checked(
    rt: Runtime, principal: Principal, name: str | None, description: str | None, actions: Any, creating: bool
) -> Program | None:
    """Every field problem at once (400 "Invalid scene" with JSON paths), then the rights over the
    devices the actions use (403). The program is None when ``actions`` is not being set."""
    problems = text_problems(name, description, creating)
    program = None
    if actions is None and creating:
        problems.append(FieldError("actions", ("Required parameter",)))
    elif actions is not None:
        try:
            program = await compile_scene(rt, actions)
        except ValidationFailed as exc:
            problems += exc.errors
    if problems:
        raise ValidationFailed(INVALID_SCENE, problems)
    if program is not None:
        await check_program(rt, principal, program, actions)
    return program


async def create_scene(rt: Runtime, principal: Principal, body: SceneCreate) -> Scene:
    """``POST /scenes`` (S72): the owner is the body's ``uid`` (required with an application token)
    or the token's user."""
    check_scenes(principal, Access.WRITE)
    uid = body.uid or principal.uid
    if uid is None:
        raise ValidationFailed.field("uid", "Required parameter")
    await check_user(rt, principal, uid, Access.READ)
    await checked(rt, principal, body.name, body.description, body.actions, creating=True)
    now = rt.clock.now_ms()
    scene_id = new_id()
    async with rt.db.write() as conn:
        await conn.execute(
            t.scenes.insert().values(
                id=scene_id,
                uid=uid,
                aid=principal.aid,
                name=body.name,
                description=body.description,
                actions=body.actions,
                invalidated_on=None,
                error=None,
                created_on=now,
                modified_on=now,
            )
        )
    return to_scene(await scene_row(rt, scene_id))


async def update_scene(rt: Runtime, principal: Principal, scene_id: str, body: SceneUpdate) -> Scene:
    """``PUT /scenes/{sceneId}`` (S73): new actions are checked like on create and make an
    invalidated scene valid again; ``uid`` never changes."""
    await visible_scene(rt, principal, scene_id, Access.WRITE)
    await checked(rt, principal, body.name, body.description, body.actions, creating=False)
    changes: dict[str, Any] = {}
    if body.actions is not None:
        changes.update(actions=body.actions, invalidated_on=None, error=None)
    for key in ("name", "description"):
        value = getattr(body, key)
        if value is not None:
            changes[key] = value
    if changes:
        changes["modified_on"] = rt.clock.now_ms()
        async with rt.db.write() as conn:
            await conn.execute(update(t.scenes).where(t.scenes.c.id == scene_id).values(**changes))
    return to_scene(await scene_row(rt, scene_id))


async def delete_scene(rt: Runtime, principal: Principal, scene_id: str) -> Scene:
    """``DELETE /scenes/{sceneId}`` (S76); also an invalidated one (its devices may be gone)."""
    row = await visible_scene(rt, principal, scene_id, Access.WRITE)
    async with rt.db.write() as conn:
        await conn.execute(t.scenes.delete().where(t.scenes.c.id == scene_id))
    return to_scene(row)


async def get_scene(rt: Runtime, principal: Principal, scene_id: str) -> Scene:
    return to_scene(await visible_scene(rt, principal, scene_id, Access.READ))


async def list_user_scenes(
    rt: Runtime, principal: Principal, uid: str, count: int | None, offset: int | None
) -> tuple[list[Scene], int, int]:
    """``GET /users/{uid}/scenes`` (S9): the user's scenes created by the token's application."""
    check_scenes(principal, Access.READ)
    limit, offset = page_bounds(count, offset)
    await check_user(rt, principal, uid, Access.READ)
    s = t.scenes.c
    where = [s.uid == uid, s.aid == principal.aid]
    async with rt.db.read() as conn:
        total = await conn.scalar(select(func.count()).select_from(t.scenes).where(*where)) or 0
        query = select(t.scenes).where(*where).order_by(s.created_on, s.id).limit(limit).offset(offset)
        rows = (await conn.execute(query)).mappings().all()
    return [to_scene(row) for row in rows], int(total), offset


async def list_scenes(
    rt: Runtime, principal: Principal, count: int | None, offset: int | None
) -> tuple[list[Scene], int, int]:
    """``GET /scenes`` (S75): a user token's own scenes created by its application."""
    check_scenes(principal, Access.READ)
    return await list_user_scenes(rt, principal, require_user_token(principal), count, offset)


async def activate_scene(rt: Runtime, principal: Principal, scene_id: str) -> tuple[Scene, list[str]]:
    """``POST /scenes/{sceneId}`` (S77): send every action now, as ``POST /actions`` would (one action
    message per target device, ``every`` expanded to the owner's devices of the type, ``valueFrom``
    read from the last values). All or nothing up to the sending: an invalid scene (400), a missing
    right (403), a resolved parameter the target's manifest refuses (400) or the caller's message
    rate limit (429, each action counts as one ``POST /actions``) send nothing. Returns the scene and
    the mids of the actions stored."""
    row = await visible_scene(rt, principal, scene_id, Access.READ)
    if row["invalidated_on"] is not None:
        reason = (row["error"] or {}).get("message") or "a device it uses was deleted"
        raise ValidationFailed.field("actions", f"The scene is invalid: {reason}", message=INVALID_SCENE)
    # A device deleted a moment ago, before its feed entry invalidated the scene, fails here (400).
    program = await compile_scene(rt, row["actions"])
    await check_program(rt, principal, program, row["actions"])
    planned: list[dict[str, Any]] = []
    for action in program.actions:
        single = Program((), (action,))
        for item in await rule_actions.plan(rt, row, single, matched={}):
            device = await rt.devices.get(item["ddid"])
            await check_device(rt, principal, device.as_row(), Access.WRITE)
            manifest = await manifest_for(rt, device)
            try:
                manifest.normalize_action(item["name"], item["parameters"], f"actions.{action.index}")
            except ValidationFailed as exc:
                raise ValidationFailed(INVALID_SCENE, exc.errors) from None
            planned.append(item)
    await count_messages(rt, principal, len(planned))
    results = await rule_actions.send(rt, row, planned, principal)
    return to_scene(row), [r["mid"] for r in results if "mid" in r]


async def count_messages(rt: Runtime, principal: Principal, sent: int) -> None:
    """Each action counts against the caller's message rate limit, as one ``POST /actions`` does."""
    actor, key = principal.rate_actor
    for _ in range(sent):
        status = await rt.limiter.hit(actor, key, "messages")
        if status is not None and status.exceeded:
            raise RateLimited(f"{status.exceeded} rate limit exceeded")


async def invalidate_device(rt: Runtime, did: str) -> None:
    """A device that scenes use was deleted: they are invalid (activation answers 400, GET says why).
    Idempotent: the feed delivers an entry at least once."""
    s = t.scenes.c
    async with rt.db.read() as conn:
        found = (
            await conn.execute(
                select(s.id, s.actions).where(s.invalidated_on.is_(None), cast(s.actions, Text).contains(did))
            )
        ).all()
    if not found:
        return
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        for scene_id, actions in found:
            where = next(
                (f"actions.{i}" for i, a in enumerate(actions or []) if did in json.dumps(a)), "actions"
            )
            error = {
                "errorCode": 404,
                "fieldPath": {"path": [{"text": where}]},
                "messageArgs": [did],
                "messageKey": "scene.device.deleted",
                "message": f"Device {did} used by the scene was deleted",
            }
            await conn.execute(
                update(t.scenes)
                .where(s.id == scene_id, s.invalidated_on.is_(None))
                .values(invalidated_on=now, error=error)
            )
