"""HTTP routes that read messages and actions back (S45, S47–S52). ``POST /messages`` and
``POST /actions`` are the ingest hot path (``routes.py``); these GETs are ordinary FastAPI routes.
The literal ``/messages/last``, ``/snapshots``, ``/presence`` and ``/analytics/*`` paths have no
``{param}`` sibling, so declaration order does not matter here.
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from thingcloud.areas.messages import analytics, queries
from thingcloud.areas.messages.schemas import (
    AggregatesHistogramResponse,
    AggregatesResponse,
    FieldPresenceEnvelope,
    LastMessagesEnvelope,
    NormalizedActionsEnvelope,
    NormalizedMessagesEnvelope,
    SnapshotResponses,
)
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter(prefix="/v1.1", tags=["Messages"])

StartQuery = Query(None, alias="startDate", description="Epoch ms (inclusive)")
EndQuery = Query(None, alias="endDate", description="Epoch ms (inclusive for /messages and /actions)")
OrderQuery = Query(None, description="asc (default) or desc, by ts")
CountQuery = Query(None, description="Page size 1-100 (default 100; larger values are clamped)")
OffsetQuery = Query(None, description="The 'next' cursor of the previous page of the same query")
UidQuery = Query(None, description="Owner user id; required with mid for application tokens")


@router.get(
    "/messages",
    response_model=NormalizedMessagesEnvelope,
    summary="Get normalized messages",
    description="Combinations: sdid+startDate+endDate (≤31 days); mid (+uid for application tokens); "
    "sdid+fieldPresence; sdid+filter+startDate+endDate; sdids+startDate+endDate; uid+startDate+endDate. "
    "A page sequence returns exactly the matching messages committed when its first page was read.",
)
async def get_messages(
    rt: RuntimeDep,
    caller: Caller,
    uid: str | None = UidQuery,
    sdid: str | None = Query(None),
    sdids: str | None = Query(None, description="Comma-separated device ids (at most 100)"),
    mid: str | None = Query(None),
    field_presence: str | None = Query(None, alias="fieldPresence"),
    filter_text: str | None = Query(
        None, alias="filter", description="Lucene-style: field:value, field:>N, _exists_:field, +, ( )"
    ),
    start: int | None = StartQuery,
    end: int | None = EndQuery,
    order: str | None = OrderQuery,
    count: int | None = CountQuery,
    offset: str | None = OffsetQuery,
) -> NormalizedMessagesEnvelope:
    found = await queries.get_messages(
        rt,
        caller,
        uid=uid,
        sdid=sdid,
        sdids=sdids,
        mid=mid,
        field_presence=field_presence,
        filter_text=filter_text,
        start=start,
        end=end,
        order=order,
        count=count,
        offset=offset,
    )
    return NormalizedMessagesEnvelope(**found)


@router.get(
    "/actions",
    response_model=NormalizedActionsEnvelope,
    summary="Get normalized actions",
    description="Combinations: ddid+startDate+endDate; mid (+uid for application tokens); "
    "action+ddid+startDate+endDate. 'name' is an alias of action and 'sdid' of ddid.",
)
async def get_actions(
    rt: RuntimeDep,
    caller: Caller,
    uid: str | None = UidQuery,
    ddid: str | None = Query(None),
    sdid: str | None = Query(None, description="Alias of ddid"),
    mid: str | None = Query(None),
    action: str | None = Query(None),
    name: str | None = Query(None, description="Alias of action"),
    start: int | None = StartQuery,
    end: int | None = EndQuery,
    order: str | None = OrderQuery,
    count: int | None = CountQuery,
    offset: str | None = OffsetQuery,
) -> NormalizedActionsEnvelope:
    found = await queries.get_actions(
        rt,
        caller,
        uid=uid,
        ddid=ddid or sdid,
        mid=mid,
        action=action or name,
        start=start,
        end=end,
        order=order,
        count=count,
        offset=offset,
    )
    return NormalizedActionsEnvelope(**found)


@router.get(
    "/messages/last",
    response_model=LastMessagesEnvelope,
    summary="Get the last messages of devices",
    description="Up to count messages per device, newest first, devices in the order given.",
)
async def get_last_messages(
    rt: RuntimeDep,
    caller: Caller,
    sdids: str | None = Query(None, description="Comma-separated device ids (at most 100)"),
    count: int | None = CountQuery,
    field_presence: str | None = Query(None, alias="fieldPresence"),
) -> LastMessagesEnvelope:
    return LastMessagesEnvelope(**await queries.last_messages(rt, caller, sdids, count, field_presence))


@router.get(
    "/messages/snapshots",
    response_model=SnapshotResponses,
    summary="Get the last value of every field of devices",
)
async def get_snapshots(
    rt: RuntimeDep,
    caller: Caller,
    sdids: str | None = Query(None, description="Comma-separated device ids (at most 100)"),
    include_ts: bool = Query(False, alias="includeTimestamp", description='Leaves as {"value", "ts"}'),
) -> SnapshotResponses:
    return SnapshotResponses(**await queries.snapshots(rt, caller, sdids, include_ts))


@router.get(
    "/messages/presence",
    response_model=FieldPresenceEnvelope,
    summary="Get the intervals that hold messages",
    description="interval: minute (range ≤1 hour), hour (≤1 day), day (≤31 days), month (≤1 year), "
    "year (≤10 years); UTC interval starts.",
)
async def get_presence(
    rt: RuntimeDep,
    caller: Caller,
    sdid: str | None = Query(None),
    field_presence: str | None = Query(None, alias="fieldPresence"),
    start: int | None = StartQuery,
    end: int | None = EndQuery,
    interval: str | None = Query(None),
) -> FieldPresenceEnvelope:
    found = await analytics.presence(rt, caller, sdid, field_presence, start, end, interval)
    return FieldPresenceEnvelope(**found)


@router.get(
    "/messages/analytics/aggregates",
    response_model=AggregatesResponse,
    summary="Get aggregates of a numeric field",
    description="count, min, max, mean, sum and population variance over startDate ≤ ts < endDate "
    "(both rounded down to the minute, ≤31 days), of messages received at least a minute ago.",
)
async def get_aggregates(
    rt: RuntimeDep,
    caller: Caller,
    sdid: str | None = Query(None),
    field: str | None = Query(None),
    start: int | None = StartQuery,
    end: int | None = EndQuery,
) -> AggregatesResponse:
    return AggregatesResponse(**await analytics.aggregates(rt, caller, sdid, field, start, end))


@router.get(
    "/messages/analytics/histogram",
    response_model=AggregatesHistogramResponse,
    summary="Get aggregates of a numeric field per interval",
    description="interval: minute (range ≤1 hour), hour (≤1 day), day (≤31 days), month and year "
    "(≤10 years); UTC buckets over startDate ≤ ts < endDate; empty buckets omitted.",
)
async def get_histogram(
    rt: RuntimeDep,
    caller: Caller,
    sdid: str | None = Query(None),
    field: str | None = Query(None),
    start: int | None = StartQuery,
    end: int | None = EndQuery,
    interval: str | None = Query(None),
) -> AggregatesHistogramResponse:
    found = await analytics.histogram(rt, caller, sdid, field, start, end, interval)
    return AggregatesHistogramResponse(**found)
