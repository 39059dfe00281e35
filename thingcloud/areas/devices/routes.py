"""HTTP routes of devices, device tokens, status and presence (S6, S11–S17, S20–S22, §5.1).

``/devices/status`` is declared before ``/devices/{did}`` so the literal segment wins (REFERENCE.md
§4 routing precedence). Shares live in ``shares_routes``.
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from thingcloud.areas.devices import service, status
from thingcloud.areas.devices.schemas import (
    DeviceArray,
    DeviceCreate,
    DeviceEnvelope,
    DevicesEnvelope,
    DeviceStatus,
    DeviceStatusBatch,
    DeviceStatusPut,
    DeviceTokenEnvelope,
    DeviceUpdate,
    PresenceEnvelope,
)
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter(prefix="/v1.1", tags=["Devices"])

CountQuery = Query(None, description="Page size, 1-100 (default 100; larger values are clamped)")
OffsetQuery = Query(None, description="Items to skip (default 0)")
SnapshotQuery = Query(False, alias="includeSnapshot", description="Add the last value of every field")
SnapshotTsQuery = Query(
    False, alias="includeSnapshotTimestamp", description='Snapshot leaves as {"value", "ts"}'
)


@router.get(
    "/devices/status",
    response_model=DeviceStatusBatch,
    tags=["Device status"],
    summary="Get the status of several devices",
    description="Up to 100 ids; an unknown id answers 404 and an unreadable one 403 for the whole call.",
)
async def get_devices_status(
    rt: RuntimeDep,
    caller: Caller,
    dids: str | None = Query(None, description="Comma-separated device ids (at most 100)"),
    include_snapshot: bool = SnapshotQuery,
    include_snapshot_ts: bool = SnapshotTsQuery,
) -> DeviceStatusBatch:
    return await status.get_statuses(rt, caller, dids, include_snapshot, include_snapshot_ts)


@router.post("/devices", response_model=DeviceEnvelope, summary="Add a device")
async def add_device(rt: RuntimeDep, caller: Caller, body: DeviceCreate) -> DeviceEnvelope:
    return DeviceEnvelope(data=await service.create_device(rt, caller, body))


@router.get("/devices/{did}", response_model=DeviceEnvelope, summary="Get a device")
async def get_device(
    rt: RuntimeDep,
    caller: Caller,
    did: str,
    include_properties: bool = Query(False, alias="includeProperties"),
    properties: bool = Query(False, description="Legacy (SAMI) name of includeProperties"),
) -> DeviceEnvelope:
    return DeviceEnvelope(data=await service.get_device(rt, caller, did, include_properties or properties))


@router.put("/devices/{did}", response_model=DeviceEnvelope, summary="Update a device")
async def update_device(rt: RuntimeDep, caller: Caller, did: str, body: DeviceUpdate) -> DeviceEnvelope:
    return DeviceEnvelope(data=await service.update_device(rt, caller, did, body))


@router.delete(
    "/devices/{did}",
    response_model=DeviceEnvelope,
    summary="Delete a device",
    description="Also revokes its token and removes its shares, status and snapshot.",
)
async def delete_device(rt: RuntimeDep, caller: Caller, did: str) -> DeviceEnvelope:
    return DeviceEnvelope(data=await service.delete_device(rt, caller, did))


@router.get("/devices/{did}/tokens", response_model=DeviceTokenEnvelope, summary="Get a device's token")
async def get_device_token(rt: RuntimeDep, caller: Caller, did: str) -> DeviceTokenEnvelope:
    return DeviceTokenEnvelope(data=await service.get_device_token(rt, caller, did))


@router.put(
    "/devices/{did}/tokens",
    response_model=DeviceTokenEnvelope,
    summary="Create or regenerate a device's token",
    description="No body. The previous token stops working at once.",
)
async def update_device_token(rt: RuntimeDep, caller: Caller, did: str) -> DeviceTokenEnvelope:
    return DeviceTokenEnvelope(data=await service.renew_device_token(rt, caller, did))


@router.delete("/devices/{did}/tokens", response_model=DeviceTokenEnvelope, summary="Revoke a device's token")
async def delete_device_token(rt: RuntimeDep, caller: Caller, did: str) -> DeviceTokenEnvelope:
    return DeviceTokenEnvelope(data=await service.revoke_device_token(rt, caller, did))


@router.get(
    "/devices/{did}/status",
    response_model=DeviceStatus,
    tags=["Device status"],
    summary="Get a device's status",
)
async def get_device_status(
    rt: RuntimeDep,
    caller: Caller,
    did: str,
    include_snapshot: bool = SnapshotQuery,
    include_snapshot_ts: bool = SnapshotTsQuery,
) -> DeviceStatus:
    return await status.get_status(rt, caller, did, include_snapshot, include_snapshot_ts)


@router.put(
    "/devices/{did}/status",
    response_model=DeviceStatus,
    tags=["Device status"],
    summary="Set a device's availability",
    description='Body {"data": {"availability"}} or {"availability"}: online | offline | unknown.',
)
async def put_device_status(rt: RuntimeDep, caller: Caller, did: str, body: DeviceStatusPut) -> DeviceStatus:
    availability = body.data.availability if body.data and body.data.availability else body.availability
    return await status.set_availability(rt, caller, did, availability)


@router.get(
    "/devices/{did}/presence",
    response_model=PresenceEnvelope,
    tags=["Device status"],
    summary="Is a device connected now",
)
async def get_device_presence(rt: RuntimeDep, caller: Caller, did: str) -> PresenceEnvelope:
    return await status.get_presence(rt, caller, did)


@router.get(
    "/users/{uid}/devices",
    response_model=DevicesEnvelope,
    tags=["Users"],
    summary="Devices owned by and/or shared with a user",
)
async def get_user_devices(
    rt: RuntimeDep,
    caller: Caller,
    uid: str,
    count: int | None = CountQuery,
    offset: int | None = OffsetQuery,
    owner: str = Query("ALL", description="ALL | ME | SHARED_WITH_ME"),
    dtid: str | None = Query(None, description="Only devices of this device type"),
    include_properties: bool = Query(False, alias="includeProperties"),
    include_share_info: bool = Query(False, alias="includeShareInfo"),
    include_type_info: bool = Query(False, alias="includeDeviceTypeInfo"),
) -> DevicesEnvelope:
    devices, total, offset = await service.list_user_devices(
        rt,
        caller,
        uid,
        owner=owner,
        dtid=dtid,
        include_properties=include_properties,
        include_share_info=include_share_info,
        include_type_info=include_type_info,
        count=count,
        offset=offset,
    )
    return DevicesEnvelope(data=DeviceArray(devices=devices), total=total, offset=offset, count=len(devices))
