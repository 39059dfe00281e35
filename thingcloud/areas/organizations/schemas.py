"""Wire models of the organizations extension: ``Organization``, ``Member`` and their envelopes.

ARTIK managed organizations in its developer portal; ThingCloud exposes them through the API, in the
contract's envelopes (single object, named paged list).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Role = Literal["administrator", "developer"]


class Organization(BaseModel):
    id: str
    name: str
    description: str | None = None
    createdBy: str | None = None
    createdOn: int
    modifiedOn: int
    role: Role | None = None  # the caller's role in it (null for the organization's own application)


class OrganizationEnvelope(BaseModel):
    data: Organization


class OrganizationArray(BaseModel):
    organizations: list[Organization]


class OrganizationsEnvelope(BaseModel):
    data: OrganizationArray
    total: int
    offset: int
    count: int


class Member(BaseModel):
    uid: str
    email: str
    name: str
    fullName: str
    role: Role
    createdOn: int


class MemberEnvelope(BaseModel):
    data: Member


class MemberArray(BaseModel):
    members: list[Member]


class MembersEnvelope(BaseModel):
    data: MemberArray
    total: int
    offset: int
    count: int


class OrganizationBody(BaseModel):
    """Create or change an organization; on PUT, absent or ``null`` fields stay as they are."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    description: str | None = None


class MemberBody(BaseModel):
    """Add a member, named by ``email`` or by ``uid``."""

    model_config = ConfigDict(extra="ignore")

    email: str | None = None
    uid: str | None = None
    role: str | None = None


class MemberRoleBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str | None = None
