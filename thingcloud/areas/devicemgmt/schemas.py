"""Wire models of device-management properties, configuration and manifest (REFERENCE.md §3.16,
S83–S89): the three property sections, the cross-device query envelope (paging both top-level, as the
SDK reads it, and inside ``data``, as the Swift SDK does), ``DeviceTypesInfo`` and the manifest.

Request bodies keep loosely typed fields so the services can report every bad field at once with the
contract's messages (a swagger client also sends ``dtid``/``createdOn``; they are ignored).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DidData(BaseModel):
    did: str


class DidEnvelope(BaseModel):
    """S83/S86 (SDK ``MetadataEnvelope``)."""

    data: DidData


class Connection(BaseModel):
    connected: bool = Field(description="Whether a device channel (MQTT, /websocket) holds the device now")
    lastSeenOn: int | None = None


class SystemProperties(BaseModel):
    did: str
    availability: str = Field(description="online | offline | unknown, as GET /devices/{did}/status")
    connection: Connection | None = Field(None, description="null when the device was never heard from")
    lastRegistration: int | None = Field(None, description="When the device last joined a device channel")


class DeviceProperties(BaseModel):
    serverProperties: dict[str, Any]
    systemProperties: SystemProperties
    deviceProperties: dict[str, Any]


class DevicePropertiesEnvelope(BaseModel):
    """S84 (SDK ``MetadataEnvelope``)."""

    data: DeviceProperties


class DevicePropertiesItem(DeviceProperties):
    did: str


class PropertiesPage(BaseModel):
    total: int
    offset: int
    count: int
    properties: list[DevicePropertiesItem]


class PropertiesQueryEnvelope(BaseModel):
    """S85 (SDK ``MetadataQueryEnvelope`` reads the paging at the top, Swift inside ``data``)."""

    total: int
    offset: int
    count: int
    data: PropertiesPage


class DeviceTypesInfo(BaseModel):
    dtid: str
    devicePropertiesEnabled: bool
    pmin: int
    pmax: int
    taskExpiresAfter: int
    createdOn: int
    modifiedOn: int


class DeviceTypesInfoEnvelope(BaseModel):
    data: DeviceTypesInfo


class DeviceTypesInfoUpdate(BaseModel):
    """S89 body: any of the four settings; absent or ``null`` leaves a setting as it is."""

    model_config = ConfigDict(extra="ignore")

    devicePropertiesEnabled: Any = Field(None, description="Boolean")
    pmin: Any = Field(None, description="Seconds, 60-3600, at most pmax")
    pmax: Any = Field(None, description="Seconds, 3600-86400, at least pmin")
    taskExpiresAfter: Any = Field(None, description="Seconds, 60-604800")


class ManifestPropertiesEnvelope(BaseModel):
    """S87 (SDK ``MetadataPropertiesEnvelope``): ``serverProperties`` and, when device properties are
    enabled, ``deviceProperties``; leaves ``{"type", "operations"?, "description"?}``."""

    data: dict[str, Any]


MANIFEST_EXAMPLE: dict[str, Any] = {
    "serverProperties": {
        "serialNumber": {"type": "String", "description": "Printed on the box"},
        "enabled": {"type": "Boolean"},
        "random": {"type": "Double"},
    },
    "deviceProperties": {
        "device": {
            "manufacturer": {"type": "String", "operations": "R"},
            "timezone": {"type": "String", "operations": "RW"},
            "reboot": {"operations": "E"},
        },
        "firmware": {"update": {"operations": "E"}},
    },
}
