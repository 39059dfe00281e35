"""Structured logging: one JSON object per line, carrying the request id, never a secret.

Tokens travel in query strings on a few paths (WebSocket ``Authorization=bearer+…``, OAuth ``code``),
so every logged URL goes through ``redact_query`` first. uvicorn's own access log is switched off in
favour of ours, which is redacted.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from urllib.parse import parse_qsl, urlencode

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

SECRET_PARAMS = frozenset(
    {
        "authorization",
        "access_token",
        "refresh_token",
        "token",
        "code",
        "client_secret",
        "password",
        "code_verifier",
        "device_code",
        "client_credentials",
        "csrf",
        "nonce",
    }
)


def redact_query(query: str) -> str:
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "***" if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Neither format shows where a call was made, nor thread or process: skip collecting them (the
    # logging HOWTO's "Optimization" settings). Finding the caller walks the stack on every record,
    # and the access log writes one record per request: a few % of ingest throughput.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our access log replaces uvicorn's, which would print query strings unredacted.
    logging.getLogger("uvicorn.access").handlers[:] = []
    logging.getLogger("uvicorn.access").propagate = False
    logging.getLogger("uvicorn.access").disabled = True
