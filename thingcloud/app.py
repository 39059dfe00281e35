"""``create_app(settings)``: the ASGI application, with every router, error handler and middleware.

Nothing happens at import time. The lifespan opens the runtime (database, bus, caches), runs the
migrations and the first-start bootstrap when asked to, and closes everything on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from thingcloud import __version__
from thingcloud.areas.users.routes import router as users_router
from thingcloud.auth.routes import router as tokens_router
from thingcloud.bootstrap import first_start
from thingcloud.bus import Bus
from thingcloud.clock import Clock
from thingcloud.migrate import migrate
from thingcloud.rest import errors
from thingcloud.rest.middleware import HttpMetrics, RequestContext
from thingcloud.rest.ops import router as ops_router
from thingcloud.runtime import Runtime
from thingcloud.settings import Settings

log = logging.getLogger("thingcloud")


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    bus: Bus | None = None,
    run_migrations: bool = True,
) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = Runtime.build(settings, clock=clock, bus=bus)
        app.state.runtime = rt
        if run_migrations:
            await migrate(rt.db)
        await rt.start()
        if run_migrations:
            shown = await first_start(rt)
            if shown:
                print(shown, flush=True)
        log.info(
            "thingcloud ready",
            extra={"fields": {"database": rt.db.engine.url.render_as_string(hide_password=True)}},
        )
        try:
            yield
        finally:
            log.info("thingcloud shutting down")
            await rt.close()
            log.info("thingcloud stopped")

    app = FastAPI(
        title="ThingCloud",
        version=__version__,
        description="A self-hosted IoT data cloud that speaks the Samsung ARTIK Cloud REST API v1.1.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    registry = CollectorRegistry()
    app.state.registry = registry
    errors.install(app)
    for router in (ops_router, tokens_router, users_router):
        app.include_router(router)
    app.add_middleware(RequestContext, metrics=HttpMetrics(registry))
    return app
