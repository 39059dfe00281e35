"""HTTP routes of device-management properties, configuration and manifest (S83–S89) and the DM
manifest extension (``PUT /devicemgmt/devicetypes/{dtid}/manifest``). Tasks have their own routes.

Token rules (REFERENCE.md §4.14): one device's properties accept its device token, its owner's user
token, and the type's administrators (organization administrator in an organization application, or
the organization's application token); type-level calls only the administrators. Who is who is
decided in ``auth.permissions``; unknown devices and types answer 404 before any permission check.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from fastapi import APIRouter, Body, Query

from thingcloud.areas.devicemgmt import config, manifest, properties
from thingcloud.areas.devicemgmt.schemas import (
    MANIFEST_EXAMPLE,
    DevicePropertiesEnvelope,
    DeviceTypesInfoEnvelope,
    DeviceTypesInfoUpdate,
    DidEnvelope,
    ManifestPropertiesEnvelope,
    PropertiesQueryEnvelope,
)
from thingcloud.areas.devices.service import device_row, page_bounds
from thingcloud.areas.devicetypes.service import device_type_row
from thingcloud.auth.permissions import (
    Access,
    Principal,
    check_device_type_manage,
    check_devicemgmt_device,
    check_devicemgmt_type,
)
from thingcloud.errors import ValidationFailed
from thingcloud.rest.deps import Caller, RuntimeDep
from thingcloud.runtime import Runtime

router = APIRouter(prefix="/v1.1/devicemgmt")
STANDARD: list[str | Enum] = ["Device management"]
EXTENSION: list[str | Enum] = ["Device management (extension)"]

TimestampQuery = Query(
    False,
    alias="includeTimestamp",
    description='Server and device property leaves as {"value", "ts"} (system properties stay plain)',
)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Validation error (error.code 4001, errors per field)"},
    401: {"description": "Missing or invalid token"},
    403: {"description": "The token may not do this"},
    404: {"description": "Unknown device or device type (error.code 1101)"},
}


async def _device_access(rt: Runtime, caller: Principal, did: str, access: Access) -> None:
    device = await device_row(rt, did)
    await check_devicemgmt_device(rt, caller, device, await device_type_row(rt, device["dtid"]), access)


async def _type_access(rt: Runtime, caller: Principal, dtid: str, access: Access) -> None:
    await check_devicemgmt_type(rt, caller, await device_type_row(rt, dtid), access)


@router.get(
    "/devices/properties",
    tags=STANDARD,
    response_model=PropertiesQueryEnvelope,
    responses=ERRORS,
    summary="Query the properties of the devices of a device type",
    description="`filter`: comma-separated `path=value` terms, all required, with dot paths "
    "(`serverProperties.enabled=true`, `deviceProperties.device.timezone=UTC`, "
    "`systemProperties.availability=online`). Paging is given at the top and inside `data`.",
)
async def query_properties(
    rt: RuntimeDep,
    caller: Caller,
    dtid: str | None = Query(None, description="Device type id (required)"),
    count: int | None = Query(None, description="Page size, 1-100 (default 100)"),
    offset: int | None = Query(None, description="Devices to skip (default 0)"),
    filter: str | None = Query(None, description="path=value,path2=value2"),
    include_ts: bool = TimestampQuery,
) -> PropertiesQueryEnvelope:
    if not dtid:
        raise ValidationFailed.field("dtid", "Required parameter")
    size, skip = page_bounds(count, offset)
    await _type_access(rt, caller, dtid, Access.READ)
    items, total = await properties.query_properties(rt, dtid, filter, size, skip, include_ts)
    page = {"total": total, "offset": skip, "count": len(items)}
    return PropertiesQueryEnvelope.model_validate({**page, "data": {**page, "properties": items}})


@router.post(
    "/devices/{did}/serverproperties",
    tags=STANDARD,
    response_model=DidEnvelope,
    responses=ERRORS,
    summary="Write server properties of a device",
    description="Names and value types must match the server properties of the device type's "
    "device-management manifest; on any bad key nothing is written.",
)
async def write_server_properties(
    rt: RuntimeDep,
    caller: Caller,
    did: str,
    body: Any = Body(default=None, examples=[{"serialNumber": "SN-1", "enabled": False, "random": 42}]),
) -> DidEnvelope:
    await _device_access(rt, caller, did, Access.WRITE)
    await properties.write_server_properties(rt, did, body)
    return DidEnvelope.model_validate({"data": {"did": did}})


@router.delete(
    "/devices/{did}/serverproperties",
    tags=STANDARD,
    response_model=DidEnvelope,
    responses=ERRORS,
    summary="Delete all server properties of a device (system and device properties remain)",
)
async def delete_server_properties(rt: RuntimeDep, caller: Caller, did: str) -> DidEnvelope:
    await _device_access(rt, caller, did, Access.WRITE)
    await properties.delete_server_properties(rt, did)
    return DidEnvelope.model_validate({"data": {"did": did}})


@router.get(
    "/devices/{did}/properties",
    tags=STANDARD,
    response_model=DevicePropertiesEnvelope,
    responses=ERRORS,
    summary="Get the server, system and device properties of a device",
)
async def get_properties(
    rt: RuntimeDep, caller: Caller, did: str, include_ts: bool = TimestampQuery
) -> DevicePropertiesEnvelope:
    await _device_access(rt, caller, did, Access.READ)
    return DevicePropertiesEnvelope.model_validate(
        {"data": await properties.read_properties(rt, did, include_ts)}
    )


@router.get(
    "/devicetypes/{dtid}/manifest/properties",
    tags=STANDARD,
    response_model=ManifestPropertiesEnvelope,
    responses=ERRORS,
    summary="Get the device-management manifest of a device type",
    description="`deviceProperties` only when the type has `devicePropertiesEnabled`.",
)
async def get_manifest_properties(rt: RuntimeDep, caller: Caller, dtid: str) -> ManifestPropertiesEnvelope:
    await _type_access(rt, caller, dtid, Access.READ)
    return ManifestPropertiesEnvelope(data=await manifest.get_manifest_properties(rt, dtid))


@router.put(
    "/devicetypes/{dtid}/manifest",
    tags=EXTENSION,
    response_model=ManifestPropertiesEnvelope,
    responses=ERRORS,
    summary="Define the device-management manifest of a device type (extension, device-type owners)",
    description="Replaces the definitions of server properties (`type`) and device properties "
    "(`type`, `operations` from R, W, E). Without `deviceProperties` the default LwM2M-like set applies. "
    "Answers the whole manifest.",
)
async def put_manifest(
    rt: RuntimeDep, caller: Caller, dtid: str, body: Any = Body(default=None, examples=[MANIFEST_EXAMPLE])
) -> ManifestPropertiesEnvelope:
    await check_device_type_manage(rt, caller, await device_type_row(rt, dtid))
    return ManifestPropertiesEnvelope(data=await manifest.put_manifest(rt, dtid, body))


@router.get(
    "/devicetypes/{dtid}",
    tags=STANDARD,
    response_model=DeviceTypesInfoEnvelope,
    responses=ERRORS,
    summary="Get the device-management configuration of a device type",
)
async def get_device_types_info(rt: RuntimeDep, caller: Caller, dtid: str) -> DeviceTypesInfoEnvelope:
    await _type_access(rt, caller, dtid, Access.READ)
    return DeviceTypesInfoEnvelope.model_validate({"data": await config.get_config(rt, dtid)})


@router.put(
    "/devicetypes/{dtid}",
    tags=STANDARD,
    response_model=DeviceTypesInfoEnvelope,
    responses=ERRORS,
    summary="Change the device-management configuration of a device type",
    description="Any of devicePropertiesEnabled, pmin (60-3600), pmax (3600-86400, at least pmin), "
    "taskExpiresAfter (60-604800 s); out-of-range values change nothing.",
)
async def update_device_types_info(
    rt: RuntimeDep, caller: Caller, dtid: str, body: DeviceTypesInfoUpdate
) -> DeviceTypesInfoEnvelope:
    await _type_access(rt, caller, dtid, Access.WRITE)
    changed = await config.update_config(rt, dtid, body.model_dump())
    return DeviceTypesInfoEnvelope.model_validate({"data": changed})
