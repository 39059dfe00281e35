"""The MQTT listeners of this node: plain on ``THINGCLOUD_MQTT_PORT``, TLS on
``THINGCLOUD_MQTT_TLS_PORT`` when a certificate and key are configured. Started and stopped by the
app's lifespan, after and before the ``ChannelHub`` they hand their connections to.

A port that cannot be opened (taken, no permission) is logged as an error and left closed: the HTTP
API keeps serving, so one misconfigured port does not take the whole node down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from thingcloud.channels import protocol
from thingcloud.channels.connections import ChannelHub
from thingcloud.channels.mqtt.connection import MqttSession, serve_connection
from thingcloud.channels.sessions import CLOSE_WAIT
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

BACKLOG = 1024  # devices reconnect in bursts after an outage
DRAIN_WAIT = 5.0  # seconds a stopping server gives received publishes to be stored and acknowledged


class MqttServer:
    """``app.state.mqtt``: the listening sockets and the connection tasks they started."""

    def __init__(self, rt: Runtime, hub: ChannelHub) -> None:
        self.rt = rt
        self.hub = hub
        self.servers: list[asyncio.Server] = []
        self.ports: list[int] = []  # the ports actually listening
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        settings = self.rt.settings
        if not settings.mqtt_enabled:
            return
        await self._listen(settings.mqtt_port, None)
        if settings.mqtt_tls_cert and settings.mqtt_tls_key:
            try:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(settings.mqtt_tls_cert, settings.mqtt_tls_key)
            except (OSError, ssl.SSLError) as exc:
                log.error("mqtt: TLS certificate or key not usable, no MQTT TLS port: %s", exc)
                return
            await self._listen(settings.mqtt_tls_port, context)

    async def _listen(self, port: int, context: ssl.SSLContext | None) -> None:
        host = self.rt.settings.host
        kind = "mqtts" if context is not None else "mqtt"
        try:
            server = await asyncio.start_server(
                self._connection, host, port, ssl=context, backlog=BACKLOG, reuse_address=True
            )
        except OSError as exc:
            log.error(
                "%s: cannot listen on %s:%s (%s); MQTT is off on that port, HTTP keeps serving",
                kind,
                host,
                port,
                exc.strerror or exc,
                extra={"fields": {"port": port, "error": str(exc)}},
            )
            return
        self.servers.append(server)
        self.ports.append(port)
        log.info("%s listening on %s:%s", kind, host, port, extra={"fields": {"port": port}})

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await serve_connection(self.rt, self.hub, reader, writer)
        except Exception:  # one connection's failure never reaches the listener
            log.exception("mqtt: connection failed")
        finally:
            if task is not None:
                self._connections.discard(task)

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        sessions = [s for s in self.hub.sessions if isinstance(s, MqttSession)]
        # Read nothing new, and let the publishes already received be stored and acknowledged, so
        # that a device does not send them again (and store them twice) after the restart.
        for session in sessions:
            pause = getattr(session.writer.transport, "pause_reading", None)
            if pause is not None:
                with contextlib.suppress(Exception):
                    pause()
        storing = [task for s in sessions for task in s.inflight]
        if storing:
            await asyncio.wait(storing, timeout=DRAIN_WAIT)
        for session in sessions:
            session.finish(None, protocol.CLOSE_GOING_AWAY, "Server shutting down")
        if self._connections:
            # Each connection finishes storing what it received, then says the device left.
            await asyncio.wait(list(self._connections), timeout=CLOSE_WAIT)
        for task in list(self._connections):
            task.cancel()
        for server in self.servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_WAIT):
                    await server.wait_closed()
        self.servers.clear()
