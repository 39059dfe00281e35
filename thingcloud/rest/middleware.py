"""Pure-ASGI middleware around every HTTP request (no BaseHTTPMiddleware: it costs throughput).

``RequestContext`` gives each request an id (``X-Request-Id``, also in error bodies and logs), adds
CORS and rate-limit headers, records Prometheus metrics by route template, and writes the redacted
access log line — except, by default, for the successful answers of the device-data hot path
(``POST /messages``, ``POST /actions``; ``THINGCLOUD_ACCESS_LOG_DATA``): at thousands of device
messages a second a line each cost about a tenth of the ingest throughput (profiled: the record, its
JSON and the write) and drowned everything else in the log. Those requests are still counted and
timed in ``/metrics``, and their errors are logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thingcloud.ids import new_id
from thingcloud.logs import redact_query, request_id_var

access_log = logging.getLogger("thingcloud.access")

CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (
        b"access-control-allow-headers",
        b"Origin, X-Requested-With, Content-Type, Accept, Referer, User-Agent, Authorization",
    ),
    (b"access-control-allow-methods", b"POST, GET, PUT, DELETE, OPTIONS"),
    (b"access-control-expose-headers", b"X-Rate-Limit-Limit, X-Rate-Limit-Remaining, X-Rate-Limit-Reset"),
]


class HttpMetrics:
    """The HTTP part of ``/metrics``; other areas register their own metrics on the same registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "thingcloud_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "thingcloud_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.in_flight = Gauge(
            "thingcloud_http_requests_in_flight", "HTTP requests being served", registry=registry
        )


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics, log_device_data: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.log_device_data = log_device_data

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and _is_preflight(scope):
            await _preflight(send)
            return
        request_id = new_id()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(CORS_HEADERS)
                rate = state.get("rate_status")
                if rate is not None:
                    headers.extend(rate.headers())
                message["headers"] = headers
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(elapsed)
            quiet = status < 400 and state.get("device_data") and not self.log_device_data
            if not quiet and access_log.isEnabledFor(logging.INFO):
                query = scope.get("query_string", b"").decode("latin-1")
                client = scope.get("client")
                access_log.info(
                    "%s %s %s",
                    method,
                    scope["path"],
                    status,
                    extra={
                        "fields": {
                            "method": method,
                            "path": scope["path"],
                            "query": redact_query(query),
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 2),
                            "client": client[0] if client else None,
                        }
                    },
                )
            request_id_var.reset(token)


def _is_preflight(scope: Scope) -> bool:
    return any(k == b"access-control-request-method" for k, _ in scope.get("headers", []))


async def _preflight(send: Send) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [*CORS_HEADERS, (b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})
