"""Wire models of the devices area: Device, DeviceToken, DeviceStatus, presence and DeviceSharing
(REFERENCE.md §3.3, §3.4, §3.13, §3.14), their envelopes, and the request bodies.

Responses carry every field the SDK models declare (``null`` when unknown); request bodies ignore
unknown fields and treat ``null`` as absent, because swagger clients send every declared field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Device(BaseModel):
    id: str
    uid: str
    dtid: str
    name: str
    manifestVersion: int | None = Field(
        None, description="With policy LATEST: the device type's latest version; with DEVICE: the pinned one"
    )
    manifestVersionPolicy: str
    needProviderAuth: bool
    cloudAuthorization: str
    properties: dict[str, Any] | None = Field(None, description="Only with includeProperties=true")
    createdOn: int
    connected: bool
    certificateInfo: str | None = None
    certificateSignature: str | None = None
    eid: str | None = None
    providerCredentials: dict[str, Any] | None = None
    sharedWithOthers: bool | None = Field(None, description="Only with includeShareInfo=true")
    sharedWithMe: str | None = Field(
        None, description="With includeShareInfo=true: the id of the share through which the user sees it"
    )
    deviceTypeName: str | None = Field(None, description="Only with includeDeviceTypeInfo=true")
    deviceTypeIsPublished: bool | None = None
    deviceTypeIsProtected: bool | None = None


class DeviceEnvelope(BaseModel):
    data: Device


class DeviceArray(BaseModel):
    devices: list[Device]


class DevicesEnvelope(BaseModel):
    data: DeviceArray
    total: int
    offset: int
    count: int


class DeviceCreate(BaseModel):
    """``POST /devices``: the SDK sends a whole ``Device`` (ids and nulls included); only these count."""

    model_config = ConfigDict(extra="ignore")

    uid: str | None = Field(
        None, description="Owner; defaults to the token's user (required with app tokens)"
    )
    dtid: str | None = None
    name: str | None = Field(None, description="5-36 characters")
    manifestVersion: int | None = Field(None, description="> 0; defaults to the type's latest version")
    manifestVersionPolicy: str | None = Field(None, description="LATEST (default) | DEVICE")


class DeviceUpdate(BaseModel):
    """``PUT /devices/{did}``: changes to ``uid`` and ``dtid`` are ignored."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    manifestVersion: int | None = None
    manifestVersionPolicy: str | None = None


class DeviceToken(BaseModel):
    accessToken: str
    uid: str
    did: str
    cid: str


class DeviceTokenEnvelope(BaseModel):
    data: DeviceToken


# --- Status and presence ---------------------------------------------------------------------------


class DeviceStatusData(BaseModel):
    lastMessageTs: int | None = None
    lastActionTs: int | None = None
    lastTimeOnline: int | None = None
    availability: str = Field(description="online | offline | unknown")
    snapshot: dict[str, Any] | None = Field(
        None,
        description="Only with includeSnapshot=true: last value of each field, nested like the manifest; "
        'with includeSnapshotTimestamp=true each leaf is {"value", "ts"}',
    )


class DeviceStatus(BaseModel):
    did: str
    data: DeviceStatusData


class DeviceStatusBatch(BaseModel):
    data: list[DeviceStatus]
    total: int
    offset: int
    count: int


class AvailabilityBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    availability: str | None = None


class DeviceStatusPut(BaseModel):
    """Both forms are accepted: SDK ``{"data": {"availability"}}`` and Swift ``{"availability"}``."""

    model_config = ConfigDict(extra="ignore")

    data: AvailabilityBody | None = None
    availability: str | None = None


class Presence(BaseModel):
    connected: bool
    lastSeenOn: int | None = None


class PresenceEnvelope(BaseModel):
    sdid: str
    data: Presence


# --- Shares ----------------------------------------------------------------------------------------


class DeviceSharing(BaseModel):
    id: str
    email: str = Field(
        description="The recipient's email; in /users/{uid}/shares the email of the user who shared it"
    )
    status: str = Field(description="PENDING | ACCEPTED | REJECTED")
    sharedOn: int
    did: str | None = None
    dtid: str | None = Field(None, description="In /users/{uid}/shares: the shared device's type")
    uid: str | None = Field(None, description="In /users/{uid}/shares: the owner of the shared device")


class DeviceSharingArray(BaseModel):
    shares: list[DeviceSharing]


class DeviceSharingEnvelope(BaseModel):
    data: DeviceSharingArray
    total: int
    offset: int
    count: int


class DeviceSharingOne(BaseModel):
    """One share: enveloped (J223, Swift) and, for the Python SDK, its fields also at top level."""

    data: DeviceSharing
    id: str
    email: str
    status: str
    sharedOn: int


class ShareId(BaseModel):
    id: str


class DeviceSharingId(BaseModel):
    """``{"data": {"id"}}`` (J223, Swift) and ``shareId`` (Python SDK ``DeviceSharingId``)."""

    data: ShareId
    shareId: str


class DeviceShareInfo(BaseModel):
    """``POST /devices/{did}/shares``: ``email``, or ``uid`` holding the email (SDK / J223 naming)."""

    model_config = ConfigDict(extra="ignore")

    email: str | None = None
    uid: str | None = Field(None, description="The recipient's email (older SDK naming)")


class ShareDecision(BaseModel):
    """Extension: the recipient answers a share."""

    model_config = ConfigDict(extra="ignore")

    status: str = Field(description="ACCEPTED | REJECTED")
