"""The one error tree of ThingCloud.

Services raise these exceptions; each channel (REST now, WebSocket and MQTT later) renders them in
one place into the ARTIK error body ``{"error": {"code", "message", "id", "errors"?}}``.  Every class
carries its HTTP status and its ARTIK ``error.code`` as class attributes, so a service never thinks
about HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class FieldError:
    """One bad input element: a dotted path (``if.and.0.field``) and what is wrong with it."""

    field: str
    messages: tuple[str, ...]

    def render(self) -> dict[str, Any]:
        # The contract's sources disagree on the key (``message`` vs ``messages``): emit both.
        return {"field": self.field, "message": list(self.messages), "messages": list(self.messages)}


class ApiError(Exception):
    """Base of every error a client may see. Subclasses set ``status`` and ``code``."""

    status: ClassVar[int] = 500
    code: ClassVar[int] = 500
    default_message: ClassVar[str] = "Internal server error"

    def __init__(self, message: str | None = None, *, code: int | None = None) -> None:
        self.message = message or self.default_message
        self.error_code = code if code is not None else self.code
        super().__init__(self.message)

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.error_code, "message": self.message}
        if request_id:
            error["id"] = request_id
        return {"error": error}


class ValidationFailed(ApiError):
    """400 / 4001: the request is well-formed HTTP but its content is not acceptable."""

    status = 400
    code = 4001
    default_message = "Validation Error"

    def __init__(
        self,
        message: str | None = None,
        errors: Iterable[FieldError] = (),
        *,
        code: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.errors: list[FieldError] = list(errors)

    @classmethod
    def field(cls, field: str, *messages: str, message: str | None = None) -> ValidationFailed:
        """Shortcut for the common single-field case."""
        return cls(message, [FieldError(field, tuple(messages))])

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        body = super().body(request_id)
        if self.errors:
            body["error"]["errors"] = [[e.render() for e in self.errors]]
        return body


class BadRequest(ApiError):
    """400 with code 400: a request that is wrong in a way that is not a field validation."""

    status = 400
    code = 400
    default_message = "Bad Request"


class Unauthorized(ApiError):
    status = 401
    code = 401
    default_message = "Please provide a valid authorization header"


class Forbidden(ApiError):
    status = 403
    code = 403
    default_message = "You don't have the right permissions"

    @classmethod
    def missing(cls, what: str, detail: Sequence[str] = ("",)) -> Forbidden:
        """The ARTIK wording: ``You do not have the right permission: 'device_type' ['']``."""
        listed = ", ".join(f"'{d}'" for d in detail)
        return cls(f"You do not have the right permission: '{what}' [{listed}]")


class NotFound(ApiError):
    status = 404
    code = 404
    default_message = "Not Found"


class DeviceTypeNotFound(NotFound):
    code = 1101
    default_message = "Device type does not exist."


class UserNotFound(NotFound):
    code = 1201
    default_message = "User does not exist."


class Conflict(ApiError):
    status = 409
    code = 409
    default_message = "Conflict"


class EmailTaken(Conflict):
    code = 1202
    default_message = "Email already registered."


class UsernameTaken(Conflict):
    code = 1203
    default_message = "Username already registered."


class Gone(ApiError):
    """410: the object existed but is no more (an expired export)."""

    status = 410
    code = 410
    default_message = "Gone"


class PayloadTooLarge(ApiError):
    status = 413
    code = 413
    default_message = "Payload too large"


class RateLimited(ApiError):
    status = 429
    code = 429
    default_message = "MINUTE rate limit exceeded"


class Unavailable(ApiError):
    """503: a transient failure (the database is unreachable). Never a wrong 200."""

    status = 503
    code = 503
    default_message = "Service temporarily unavailable, please retry"


class OAuthError(Exception):
    """An error of the OAuth2 token endpoint, rendered as ``{"error": ..., "error_description": ...}``.

    OAuth2 clients expect RFC 6749 bodies, not the ARTIK envelope, so this is a separate branch.
    """

    def __init__(self, error: str, description: str = "", status: int = 400) -> None:
        self.error = error
        self.description = description
        self.status = status
        super().__init__(f"{error}: {description}")

    def body(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body
