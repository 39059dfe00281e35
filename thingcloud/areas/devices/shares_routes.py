"""HTTP routes of device shares (S24–S27, §5.1) and the recipient's answer (extension)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from thingcloud.areas.devices import shares
from thingcloud.areas.devices.schemas import (
    DeviceShareInfo,
    DeviceSharing,
    DeviceSharingArray,
    DeviceSharingEnvelope,
    DeviceSharingId,
    DeviceSharingOne,
    ShareDecision,
    ShareId,
)
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter(prefix="/v1.1", tags=["Device shares"])

CountQuery = Query(None, description="Page size, 1-100 (default 100; larger values are clamped)")
OffsetQuery = Query(None, description="Items to skip (default 0)")


def _one(share: DeviceSharing) -> DeviceSharingOne:
    return DeviceSharingOne(
        data=share, id=share.id, email=share.email, status=share.status, sharedOn=share.sharedOn
    )


def _id(share_id: str) -> DeviceSharingId:
    return DeviceSharingId(data=ShareId(id=share_id), shareId=share_id)


@router.get("/devices/{did}/shares", response_model=DeviceSharingEnvelope, summary="List a device's shares")
async def get_all_shares_for_device(
    rt: RuntimeDep, caller: Caller, did: str, count: int | None = CountQuery, offset: int | None = OffsetQuery
) -> DeviceSharingEnvelope:
    items, total, offset = await shares.list_device_shares(rt, caller, did, count, offset)
    return DeviceSharingEnvelope(
        data=DeviceSharingArray(shares=items), total=total, offset=offset, count=len(items)
    )


@router.post(
    "/devices/{did}/shares",
    response_model=DeviceSharingId,
    summary="Share a device",
    description='Body {"email"} (or {"uid": "<email>"}); the share stays PENDING until the recipient '
    'accepts it. Answer: {"data": {"id"}, "shareId"}.',
)
async def create_share_for_device(
    rt: RuntimeDep, caller: Caller, did: str, body: DeviceShareInfo
) -> DeviceSharingId:
    return _id(await shares.create_share(rt, caller, did, body.email or body.uid))


@router.get(
    "/devices/{did}/shares/{share_id}",
    response_model=DeviceSharingOne,
    summary="Get a share",
    description="For the device's owner and the share's recipient; fields also copied to the top level.",
)
async def get_sharing_for_device(rt: RuntimeDep, caller: Caller, did: str, share_id: str) -> DeviceSharingOne:
    return _one(await shares.get_share(rt, caller, did, share_id))


@router.put(
    "/devices/{did}/shares/{share_id}",
    response_model=DeviceSharingOne,
    summary="Accept or reject a share (ThingCloud extension)",
    description='The recipient answers with {"status": "ACCEPTED" | "REJECTED"}; an accepted recipient has '
    "READ and WRITE on the device. Rejecting an accepted share gives the access up.",
)
async def decide_sharing_for_device(
    rt: RuntimeDep, caller: Caller, did: str, share_id: str, body: ShareDecision
) -> DeviceSharingOne:
    return _one(await shares.decide_share(rt, caller, did, share_id, body.status))


@router.delete("/devices/{did}/shares/{share_id}", response_model=DeviceSharingId, summary="Revoke a share")
async def delete_sharing_for_device(
    rt: RuntimeDep, caller: Caller, did: str, share_id: str
) -> DeviceSharingId:
    return _id(await shares.delete_share(rt, caller, did, share_id))


@router.get(
    "/users/{uid}/shares",
    response_model=DeviceSharingEnvelope,
    tags=["Users"],
    summary="Devices shared with a user",
    description="filter: ALL | WAITING (= PENDING) | ACCEPTED | REJECTED. Each entry's email is the owner's.",
)
async def list_all_shares_for_user(
    rt: RuntimeDep,
    caller: Caller,
    uid: str,
    share_filter: str | None = Query(
        "ALL", alias="filter", description="ALL | WAITING | ACCEPTED | REJECTED"
    ),
    count: int | None = CountQuery,
    offset: int | None = OffsetQuery,
) -> DeviceSharingEnvelope:
    items, total, offset = await shares.list_user_shares(rt, caller, uid, share_filter, count, offset)
    return DeviceSharingEnvelope(
        data=DeviceSharingArray(shares=items), total=total, offset=offset, count=len(items)
    )
