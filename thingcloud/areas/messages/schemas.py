"""Wire models of message queries and analytics (REFERENCE.md §3.7, §2.2 shape #4, S45–S52): the
normalized message and action, the message-query envelope, last messages, snapshots, presence,
aggregates and histograms. Every field the SDK models declare is emitted (``null`` when unknown).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class NormalizedMessage(BaseModel):
    mid: str
    sdid: str
    sdtid: str
    uid: str
    ts: int
    cts: int
    mv: int
    data: dict[str, Any]


class NormalizedAction(BaseModel):
    mid: str
    ddid: str
    ddtid: str
    sdid: str | None = None
    uid: str
    ts: int
    cts: int
    mv: int
    data: dict[str, Any]


class _QueryEnvelope(BaseModel):
    uid: str | None = None
    startDate: int | None = None
    endDate: int | None = None
    order: str = "asc"
    count: int = Field(description="The page size asked for")
    size: int = Field(description="Items in this page")
    offset: str = Field("", description="The cursor this page was read from")
    next: str = Field("", description="Pass back as offset for the next page; empty on the last page")


class NormalizedMessagesEnvelope(_QueryEnvelope):
    sdid: str | None = None
    sdids: str | None = None
    data: list[NormalizedMessage]


class NormalizedActionsEnvelope(_QueryEnvelope):
    ddid: str | None = None
    ddids: str | None = None
    data: list[NormalizedAction]


class LastMessagesEnvelope(BaseModel):
    sdids: str
    count: int = Field(description="Messages asked for per device")
    size: int
    data: list[NormalizedMessage]


class SnapshotResponse(BaseModel):
    sdid: str
    data: dict[str, Any]


class SnapshotResponses(BaseModel):
    sdids: str
    size: int
    data: list[SnapshotResponse]


class FieldPresence(BaseModel):
    startDate: int


class FieldPresenceEnvelope(BaseModel):
    sdid: str | None = None
    fieldPresence: str | None = None
    interval: str
    startDate: int
    endDate: int
    size: int
    data: list[FieldPresence]


class AggregateData(BaseModel):
    count: int
    min: float | None
    max: float | None
    mean: float | None
    sum: float | None
    variance: float | None = Field(description="Population variance")


class AggregatesResponse(BaseModel):
    sdid: str
    field: str
    startDate: int
    endDate: int
    size: int
    data: list[AggregateData]


class AggregatesHistogramData(AggregateData):
    ts: int = Field(description="Bucket start (UTC)")


class AggregatesHistogramResponse(BaseModel):
    sdid: str
    field: str
    interval: str
    startDate: int
    endDate: int
    size: int
    data: list[AggregatesHistogramData]
