"""HTTP routes of subscriptions and notifications (S60–S64, and ``DELETE /subscriptions/{subId}``)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from thingcloud.areas.subscriptions import service
from thingcloud.areas.subscriptions.schemas import (
    NotifMessagesResponse,
    Subscription,
    SubscriptionEnvelope,
    SubscriptionInfo,
    SubscriptionsEnvelope,
    ValidationCallbackInfo,
    error_responses,
)
from thingcloud.rest.deps import Caller, RuntimeDep

router = APIRouter(prefix="/v1.1", tags=["Subscriptions"])

CountQuery = Query(None, description="Page size, 1-100 (default 100; larger values are clamped)")
OffsetQuery = Query(None, description="Items to skip (default 0)")


def _one(data: dict[str, object]) -> SubscriptionEnvelope:
    return SubscriptionEnvelope(data=Subscription.model_validate(data))


@router.post(
    "/subscriptions",
    response_model=SubscriptionEnvelope,
    summary="Create a subscription",
    description="All of a user's devices (`uid`), a type (`uid`+`sdtid`), one device (`uid`+`sdid`) or "
    "actions to a device (`messageType` action, `ddid`); `includeSharedDevices` adds devices shared "
    "with the user. An `httpCallback` subscription is `PENDING_CALLBACK_VALIDATION` until the client "
    "validates the nonce POSTed to its HTTPS `callbackUrl` (same registrable domain as the "
    "application's redirect URL); `awsKinesis` needs a Kinesis sink configured on the server.",
    responses=error_responses(400, 401, 403, 404),
)
async def create_subscription(rt: RuntimeDep, caller: Caller, body: SubscriptionInfo) -> SubscriptionEnvelope:
    return _one(await service.create_subscription(rt, caller, body))


@router.get(
    "/subscriptions",
    response_model=SubscriptionsEnvelope,
    summary="List the application's subscriptions",
    description="Application token only; a flat, offset-paged array.",
    responses=error_responses(400, 401, 403),
)
async def get_all_subscriptions(
    rt: RuntimeDep,
    caller: Caller,
    uid: str | None = Query(None, description="Only this user's subscriptions"),
    count: int | None = CountQuery,
    offset: int | None = OffsetQuery,
) -> SubscriptionsEnvelope:
    items, total, offset = await service.list_subscriptions(rt, caller, uid, count, offset)
    return SubscriptionsEnvelope(
        data=[Subscription.model_validate(i) for i in items], total=total, offset=offset, count=len(items)
    )


@router.get(
    "/subscriptions/{sub_id}",
    response_model=SubscriptionEnvelope,
    summary="Get a subscription",
    responses=error_responses(401, 403, 404),
)
async def get_subscription(rt: RuntimeDep, caller: Caller, sub_id: str) -> SubscriptionEnvelope:
    return _one(await service.get_subscription(rt, caller, sub_id))


@router.delete(
    "/subscriptions/{sub_id}",
    response_model=SubscriptionEnvelope,
    summary="Delete a subscription",
    responses=error_responses(401, 403, 404),
)
async def delete_subscription(rt: RuntimeDep, caller: Caller, sub_id: str) -> SubscriptionEnvelope:
    return _one(await service.delete_subscription(rt, caller, sub_id))


@router.post(
    "/subscriptions/{sub_id}/validate",
    response_model=SubscriptionEnvelope,
    summary="Validate a subscription",
    description="No token: the nonce received by the callback (and the application's `aid`) make the "
    "subscription ACTIVE. Also re-activates a SUSPENDED subscription (ThingCloud extension).",
    responses=error_responses(400, 403, 404),
    openapi_extra={"security": []},
)
async def validate_subscription(
    rt: RuntimeDep, sub_id: str, body: ValidationCallbackInfo
) -> SubscriptionEnvelope:
    return _one(await service.validate_subscription(rt, sub_id, body.aid, body.nonce))


@router.get(
    "/notifications/{notif_id}/messages",
    response_model=NotifMessagesResponse,
    tags=["Notifications"],
    summary="Get the messages of a notification",
    description="The normalized messages (or actions) a notification announced, by `ts`; a flat, "
    "offset-paged array.",
    responses=error_responses(400, 401, 403, 404),
)
async def get_messages(
    rt: RuntimeDep,
    caller: Caller,
    notif_id: str,
    order: str | None = Query(None, description="asc (default) | desc"),
    count: int | None = CountQuery,
    offset: int | None = OffsetQuery,
) -> NotifMessagesResponse:
    return NotifMessagesResponse.model_validate(
        await service.notification_messages(rt, caller, notif_id, order, count, offset)
    )
