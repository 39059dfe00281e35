"""HTTP routes of device-management tasks (S90–S98, §5.1 statuses history) and of OTA firmware images
(extension: upload and list per device type; the per-task download URL devices fetch)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from thingcloud.areas.devicemgmt import ota, task_lifecycle, task_queries, tasks
from thingcloud.areas.devicemgmt.task_schemas import (
    AcceptanceData,
    AcceptanceRequest,
    AcceptanceResponse,
    DeviceTaskEnvelope,
    DeviceTaskStatus,
    FirmwareUpdate,
    FirmwareUpdateEnvelope,
    FirmwareUpdatesEnvelope,
    PendingTasksEnvelope,
    Task,
    TaskByDidList,
    TaskByDidListEnvelope,
    TaskEnvelope,
    TaskHistoryEntry,
    TaskHistoryEnvelope,
    TaskHistoryList,
    TaskList,
    TaskListEnvelope,
    TaskRequest,
    TasksStatusCounts,
    TaskStatusesEnvelope,
    TaskUpdateRequest,
    TaskWithStatuses,
    error_responses,
)
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter(prefix="/v1.1", tags=["Device management tasks"])

CountQuery = Query(None, description="Page size, 1-100 (default 100)")
OffsetQuery = Query(None, description="Items to skip (default 0)")
OrderQuery = Query(None, description="createdOn (the only order)")
SortQuery = Query(None, description="asc | desc (default desc)")


@router.post(
    "/devicemgmt/tasks",
    response_model=TaskEnvelope,
    summary="Create a task for devices of one device type",
    description="By `dids` or `filter`; `taskType` R, W or E on a property path of the DM manifest. "
    "Writes of `serverProperties.*` are applied at once (the task is COMPLETE); other tasks reach the "
    "devices over MQTT or /websocket (docs/device-management.md) and expire after "
    "`taskParameters.expiresAfter` (default: the type's taskExpiresAfter). OTA: property "
    "`deviceProperties.firmware.update` with `taskParameters.update.updateId`, optionally "
    "`needsAcceptance`.",
    responses=error_responses(400, 401, 403, 404),
)
async def create_task(rt: RuntimeDep, caller: Caller, body: TaskRequest) -> TaskEnvelope:
    return TaskEnvelope(data=Task.model_validate(await tasks.create_task(rt, caller, body)))


@router.get(
    "/devicemgmt/tasks",
    response_model=TaskListEnvelope,
    summary="List the tasks of a device type, with counts per task status",
    responses=error_responses(400, 401, 403, 404),
)
async def get_tasks(
    rt: RuntimeDep,
    caller: Caller,
    dtid: str | None = Query(None, description="Device type (required)"),
    status: str | None = Query(None, description="Comma list of task statuses"),
    order: str | None = OrderQuery,
    sort: str | None = SortQuery,
    count: int | None = CountQuery,
    offset: int | None = OffsetQuery,
) -> TaskListEnvelope:
    items, totals, total, skip = await task_queries.list_tasks(
        rt, caller, dtid, status, order, sort, count, offset
    )
    return TaskListEnvelope(
        data=TaskList(tasks=[Task.model_validate(i) for i in items]),
        statusCounts=TasksStatusCounts(**totals),
        total=total,
        offset=skip,
        count=len(items),
    )


@router.get(
    "/devicemgmt/tasks/{tid}",
    response_model=TaskEnvelope,
    summary="Get a task with its status counts",
    responses=error_responses(401, 403, 404),
)
async def get_task(rt: RuntimeDep, caller: Caller, tid: str) -> TaskEnvelope:
    return TaskEnvelope(data=Task.model_validate(await tasks.get_task(rt, caller, tid)))


@router.put(
    "/devicemgmt/tasks/{tid}",
    response_model=TaskEnvelope,
    summary="Cancel a task (devices not finished yet)",
    description='Body `{"status":"CANCELLED"}`. Devices not sent the task yet are CANCELLED; devices '
    "working on it are CANCEL_REQUESTED and told to stop.",
    responses=error_responses(400, 401, 403, 404),
)
async def update_task(rt: RuntimeDep, caller: Caller, tid: str, body: TaskUpdateRequest) -> TaskEnvelope:
    return TaskEnvelope(
        data=Task.model_validate(await task_lifecycle.cancel_task(rt, caller, tid, body.status))
    )


@router.get(
    "/devicemgmt/tasks/{tid}/statuses",
    response_model=TaskStatusesEnvelope,
    summary="Get a task with the status of each device",
    responses=error_responses(400, 401, 403, 404),
)
async def get_statuses(
    rt: RuntimeDep,
    caller: Caller,
    tid: str,
    status: str | None = Query(None, description="Comma list of device task statuses"),
    dids: str | None = Query(None, description="Comma list of device ids"),
    count: int | None = CountQuery,
    offset: int | None = OffsetQuery,
) -> TaskStatusesEnvelope:
    data, total, skip = await task_queries.task_statuses(rt, caller, tid, status, dids, count, offset)
    return TaskStatusesEnvelope(
        data=TaskWithStatuses.model_validate(data), total=total, offset=skip, count=len(data["statuses"])
    )


@router.get(
    "/devicemgmt/tasks/{tid}/statuses/history",
    response_model=TaskHistoryEnvelope,
    summary="Every status change of a task's devices, oldest first",
    responses=error_responses(401, 403, 404),
)
async def get_statuses_history(
    rt: RuntimeDep, caller: Caller, tid: str, did: str | None = Query(None, description="Only this device")
) -> TaskHistoryEnvelope:
    history = await task_queries.task_history(rt, caller, tid, did)
    return TaskHistoryEnvelope(
        data=TaskHistoryList(history=[TaskHistoryEntry.model_validate(h) for h in history])
    )


@router.put(
    "/devicemgmt/tasks/{tid}/devices/{did}",
    response_model=DeviceTaskEnvelope,
    summary="Cancel a task for one device",
    responses=error_responses(400, 401, 403, 404),
)
async def update_task_for_device(
    rt: RuntimeDep, caller: Caller, tid: str, did: str, body: TaskUpdateRequest
) -> DeviceTaskEnvelope:
    status = await task_lifecycle.cancel_device(rt, caller, tid, did, body.status)
    return DeviceTaskEnvelope(data=DeviceTaskStatus.model_validate(status))


@router.post(
    "/devicemgmt/tasks/{tid}/devices/{did}/acceptance",
    response_model=AcceptanceResponse,
    summary="The device owner accepts or rejects an update task",
    responses=error_responses(400, 401, 403, 404),
)
async def set_acceptance(
    rt: RuntimeDep, caller: Caller, tid: str, did: str, body: AcceptanceRequest
) -> AcceptanceResponse:
    decision = await task_lifecycle.set_acceptance(rt, caller, tid, did, body.acceptanceStatus)
    return AcceptanceResponse(acceptanceStatus=decision, data=AcceptanceData(acceptanceStatus=decision))


@router.get(
    "/devicemgmt/devices/{did}/tasks",
    response_model=TaskByDidListEnvelope,
    summary="The tasks of one device, each with that device's status",
    description="Device-type organization administrators and applications, and the device's owner.",
    responses=error_responses(400, 401, 403, 404),
)
async def get_all_by_did(
    rt: RuntimeDep,
    caller: Caller,
    did: str,
    status: str | None = Query(None, description="Comma list of task statuses"),
    order: str | None = OrderQuery,
    sort: str | None = SortQuery,
    count: int | None = CountQuery,
    offset: int | None = OffsetQuery,
) -> TaskByDidListEnvelope:
    items, total, skip = await task_queries.device_tasks(rt, caller, did, status, order, sort, count, offset)
    return TaskByDidListEnvelope(
        data=TaskByDidList(tasks=[TaskWithStatuses.model_validate(i) for i in items]),
        total=total,
        offset=skip,
        count=len(items),
    )


@router.get(
    "/devicemgmt/devices/{did}/pendingtasks",
    response_model=PendingTasksEnvelope,
    summary="Update tasks waiting for the device owner's acceptance",
    responses=error_responses(400, 401, 403, 404),
)
async def get_pending_tasks(rt: RuntimeDep, caller: Caller, did: str) -> PendingTasksEnvelope:
    return PendingTasksEnvelope(data=await task_lifecycle.pending_tasks(rt, caller, did))


# --- OTA firmware images (extension) ------------------------------------------------------------------


@router.post(
    "/devicemgmt/devicetypes/{dtid}/updates",
    response_model=FirmwareUpdateEnvelope,
    summary="Upload a firmware image for a device type (ThingCloud extension)",
    description="The raw image is the request body (application/octet-stream); `version` names it. "
    "Device-type owners only. Its `updateId` goes in `taskParameters.update.updateId` of an update task.",
    responses=error_responses(400, 401, 403, 404, 413),
)
async def upload_update(
    rt: RuntimeDep,
    caller: Caller,
    request: Request,
    dtid: str,
    version: str | None = Query(None, description="Firmware version the image installs (required)"),
    filename: str | None = Query(None, description="Original file name"),
) -> FirmwareUpdateEnvelope:
    image = await request.body()
    row = await ota.upload_update(rt, caller, dtid, version, filename, image)
    return FirmwareUpdateEnvelope(data=FirmwareUpdate.model_validate(row))


@router.get(
    "/devicemgmt/devicetypes/{dtid}/updates",
    response_model=FirmwareUpdatesEnvelope,
    summary="List the firmware images of a device type (ThingCloud extension)",
    responses=error_responses(401, 403, 404),
)
async def list_updates(
    rt: RuntimeDep,
    caller: Caller,
    dtid: str,
    count: int | None = CountQuery,
    offset: int | None = OffsetQuery,
) -> FirmwareUpdatesEnvelope:
    limit, skip = min(max(count or 100, 1), 100), max(offset or 0, 0)
    items, total = await ota.list_updates(rt, caller, dtid, limit, skip)
    return FirmwareUpdatesEnvelope(
        data=[FirmwareUpdate.model_validate(i) for i in items], total=total, offset=skip, count=len(items)
    )


@router.get(
    "/updates/urls/{token}",
    response_class=FileResponse,
    summary="Download a firmware image (the URL an update task gives a device)",
    description="No bearer token: the URL itself is the credential, valid for one device while its "
    "update task is open. application/octet-stream.",
    responses={200: {"content": {"application/octet-stream": {}}}, **error_responses(404)},
)
async def download_update(rt: RuntimeDep, token: str) -> FileResponse:
    path, row = await ota.image_for_download(rt, token)
    return FileResponse(path, media_type="application/octet-stream", filename=row["filename"])
