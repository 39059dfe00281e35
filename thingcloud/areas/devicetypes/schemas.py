"""Wire models of the device types area: ``DeviceType``, manifest properties and versions, and the
bodies of the creation extensions (REFERENCE.md §3.5, §3.6.2, §3.21, §4.5)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Tag(BaseModel):
    name: str
    isCategory: bool = False


class DeviceType(BaseModel):
    id: str
    uniqueName: str
    latestVersion: int
    lastUpdated: int
    name: str
    description: str | None = None
    uid: str | None = None
    oid: str | None = None
    hasCloudConnector: bool
    approved: bool
    published: bool
    protected: bool
    inStore: bool
    ownedByCurrentUser: bool
    tags: list[Tag]
    rsp: bool
    issuerDn: str | None = None
    vid: str | None = None


class DeviceTypeEnvelope(BaseModel):
    data: DeviceType


class DeviceTypeArray(BaseModel):
    deviceTypes: list[DeviceType]


class DeviceTypesEnvelope(BaseModel):
    data: DeviceTypeArray
    total: int
    offset: int
    count: int


class FieldsActions(BaseModel):
    fields: dict[str, Any]
    actions: dict[str, Any]


class ManifestProperties(BaseModel):
    version: int
    properties: FieldsActions


class ManifestPropertiesEnvelope(BaseModel):
    data: ManifestProperties


class ManifestVersions(BaseModel):
    versions: list[int]


class ManifestVersionsEnvelope(BaseModel):
    data: ManifestVersions


class ManifestVersion(BaseModel):
    version: int


class ManifestVersionEnvelope(BaseModel):
    data: ManifestVersion


class DeviceTypeCreate(BaseModel):
    """``POST /devicetypes`` (extension). Lengths and formats are checked by the service, so that every
    bad field is reported at once with the contract's messages."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    uniqueName: str | None = None
    description: str | None = None
    published: bool | None = None
    tags: list[str] | None = None
    oid: str | None = None
    hasCloudConnector: bool | None = None


class DeviceTypeUpdate(BaseModel):
    """``PUT /devicetypes/{dtid}`` (extension): absent or ``null`` fields stay as they are."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    description: str | None = None
    published: bool | None = None
    tags: list[str] | None = None
