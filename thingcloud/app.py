"""``create_app(settings)``: the ASGI application, with every router, error handler and middleware.

Nothing happens at import time. The lifespan opens the runtime (database, bus, caches), runs the
migrations and the first-start bootstrap when asked to, and closes everything on shutdown.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from thingcloud import __version__
from thingcloud.areas.devicemgmt import properties as devicemgmt_properties
from thingcloud.areas.devicemgmt import task_lifecycle as devicemgmt_tasks
from thingcloud.areas.devicemgmt.routes import router as devicemgmt_router
from thingcloud.areas.devicemgmt.task_routes import router as devicemgmt_tasks_router
from thingcloud.areas.devices.routes import router as devices_router
from thingcloud.areas.devices.shares_routes import router as shares_router
from thingcloud.areas.devicetypes.routes import router as devicetypes_router
from thingcloud.areas.exports.routes import router as exports_router
from thingcloud.areas.messages import rollup_maintenance as message_rollups
from thingcloud.areas.messages.query_routes import router as message_queries_router
from thingcloud.areas.messages.routes import OPENAPI_PATHS as MESSAGES_OPENAPI
from thingcloud.areas.messages.routes import endpoints as messages_endpoints
from thingcloud.areas.messages.routes import retention_router
from thingcloud.areas.messages.writer import IngestMetrics
from thingcloud.areas.organizations.routes import router as organizations_router
from thingcloud.areas.rules import engine as rules_engine
from thingcloud.areas.rules.routes import router as rules_router
from thingcloud.areas.scenes.routes import router as scenes_router
from thingcloud.areas.subscriptions import matching as subscription_matching
from thingcloud.areas.subscriptions.routes import router as subscriptions_router
from thingcloud.areas.users.routes import router as users_router
from thingcloud.auth.pages import router as pages_router
from thingcloud.auth.routes import router as tokens_router
from thingcloud.bootstrap import first_start
from thingcloud.bus import Bus
from thingcloud.channels import devicemgmt as devicemgmt_channel
from thingcloud.channels import websocket as channels
from thingcloud.channels.mqtt.server import MqttServer
from thingcloud.clock import Clock
from thingcloud.feed import FeedMetrics
from thingcloud.jobs.runner import JobMetrics
from thingcloud.migrate import migrate
from thingcloud.natsbus import BusMetrics, NatsBus
from thingcloud.rest import errors
from thingcloud.rest.hotpath import HotPath
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
        if isinstance(rt.bus, NatsBus):
            rt.bus.metrics = bus_metrics
        if run_migrations:
            await migrate(rt.db)
        await rt.start()
        if run_migrations:
            shown = await first_start(rt)
            if shown:
                print(shown, flush=True)
        rt.writer.metrics = ingest_metrics
        # Everything built so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise walk it all and show up as latency spikes.
        gc.collect()
        gc.freeze()
        devicemgmt_tasks.register(rt)
        await rt.jobs.start(job_metrics)
        await devicemgmt_properties.attach(rt)
        await message_rollups.register(rt)
        await subscription_matching.attach(rt)
        await rules_engine.register(rt)
        await rt.feed.start(feed_metrics)
        hub = await channels.start(app, rt)
        await devicemgmt_channel.attach(rt, hub)
        mqtt = MqttServer(rt, hub)
        app.state.mqtt = mqtt
        await mqtt.start()
        log.info(
            "thingcloud ready",
            extra={"fields": {"database": rt.db.engine.url.render_as_string(hide_password=True)}},
        )
        try:
            yield
        finally:
            log.info("thingcloud shutting down")
            await mqtt.stop()
            await hub.stop()
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
    job_metrics, feed_metrics = JobMetrics(registry), FeedMetrics(registry)
    ingest_metrics = IngestMetrics(registry)
    bus_metrics = BusMetrics(registry) if settings.nats_url or isinstance(bus, NatsBus) else None
    errors.install(app)
    for router in (
        ops_router,
        tokens_router,
        pages_router,
        users_router,
        retention_router,
        organizations_router,
        devicetypes_router,
        devices_router,
        shares_router,
        message_queries_router,
        exports_router,
        subscriptions_router,
        rules_router,
        scenes_router,
        devicemgmt_router,
        devicemgmt_tasks_router,
    ):
        app.include_router(router)
    # The message hot path: plain endpoints served ahead of FastAPI's stack, documented by hand.
    install_openapi(app, MESSAGES_OPENAPI)
    channels.install(app)
    app.add_middleware(HotPath, endpoints=messages_endpoints)
    app.add_middleware(
        RequestContext, metrics=HttpMetrics(registry), log_device_data=settings.access_log_data
    )
    return app


def install_openapi(app: FastAPI, extra_paths: dict[str, dict[str, Any]]) -> None:
    """Generated OpenAPI, plus the hand-written entries of the plain routes and the bearer scheme."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path, operations in extra_paths.items():
            schema["paths"].setdefault(path, {}).update(operations)
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A user, application or device token",
        }
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
