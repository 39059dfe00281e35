"""HTTP routes of message exports (S56–S59) and of the message import extension
(``POST /v1.1/messages/import``, ``GET /v1.1/messages/import/{importId}``)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from thingcloud.areas.exports import imports, service
from thingcloud.areas.exports.schemas import (
    ExportHistoryResponse,
    ExportRequestInfo,
    ExportRequestResponse,
    ExportStatusResponse,
    ImportStatusEnvelope,
    error_responses,
)
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter(prefix="/v1.1", tags=["Export"])


@router.post(
    "/messages/export",
    response_model=ExportRequestResponse,
    summary="Create an export job",
    description="Combinations: uids; sdids; uids+sdtids; uids+sdids(+sdtids). At most 30 ids per list, "
    "endDate-startDate at most 31 days, READ on every user and device named. trialId is refused: this "
    "server has no trials. Poll the status, then download the result.",
    responses=error_responses(400, 401, 403, 404),
)
async def export_request(rt: RuntimeDep, caller: Caller, body: ExportRequestInfo) -> ExportRequestResponse:
    return ExportRequestResponse.model_validate({"data": await service.create_export(rt, caller, body)})


@router.get(
    "/messages/export/history",
    response_model=ExportHistoryResponse,
    summary="Get the exports requested by the caller",
    description="Newest first. trialId is accepted and ignored (no trials on this server).",
    responses=error_responses(400, 401),
)
async def export_history(
    rt: RuntimeDep,
    caller: Caller,
    trial_id: str | None = Query(None, alias="trialId", description="Ignored: no trials on this server"),
    count: int | None = Query(None, description="Page size 1-100 (default 100)"),
    offset: int | None = Query(None, description="Items to skip (default 0)"),
) -> ExportHistoryResponse:
    return ExportHistoryResponse.model_validate(await service.history(rt, caller, count, offset))


@router.get(
    "/messages/export/{exportId}/status",
    response_model=ExportStatusResponse,
    summary="Check the status of an export",
    responses=error_responses(401, 404),
)
async def export_status(rt: RuntimeDep, caller: Caller, exportId: str) -> ExportStatusResponse:
    return ExportStatusResponse.model_validate(await service.get_status(rt, caller, exportId))


@router.get(
    "/messages/export/{exportId}/result",
    summary="Download the archive of an export",
    description="A .tgz of one file per user or device, named <id>-<ts of the first message>.json|csv. "
    "The export becomes Served.",
    response_class=FileResponse,
    responses={200: {"content": {"application/x-compressed": {}}}, **error_responses(401, 404, 409, 410)},
)
async def export_result(rt: RuntimeDep, caller: Caller, exportId: str) -> FileResponse:
    path, total = await service.open_result(rt, caller, exportId)
    return FileResponse(
        path,
        media_type="application/x-compressed",
        filename=f"{exportId}.tgz",
        headers={"X-Sami-Total-Messages": str(total), "X-Artik-Total-Messages": str(total)},
    )


@router.post(
    "/messages/import",
    response_model=ImportStatusEnvelope,
    tags=["Import (extension)"],
    summary="Import historical messages of a device (extension)",
    description='Not in ARTIK. The body is the file: JSON lines ({"ts": ms, "data": {...}} per line) '
    "or CSV with a header naming ts and data (the csv1 export format). Needs WRITE on the device. "
    "Rows are normalized and deduplicated like live messages but stored as history: no rules, "
    "notifications or /live frames, and a snapshot value with a newer ts is kept. Runs as a job: "
    "poll GET /messages/import/{importId}.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-ndjson": {"schema": {"type": "string", "format": "binary"}},
                "text/csv": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    responses=error_responses(400, 401, 403, 404, 413),
)
async def import_messages(
    rt: RuntimeDep,
    caller: Caller,
    request: Request,
    sdid: str | None = Query(None, description="The device the messages belong to"),
    fmt: str | None = Query(None, alias="format", description="jsonl or csv (default: from Content-Type)"),
) -> ImportStatusEnvelope:
    found = await imports.accept(rt, caller, sdid, fmt, request.headers.get("content-type"), request.stream())
    return ImportStatusEnvelope.model_validate({"data": found})


@router.get(
    "/messages/import/{importId}",
    response_model=ImportStatusEnvelope,
    tags=["Import (extension)"],
    summary="Progress of a message import (extension)",
    responses=error_responses(401, 404),
)
async def import_status(rt: RuntimeDep, caller: Caller, importId: str) -> ImportStatusEnvelope:
    return ImportStatusEnvelope.model_validate({"data": await imports.get_import(rt, caller, importId)})
