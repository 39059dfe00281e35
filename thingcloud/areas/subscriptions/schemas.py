"""Wire models of subscriptions and notifications (REFERENCE.md §3.10, §3.11, §4.10): the
Subscription, its envelopes, the request bodies, and the notification's message page.

Responses carry every field the SDK models declare (``null`` when unknown). Lists are flat arrays
(SAMI and Swift), not the SDK's ``data.subscriptions`` / ``data.messages`` wrappers (§6).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Subscription(BaseModel):
    id: str
    aid: str
    uid: str
    messageType: str
    subscriptionType: str
    sdtid: str | None = None
    sdid: str | None = None
    ddid: str | None = None
    includeSharedDevices: bool = False
    description: str | None = None
    name: str | None = None
    callbackUrl: str | None = None
    awsKey: str | None = None
    awsSecret: str | None = Field(None, description="Never returned (always null)")
    awsRegion: str | None = None
    awsKinesisStreamName: str | None = None
    awsKinesisStream: str | None = Field(None, description="Swift's name of awsKinesisStreamName")
    status: str = Field(description="PENDING_CALLBACK_VALIDATION | ACTIVE | SUSPENDED")
    failures: int = Field(0, description="Consecutive failed deliveries (ThingCloud extension)")
    createdOn: int
    modifiedOn: int


class SubscriptionEnvelope(BaseModel):
    data: Subscription


class SubscriptionsEnvelope(BaseModel):
    data: list[Subscription]
    total: int
    offset: int
    count: int


class SubscriptionInfo(BaseModel):
    """``POST /subscriptions``. Unknown fields are ignored and ``null`` means absent (§0.2)."""

    model_config = ConfigDict(extra="ignore")

    messageType: str | None = Field(None, description="message | action (required)")
    uid: str | None = Field(None, description="The user whose data is subscribed to (required)")
    subscriptionType: str | None = Field(None, description="httpCallback (default) | awsKinesis")
    callbackUrl: str | None = None
    sdtid: str | None = None
    sdid: str | None = None
    ddid: str | None = None
    includeSharedDevices: bool | None = None
    description: str | None = None
    name: str | None = Field(None, description="Ignored (declared by the SDK)")
    awsKey: str | None = None
    awsSecret: str | None = None
    awsRegion: str | None = None
    awsKinesisStreamName: str | None = None
    awsKinesisStream: str | None = None


class ValidationCallbackInfo(BaseModel):
    """``POST /subscriptions/{subId}/validate``: the nonce of the confirmation POST."""

    model_config = ConfigDict(extra="ignore")

    aid: str | None = Field(None, description="The application's client id (optional, checked if given)")
    nonce: str | None = None


class NotifMessagesResponse(BaseModel):
    order: str
    total: int
    offset: int
    count: int
    data: list[dict[str, Any]] = Field(description="Normalized messages (or actions) of the notification")


class ErrorBody(BaseModel):
    error: dict[str, Any]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of the error answers a route documents, in the ARTIK error format (§2.5)."""
    text = {
        400: "Validation error (4001) or a bad combination of fields",
        401: "Missing or invalid token",
        403: "Not the caller's subscription, user or device; wrong nonce or aid",
        404: "Unknown subscription, notification, user or device",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}
