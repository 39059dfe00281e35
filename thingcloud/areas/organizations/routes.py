"""HTTP routes of the organizations extension (documented in OpenAPI, not part of ARTIK's API).

Any user creates an organization and becomes its administrator; members see it and its member list;
administrators (and the organization's own applications) change it and manage members.
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from thingcloud.areas.organizations import service
from thingcloud.areas.organizations.schemas import (
    MemberArray,
    MemberBody,
    MemberEnvelope,
    MemberRoleBody,
    MembersEnvelope,
    OrganizationArray,
    OrganizationBody,
    OrganizationEnvelope,
    OrganizationsEnvelope,
)
from thingcloud.auth.permissions import check_organization, require_application, require_user_token
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter(prefix="/v1.1/organizations", tags=["Organizations (extension)"])

CountQuery = Query(default=100, ge=1, le=100, description="Page size (1-100)")
OffsetQuery = Query(default=0, ge=0, description="Items to skip")


@router.post("", response_model=OrganizationEnvelope, summary="Create an organization (you administer it)")
async def create_organization(rt: RuntimeDep, caller: Caller, body: OrganizationBody) -> OrganizationEnvelope:
    uid = require_user_token(caller)
    return OrganizationEnvelope(data=await service.create_organization(rt, uid, body.name, body.description))


@router.get("", response_model=OrganizationsEnvelope, summary="List the organizations you belong to")
async def list_organizations(
    rt: RuntimeDep, caller: Caller, count: int = CountQuery, offset: int = OffsetQuery
) -> OrganizationsEnvelope:
    require_application(caller)  # user or application token
    items, total = await service.list_organizations(rt, caller, count, offset)
    return OrganizationsEnvelope(
        data=OrganizationArray(organizations=items), total=total, offset=offset, count=len(items)
    )


@router.get("/{oid}", response_model=OrganizationEnvelope, summary="Get an organization")
async def get_organization(rt: RuntimeDep, caller: Caller, oid: str) -> OrganizationEnvelope:
    await service.organization_row(rt, oid)
    await check_organization(rt, caller, oid, manage=False)
    return OrganizationEnvelope(data=await service.get_organization(rt, oid, caller.uid))


@router.put(
    "/{oid}", response_model=OrganizationEnvelope, summary="Change an organization's name or description"
)
async def update_organization(
    rt: RuntimeDep, caller: Caller, oid: str, body: OrganizationBody
) -> OrganizationEnvelope:
    await service.organization_row(rt, oid)
    await check_organization(rt, caller, oid, manage=True)
    organization = await service.update_organization(rt, oid, body.name, body.description, caller.uid)
    return OrganizationEnvelope(data=organization)


@router.get("/{oid}/members", response_model=MembersEnvelope, summary="List an organization's members")
async def list_members(
    rt: RuntimeDep, caller: Caller, oid: str, count: int = CountQuery, offset: int = OffsetQuery
) -> MembersEnvelope:
    await service.organization_row(rt, oid)
    await check_organization(rt, caller, oid, manage=False)
    items, total = await service.list_members(rt, oid, count, offset)
    return MembersEnvelope(data=MemberArray(members=items), total=total, offset=offset, count=len(items))


@router.post(
    "/{oid}/members", response_model=MemberEnvelope, summary="Add a user (by email or uid) in a role"
)
async def add_member(rt: RuntimeDep, caller: Caller, oid: str, body: MemberBody) -> MemberEnvelope:
    await service.organization_row(rt, oid)
    await check_organization(rt, caller, oid, manage=True)
    member = await service.add_member(rt, oid, role=body.role, email=body.email, uid=body.uid)
    return MemberEnvelope(data=member)


@router.put("/{oid}/members/{uid}", response_model=MemberEnvelope, summary="Change a member's role")
async def set_member_role(
    rt: RuntimeDep, caller: Caller, oid: str, uid: str, body: MemberRoleBody
) -> MemberEnvelope:
    await service.organization_row(rt, oid)
    await check_organization(rt, caller, oid, manage=True)
    return MemberEnvelope(data=await service.set_member_role(rt, oid, uid, body.role))


@router.delete("/{oid}/members/{uid}", response_model=MemberEnvelope, summary="Remove a member")
async def remove_member(rt: RuntimeDep, caller: Caller, oid: str, uid: str) -> MemberEnvelope:
    await service.organization_row(rt, oid)
    await check_organization(rt, caller, oid, manage=True)
    return MemberEnvelope(data=await service.remove_member(rt, oid, uid))
