"""Wire models of device-management tasks (REFERENCE.md §3.16, §4.14 S90–S98, §5.1 statuses history)
and of the OTA firmware images (a ThingCloud extension).

Responses carry every field the SDK models declare (``Task``, ``TaskStatuses``, ``TaskByDid``,
``TaskListEnvelope`` with all six status counters, ``DeviceTaskUpdateResponse``, ``TaskHistoryList``);
request bodies ignore unknown fields and take ``null`` for absent (§0.2).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from thingcloud.areas.rules.schemas import ErrorBody


class UpdateParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    updateId: str | None = None


class TaskParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    value: Any = Field(None, description="The value to write (W); a string or a JSON scalar")
    expiresAfter: Any = Field(None, description="Seconds (60-604800); default: the type's taskExpiresAfter")
    scheduledOn: Any = Field(None, description="Epoch ms: the task is SCHEDULED until then")
    update: UpdateParameters | None = Field(None, description="OTA: the firmware image to install")


class TaskRequest(BaseModel):
    """``POST /devicemgmt/tasks``."""

    model_config = ConfigDict(extra="ignore")

    dtid: str | None = None
    dids: Any = Field(None, description="Devices of `dtid` (or `filter`)")
    filter: str | None = Field(None, description="`key=value,...` over the devices' properties")
    taskType: str | None = Field(None, description="R (read), W (write) or E (execute)")
    property: str | None = Field(None, description="Dot path, e.g. deviceProperties.device.timezone")
    taskParameters: TaskParameters | None = None
    needsAcceptance: bool | None = Field(None, description="OTA: the device owner must accept first")


class StatusCounts(BaseModel):
    totalDevices: int
    numCompleted: int
    numSucceeded: int
    numFailed: int
    numCancelled: int


class Task(BaseModel):
    id: str
    dtid: str
    dids: list[str] | None = None
    filter: str | None = None
    taskType: str
    property: str
    taskParameters: dict[str, Any]
    needsAcceptance: bool
    status: str = Field(description="SCHEDULED | REQUESTED | QUEUING | PROCESSING | COMPLETE | CANCELLED")
    statusCounts: StatusCounts
    createdOn: int
    modifiedOn: int


class DeviceTaskStatus(BaseModel):
    did: str
    status: str = Field(
        description="REQUESTED | QUEUED | PROCESSING | SUCCEEDED | FAILED | CANCEL_REQUESTED | CANCELLED"
    )
    ts: int
    numAttempts: int
    errorCode: str | None = None
    errorMessage: str | None = None
    acceptanceStatus: str = Field(description="NOT_REQUIRED | WAITING | ACCEPTED | REJECTED")
    result: Any = Field(None, description="What the device answered (ThingCloud extension)")


class TaskWithStatuses(Task):
    statuses: list[DeviceTaskStatus]


class TaskEnvelope(BaseModel):
    data: Task


class TasksStatusCounts(BaseModel):
    SCHEDULED: int = 0
    REQUESTED: int = 0
    QUEUING: int = 0
    PROCESSING: int = 0
    COMPLETE: int = 0
    CANCELLED: int = 0


class TaskList(BaseModel):
    tasks: list[Task]


class TaskListEnvelope(BaseModel):
    data: TaskList
    statusCounts: TasksStatusCounts
    total: int
    offset: int
    count: int


class TaskStatusesEnvelope(BaseModel):
    data: TaskWithStatuses
    total: int
    offset: int
    count: int


class TaskByDidList(BaseModel):
    tasks: list[TaskWithStatuses]


class TaskByDidListEnvelope(BaseModel):
    data: TaskByDidList
    total: int
    offset: int
    count: int


class TaskHistoryEntry(BaseModel):
    did: str
    status: str
    ts: int
    numAttempts: int
    errorCode: str | None = None
    errorMessage: str | None = None


class TaskHistoryList(BaseModel):
    history: list[TaskHistoryEntry]


class TaskHistoryEnvelope(BaseModel):
    data: TaskHistoryList


class TaskUpdateRequest(BaseModel):
    """``PUT /devicemgmt/tasks/{tid}`` and ``.../devices/{did}``: ``CANCELLED`` is the only status."""

    model_config = ConfigDict(extra="ignore")

    status: str | None = None


class DeviceTaskEnvelope(BaseModel):
    data: DeviceTaskStatus


class AcceptanceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    acceptanceStatus: str | None = Field(None, description="ACCEPTED | REJECTED")


class AcceptanceData(BaseModel):
    acceptanceStatus: str


class AcceptanceResponse(BaseModel):
    """J223 reads the status un-enveloped; the ``data`` copy is for enveloped clients."""

    acceptanceStatus: str
    data: AcceptanceData


class PendingTasksEnvelope(BaseModel):
    data: list[str]


class FirmwareUpdate(BaseModel):
    updateId: str
    dtid: str
    version: str
    filename: str
    size: int
    sha256: str
    createdOn: int


class FirmwareUpdateEnvelope(BaseModel):
    data: FirmwareUpdate


class FirmwareUpdatesEnvelope(BaseModel):
    data: list[FirmwareUpdate]
    total: int
    offset: int
    count: int


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of the error answers a route documents, in the ARTIK error format (§2.5)."""
    text = {
        400: "Validation error (4001) naming the bad field: unknown property path, operation the "
        "manifest does not allow, value of the wrong type, devices of several types, a filter that "
        "matches nothing, acceptance for a task that needs none",
        401: "Missing or invalid token",
        403: "Not an administrator of the device type's organization (nor its application); device token",
        404: "Unknown task, device, device type or update",
        413: "Firmware image too large",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}
