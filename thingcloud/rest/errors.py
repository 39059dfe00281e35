"""Rendering of every error on the REST channel into the ARTIK error body (REFERENCE.md §2.5).

Service exceptions (``ApiError``), FastAPI's request validation, Starlette's HTTP errors, database
outages (503, never a wrong 200) and unexpected exceptions (500) all end here, in one format with the
request id.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from thingcloud.errors import ApiError, FieldError, OAuthError, Unavailable, ValidationFailed

log = logging.getLogger(__name__)

_HTTP_MESSAGES = {
    404: "Not Found",
    405: "Method Not Allowed",
    401: "Please provide a valid authorization header",
}


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def render(error: ApiError, request: Request, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(request_id(request)), status_code=error.status, headers=headers)


def validation_errors(exc: RequestValidationError) -> ValidationFailed:
    """Turn pydantic's error list into field errors with dotted paths (``body.name`` → ``name``)."""
    items: list[FieldError] = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        field = ".".join(loc) or "body"
        message = _friendly(err)
        items.append(FieldError(field, (message,)))
    return ValidationFailed("Validation Error", items)


def _friendly(err: Any) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "Required parameter"
    if kind == "json_invalid":
        return "Malformed JSON body"
    if kind in ("string_too_short",):
        return f"Minimum length {ctx.get('min_length')}"
    if kind in ("string_too_long",):
        return f"Maximum length {ctx.get('max_length')}"
    if kind.startswith(("int_", "float_")):
        return "Numeric field only"
    if kind.startswith("bool"):
        return "Boolean field only"
    if kind.startswith("string"):
        return "Text field only"
    return str(err.get("msg", "Invalid value"))


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return render(exc, request)

    @app.exception_handler(OAuthError)
    async def _oauth_error(request: Request, exc: OAuthError) -> Response:
        headers = {"Cache-Control": "no-store"}
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="thingcloud"'
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return render(validation_errors(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = _HTTP_MESSAGES.get(exc.status_code) or str(exc.detail)
        body: dict[str, Any] = {
            "error": {"code": exc.status_code, "message": message, "id": request_id(request)}
        }
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def _unavailable(request: Request, exc: Exception) -> Response:
        return render(as_api_error(exc), request, headers={"Retry-After": "1"})

    for kind in TRANSIENT:
        app.add_exception_handler(kind, _unavailable)

    @app.exception_handler(DBAPIError)
    async def _dbapi(request: Request, exc: DBAPIError) -> Response:
        error = as_api_error(exc)
        return render(error, request, headers={"Retry-After": "1"} if error.status == 503 else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return render(as_api_error(exc), request)


TRANSIENT = (OperationalError, InterfaceError, PoolTimeout, ConnectionError, OSError)


def as_api_error(exc: Exception) -> ApiError:
    """What a client sees for any exception: service errors as they are, a database outage as 503
    (never a wrong 200), anything else as a logged 500. Shared by the FastAPI handlers above and the
    hot path (``rest/hotpath.py``), which runs outside FastAPI's exception middleware."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, TRANSIENT) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return Unavailable()
    log.error("unhandled error", exc_info=exc)
    return ApiError()
