"""HTTP routes of the device types area: S28–S32, S7, ``/devicetypes/cloudconnectors`` and the
creation extensions (``POST``/``PUT /devicetypes``, ``POST /devicetypes/{dtid}/manifests``).

Literal path segments (``cloudconnectors``, ``manifests/latest``) are registered before the captures
they would otherwise fall into.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from fastapi import APIRouter, Body, Query

from thingcloud.areas.devicetypes import service
from thingcloud.areas.devicetypes.schemas import (
    DeviceTypeArray,
    DeviceTypeCreate,
    DeviceTypeEnvelope,
    DeviceTypesEnvelope,
    DeviceTypeUpdate,
    ManifestPropertiesEnvelope,
    ManifestVersion,
    ManifestVersionEnvelope,
    ManifestVersions,
    ManifestVersionsEnvelope,
)
from thingcloud.auth.permissions import (
    Access,
    check_device_type_create,
    check_device_type_manage,
    check_device_type_read,
    check_user,
)
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter()
# Per-route tags, so the extensions are listed apart from the ARTIK endpoints in /docs.
STANDARD: list[str | Enum] = ["Device types"]
EXTENSION: list[str | Enum] = ["Device types (extension)"]

CountQuery = Query(default=100, ge=1, le=100, description="Page size (1-100)")
OffsetQuery = Query(default=0, ge=0, description="Items to skip")

MANIFEST_EXAMPLE = {
    "fields": [
        {"name": "state", "valueClass": "Boolean", "isCollection": False},
        {"name": "location", "children": [{"name": "x", "valueClass": "Double", "unit": "m"}]},
    ],
    "actions": [{"name": "setOn", "description": "Turn on", "parameters": []}],
    "messageFormat": "json",
}


def _envelope(items: list[Any], total: int, offset: int) -> DeviceTypesEnvelope:
    return DeviceTypesEnvelope(
        data=DeviceTypeArray(deviceTypes=items), total=total, offset=offset, count=len(items)
    )


def _tags(text: str | None) -> tuple[str, ...]:
    return tuple(tag.strip() for tag in (text or "").split(",") if tag.strip())


@router.get(
    "/v1.1/devicetypes",
    tags=STANDARD,
    response_model=DeviceTypesEnvelope,
    summary="List the device types you may see",
)
async def get_device_types(
    rt: RuntimeDep,
    caller: Caller,
    name: str | None = Query(default=None, description="Substring of the name or uniqueName, any case"),
    nameSearch: str | None = Query(default=None, description="Substring of the name only, any case"),
    tags: str | None = Query(default=None, description="Comma-separated tags; types having all of them"),
    createDevice: bool = Query(default=False, description="Only types whose devices you may create"),
    count: int = CountQuery,
    offset: int = OffsetQuery,
) -> DeviceTypesEnvelope:
    search = service.DeviceTypeSearch(name, nameSearch, _tags(tags), createDevice)
    items, total = await service.list_device_types(rt, caller, search, count, offset)
    return _envelope(items, total, offset)


@router.get(
    "/v1.1/devicetypes/cloudconnectors",
    tags=STANDARD,
    response_model=DeviceTypesEnvelope,
    summary="List the Cloud Connector device types you may see",
)
async def get_cloud_connector_types(
    rt: RuntimeDep,
    caller: Caller,
    name: str | None = Query(default=None, description="Substring of the name or uniqueName, any case"),
    count: int = CountQuery,
    offset: int = OffsetQuery,
) -> DeviceTypesEnvelope:
    search = service.DeviceTypeSearch(name, cloud_connectors=True)
    items, total = await service.list_device_types(rt, caller, search, count, offset)
    return _envelope(items, total, offset)


@router.post(
    "/v1.1/devicetypes",
    response_model=DeviceTypeEnvelope,
    tags=EXTENSION,
    summary="Create a device type, owned by you or by one of your organizations ('oid')",
)
async def create_device_type(rt: RuntimeDep, caller: Caller, body: DeviceTypeCreate) -> DeviceTypeEnvelope:
    owner_uid, oid = await check_device_type_create(rt, caller, body.oid)
    row = await service.create_device_type(
        rt,
        name=body.name or "",
        unique_name=body.uniqueName or "",
        owner_uid=owner_uid,
        oid=oid,
        description=body.description,
        published=bool(body.published),
        tags=body.tags,
        has_cloud_connector=bool(body.hasCloudConnector),
    )
    return DeviceTypeEnvelope(data=await service.describe_device_type(rt, caller, row))


@router.get(
    "/v1.1/devicetypes/{dtid}", tags=STANDARD, response_model=DeviceTypeEnvelope, summary="Get a device type"
)
async def get_device_type(rt: RuntimeDep, caller: Caller, dtid: str) -> DeviceTypeEnvelope:
    row = await service.device_type_row(rt, dtid)
    await check_device_type_read(rt, caller, row)
    return DeviceTypeEnvelope(data=await service.describe_device_type(rt, caller, row))


@router.put(
    "/v1.1/devicetypes/{dtid}",
    response_model=DeviceTypeEnvelope,
    tags=EXTENSION,
    summary="Change a device type's name, description, tags or published flag",
)
async def update_device_type(
    rt: RuntimeDep, caller: Caller, dtid: str, body: DeviceTypeUpdate
) -> DeviceTypeEnvelope:
    await check_device_type_manage(rt, caller, await service.device_type_row(rt, dtid))
    row = await service.update_device_type(
        rt, dtid, name=body.name, description=body.description, published=body.published, tags=body.tags
    )
    return DeviceTypeEnvelope(data=await service.describe_device_type(rt, caller, row))


@router.post(
    "/v1.1/devicetypes/{dtid}/manifests",
    response_model=ManifestVersionEnvelope,
    tags=EXTENSION,
    summary="Add a manifest version (a Simple Manifest); it becomes the latest",
)
async def add_manifest(
    rt: RuntimeDep,
    caller: Caller,
    dtid: str,
    document: Any = Body(default=None, examples=[MANIFEST_EXAMPLE]),
) -> ManifestVersionEnvelope:
    await check_device_type_manage(rt, caller, await service.device_type_row(rt, dtid))
    version = await service.add_manifest(rt, dtid, document, caller.uid)
    return ManifestVersionEnvelope(data=ManifestVersion(version=version))


@router.get(
    "/v1.1/devicetypes/{dtid}/manifests/latest/properties",
    tags=STANDARD,
    response_model=ManifestPropertiesEnvelope,
    summary="Get the latest manifest's properties",
)
async def get_latest_manifest_properties(
    rt: RuntimeDep, caller: Caller, dtid: str
) -> ManifestPropertiesEnvelope:
    await check_device_type_read(rt, caller, await service.device_type_row(rt, dtid))
    manifest = await service.manifest(rt, dtid)
    return ManifestPropertiesEnvelope.model_validate({"data": manifest.properties_view()})


@router.get(
    "/v1.1/devicetypes/{dtid}/manifests/{version}/properties",
    tags=STANDARD,
    response_model=ManifestPropertiesEnvelope,
    summary="Get the properties of one manifest version",
)
async def get_manifest_properties(
    rt: RuntimeDep, caller: Caller, dtid: str, version: int
) -> ManifestPropertiesEnvelope:
    await check_device_type_read(rt, caller, await service.device_type_row(rt, dtid))
    manifest = await service.manifest(rt, dtid, version)
    return ManifestPropertiesEnvelope.model_validate({"data": manifest.properties_view()})


@router.get(
    "/v1.1/devicetypes/{dtid}/availablemanifestversions",
    tags=STANDARD,
    response_model=ManifestVersionsEnvelope,
    summary="List a device type's manifest versions",
)
async def get_available_manifest_versions(
    rt: RuntimeDep, caller: Caller, dtid: str
) -> ManifestVersionsEnvelope:
    await check_device_type_read(rt, caller, await service.device_type_row(rt, dtid))
    versions = await service.available_versions(rt, dtid)
    return ManifestVersionsEnvelope(data=ManifestVersions(versions=versions))


@router.get(
    "/v1.1/users/{uid}/devicetypes",
    response_model=DeviceTypesEnvelope,
    tags=["Users"],
    summary="List the device types a user owns",
)
async def get_user_device_types(
    rt: RuntimeDep,
    caller: Caller,
    uid: str,
    includeShared: bool = Query(default=False, description="Also types of devices shared with the user"),
    includeOrganization: bool = Query(default=False, description="Also types of the user's organizations"),
    count: int = CountQuery,
    offset: int = OffsetQuery,
) -> DeviceTypesEnvelope:
    await check_user(rt, caller, uid, Access.READ)
    items, total = await service.list_user_device_types(
        rt,
        caller,
        uid,
        include_shared=includeShared,
        include_organization=includeOrganization,
        count=count,
        offset=offset,
    )
    return _envelope(items, total, offset)
