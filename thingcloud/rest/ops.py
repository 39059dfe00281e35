"""Operations endpoints: ``/healthz`` (process up), ``/readyz`` (database and schema), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from thingcloud.migrate import current_revision, head_revision
from thingcloud.rest.deps import RuntimeDep

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers and its schema is current")
async def readyz(rt: RuntimeDep) -> JSONResponse:
    try:
        await rt.db.ping()
        current = await current_revision(rt.db)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
    head = head_revision()
    if current != head:
        return JSONResponse(
            {"status": "migrations pending", "current": current, "head": head}, status_code=503
        )
    return JSONResponse({"status": "ok", "database": rt.db.engine.dialect.name, "revision": current})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
