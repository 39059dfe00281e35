"""Wire models of the users area: ``User`` and ``AppProperties`` (REFERENCE.md §3.1–3.2)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class User(BaseModel):
    id: str
    name: str
    email: str
    fullName: str
    saIdentity: str | None = None
    createdOn: int
    modifiedOn: int


class UserEnvelope(BaseModel):
    data: User


class AppProperties(BaseModel):
    uid: str | None = None
    aid: str
    properties: str


class AppPropertiesEnvelope(BaseModel):
    data: AppProperties


class AppPropertiesBody(BaseModel):
    """What clients send: unknown fields ignored, ``null`` for absent (swagger clients send them)."""

    model_config = ConfigDict(extra="ignore")

    uid: str | None = None
    aid: str | None = Field(default=None, min_length=1, max_length=64)
    properties: str = Field(max_length=10_000)
