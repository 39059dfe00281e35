"""Wire models of message exports (REFERENCE.md §3.12, S56–S59) and of the message import extension:
the export request and its echo, the un-enveloped status, the history page, the import status, and
the ARTIK error body these endpoints document. Every field the SDK models declare is emitted.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class ExportRequestInfo(BaseModel):
    """``POST /messages/export`` body (SDK ``ExportRequestInfo``); ids are comma-separated strings."""

    model_config = ConfigDict(extra="ignore")

    uids: Any = Field(None, description="Comma-separated user ids (at most 30)")
    sdids: Any = Field(None, description="Comma-separated device ids (at most 30)")
    sdtids: Any = Field(None, description="Comma-separated device type ids (at most 30); needs uids")
    trialId: Any = Field(
        None,
        validation_alias=AliasChoices("trialId", "trialID"),
        description="Not available: this server has no trials (400)",
    )
    startDate: Any = Field(None, description="Epoch ms (inclusive)")
    endDate: Any = Field(None, description="Epoch ms (inclusive); at most 31 days after startDate")
    order: Any = Field(None, description="asc (default) or desc, by ts")
    format: Any = Field(None, description="json (default) or csv1")
    url: Any = Field(None, description="Included in the e-mail sent when the export is ready")
    csvHeaders: Any = Field(None, description="csv1: a header row (default true); true/false/1/0")


class ExportRequestData(BaseModel):
    exportId: str
    uids: str | None = None
    sdids: str | None = None
    sdtids: str | None = None
    trialId: str | None = None
    startDate: int
    endDate: int
    order: str
    format: str
    url: str | None = None
    csvHeaders: bool | None = None


class ExportRequestResponse(BaseModel):
    data: ExportRequestData


class ExportStatusResponse(BaseModel):
    """S57, un-enveloped."""

    exportId: str
    status: str = Field(description="Received, InProgress, Success, Failure, Served or Expired")
    md5: str | None = None
    expirationDate: int | None = None
    fileSize: int | None = None
    totalMessages: int | None = None
    ttl: str | None = Field(None, description="Seconds left before the archive expires")


class ExportRequest(BaseModel):
    requestDate: int
    startDate: int
    endDate: int
    order: str
    format: str
    uids: str | None = None
    sdids: str | None = None
    sdtids: str | None = None
    trialId: str | None = None
    url: str | None = None
    csvHeaders: bool | None = None


class ExportData(BaseModel):
    exportId: str
    request: ExportRequest
    status: str
    md5: str | None = None
    expirationDate: int | None = None
    fileSize: int | None = None
    totalMessages: int | None = None


class ExportDataArray(BaseModel):
    exports: list[ExportData]


class ExportHistoryResponse(BaseModel):
    count: int
    offset: int
    total: int
    data: ExportDataArray


class ImportRowError(BaseModel):
    line: int = Field(description="1-based line of the file (the CSV header is line 1)")
    message: str


class ImportStatus(BaseModel):
    importId: str
    sdid: str
    format: str = Field(description="jsonl or csv")
    status: str = Field(description="Received, InProgress, Success or Failure")
    totalRows: int = Field(description="Rows read so far")
    imported: int = Field(description="New messages stored")
    duplicates: int = Field(description="Rows already stored (same device, ts and data)")
    failed: int = Field(description="Rows refused; the first 100 are listed in errors")
    errors: list[ImportRowError]
    error: str | None = Field(None, description="Why the whole import failed")
    createdOn: int
    modifiedOn: int


class ImportStatusEnvelope(BaseModel):
    data: ImportStatus


class ErrorDetail(BaseModel):
    code: int
    message: str
    id: str | None = None
    errors: list[list[dict[str, Any]]] | None = None


class ErrorBody(BaseModel):
    """The ARTIK error body (REFERENCE.md §2.5)."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an endpoint answers."""
    meaning = {
        400: "Validation error",
        401: "Missing or invalid token",
        403: "No permission on a user or device named",
        404: "Unknown export, import, user, device or device type",
        409: "Export not ready (Received, InProgress) or failed",
        410: "Export expired",
        413: "File too large",
    }
    return {s: {"model": ErrorBody, "description": meaning[s]} for s in statuses}
