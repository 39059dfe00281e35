"""Request and response models of the Scenes API (REFERENCE.md §3.9, §4.12, S9)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Scene(BaseModel):
    """J223 ``OutputScene`` / Swift ``Scene``; ``actions`` as sent on create (a list, §3.9).
    ``createdOn``/``modifiedOn`` are beyond ARTIK (extra fields are harmless to its clients)."""

    id: str
    uid: str
    aid: str | None = None
    name: str
    description: str | None = None
    actions: list[dict[str, Any]]
    invalidatedOn: int | None = None
    error: dict[str, Any] | None = None
    createdOn: int
    modifiedOn: int


class SceneEnvelope(BaseModel):
    data: Scene


class SceneList(BaseModel):
    scenes: list[Scene]


class ScenesEnvelope(BaseModel):
    """The named paged list: ``{"data": {"scenes": [...]}, "total", "offset", "count"}`` (the samples'
    and Swift's shape; J223 declares a flat list, the real captures win — §8)."""

    data: SceneList
    total: int
    offset: int
    count: int


class SceneCreate(BaseModel):
    """J223 ``SceneCreationInfo``; ``actions`` is checked by the rule language to report JSON paths."""

    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    description: str | None = None
    actions: Any = None
    uid: str | None = None


class SceneUpdate(BaseModel):
    """Everything but ``uid`` may change; a ``uid`` sent (Swift does) is ignored."""

    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    description: str | None = None
    actions: Any = None
    uid: str | None = None


class SceneActivation(Scene):
    """The activated scene, plus (beyond ARTIK) the ``mids`` of the actions it stored and sent."""

    mids: list[str] = Field(default_factory=list)


class SceneActivationEnvelope(BaseModel):
    data: SceneActivation


class ErrorBody(BaseModel):
    error: dict[str, Any]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of the error answers a route documents, in the ARTIK error format (§2.5)."""
    text = {
        400: 'Validation error: 4001 "Invalid scene" with the JSON path of each bad element (or, on '
        "activation, a scene invalidated by a deleted device)",
        401: "Missing or invalid token",
        403: "A device token; the application lacks READ/WRITE on the Scene device type "
        "(cloud.artik.scene); another user's or another application's scene; missing WRITE on a "
        "device the scene sends to",
        404: "Unknown scene",
        429: "Rate limit exceeded: each action sent counts as a POST /actions",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}
