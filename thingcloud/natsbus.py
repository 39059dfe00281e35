"""The bus over NATS: several ThingCloud nodes share revocations, cache invalidations and live data.

``NatsBus`` implements the ``Bus`` protocol of thingcloud/bus.py. Runtime.build picks it when
``THINGCLOUD_NATS_URL`` is set. Every subject travels as ``<prefix>.<subject>`` (prefix from
``THINGCLOUD_NATS_SUBJECT_PREFIX``, default ``thingcloud``) so that two clouds can share one NATS
server; payloads are JSON (orjson). Wildcards ``*`` and ``>`` mean the same as in-process.

Local delivery does not depend on NATS. A publish is handed to this node's own subscribers inline,
exactly as ``InProcessBus`` does (so a token revoked on this node is refused by this node the moment
``publish`` returns, outage or not), and sent to NATS for the other nodes. The connection is opened
with ``no_echo``, so a node never receives its own publishes twice. Handlers for other nodes'
messages run when the message arrives (in nats-py's per-subscription task), one at a time per pattern.

A NATS outage never fails or blocks the caller: the connection reconnects by itself (forever);
while it is down nats-py buffers publishes up to ``PENDING_BYTES`` and sends them on reconnect.
Anything beyond that (also while connected to a server that stopped reading), and every publish
before the first connection, is dropped, logged once per outage and counted in
``thingcloud_bus_publish_failures_total``. Messages other nodes published while this node was cut
off are lost to it, so after every reconnect this node's subscribers get ``bus.resync`` and drop
their caches. The bus is a doorbell and fast path only: the durable feed
(thingcloud/feed.py) and the store are what guarantee delivery, and consumers poll when a ring is lost.

JetStream is not used: no stream has to be kept. Anything that must survive is already committed in
the database (feed entries, messages, actions, jobs) before its bus message is sent, and
per-consumer-group processing is the feed's leased checkpoints; a stream would be a second copy
with its own retention and failure modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from prometheus_client import CollectorRegistry, Counter, Gauge

from thingcloud.bus import BUS_RESYNC, Handler, InProcessBus, Subscription

log = logging.getLogger(__name__)

PENDING_BYTES = 2 * 1024 * 1024
"""Publishes buffered while reconnecting; the excess is dropped (and counted)."""
FLUSH_TIMEOUT = 1.0
"""Longest nats-py's flusher waits on a forced flush (publishes never force one: see ``_send``)."""
PING_SECONDS = 10


class BusMetrics:
    """The NATS part of ``/metrics`` (registered only when the bus runs over NATS)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "thingcloud_bus_published_total", "Bus messages handed to NATS", registry=registry
        )
        self.publish_failures = Counter(
            "thingcloud_bus_publish_failures_total",
            "Bus messages other nodes did not get (NATS unreachable, buffer full), by subject's first token",
            ["subject"],
            registry=registry,
        )
        self.received = Counter(
            "thingcloud_bus_received_total",
            "Bus messages received from other nodes (once per matching subscription pattern)",
            registry=registry,
        )
        self.connected = Gauge("thingcloud_bus_connected", "1 while connected to NATS", registry=registry)


class _Pattern:
    """One NATS subscription per distinct pattern, shared by this node's handlers of that pattern."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.handlers: list[Handler] = []
        self.nats: NatsSubscription | None = None


class _NatsBusSubscription:
    def __init__(self, bus: NatsBus, pattern: str, handler: Handler, local: Subscription) -> None:
        self.bus, self.pattern, self.handler, self.local = bus, pattern, handler, local

    async def unsubscribe(self) -> None:
        await self.local.unsubscribe()
        await self.bus._release(self.pattern, self.handler)


class NatsBus:
    """The ``Bus`` over NATS: local subscribers inline, other nodes through ``<prefix>.<subject>``."""

    def __init__(
        self,
        url: str,
        prefix: str = "thingcloud",
        *,
        connect_wait: float = 2.0,
        reconnect_wait: float = 2.0,
        metrics: BusMetrics | None = None,
    ) -> None:
        self.url, self.prefix = url, prefix
        self.connect_wait, self.reconnect_wait = connect_wait, reconnect_wait
        self.metrics = metrics
        self.local = InProcessBus()
        self.publish_failures = 0
        self._client: Client | None = None  # set once the first connection succeeded
        self._connecting: asyncio.Task[None] | None = None
        self._patterns: dict[str, _Pattern] = {}
        self._lock = asyncio.Lock()
        self._failing = False  # a publish failure was logged; the next success logs recovery
        self._late = False  # start() gave up waiting: the node served before NATS answered
        self._last_error = ""

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def start(self) -> None:
        """Connect, waiting at most ``connect_wait``: an unreachable NATS does not stop the node from
        serving; the connection keeps being tried in the background."""
        self._connecting = asyncio.create_task(self._connect(), name="nats-connect")
        done, _ = await asyncio.wait({self._connecting}, timeout=self.connect_wait)
        if done:
            self._connecting.result()  # a configuration error (a malformed URL) stops the start
        else:
            self._late = True
            log.error(
                "NATS at %s unreachable: other nodes do not hear from this one until it answers", self.url
            )

    async def _connect(self) -> None:
        client = Client()
        await client.connect(
            servers=[self.url],
            name=f"thingcloud:{socket.gethostname()}:{os.getpid()}",
            no_echo=True,  # this node's subscribers get its publishes inline, not a second time
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
            connect_timeout=2,
            ping_interval=PING_SECONDS,  # a server that stops answering is left after 3 pings
            max_outstanding_pings=2,
            pending_size=PENDING_BYTES,
            flush_timeout=FLUSH_TIMEOUT,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        async with self._lock:
            self._client = client
            for pattern in self._patterns.values():
                await self._open(pattern, confirm=False)
            with contextlib.suppress(Exception):
                await client.flush(timeout=1)  # the subscriptions above are in place
        self._set_connected(True)
        log.info("bus connected to NATS at %s (subject prefix %s)", self.url, self.prefix)
        if self._late:  # this node served before: it missed what the others published meanwhile
            await self.local.publish(BUS_RESYNC, {})

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connecting
        client, self._client = self._client, None
        if client is not None:
            if client.is_connected:  # what was just published (a CLI command's) gets out first
                with contextlib.suppress(Exception):
                    await client.flush(timeout=1)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), timeout=2)
        self._patterns.clear()
        await self.local.close()

    async def publish(self, subject: str, payload: dict[str, Any]) -> None:
        await self._send(subject, payload)
        await self.local.publish(subject, payload)

    async def _send(self, subject: str, payload: dict[str, Any]) -> None:
        if subject == BUS_RESYNC:
            return  # about this node's own connection: meaningless elsewhere
        client = self._client
        try:
            if client is None:
                raise ConnectionError("not connected yet")
            try:
                data = orjson.dumps(payload)
            except orjson.JSONEncodeError:
                log.exception("bus: %s payload is not JSON; not sent to other nodes", subject)
                raise
            if client.pending_data_size + len(data) > PENDING_BYTES:
                # NATS is not reading (a hung server, a stalled link): nats-py would make this
                # publish wait for the buffer to drain; drop it instead, the caller never waits.
                raise BufferError("outgoing buffer full")
            await client.publish(f"{self.prefix}.{subject}", data)
            # nats-py only queues the bytes for its flusher task; let it run now, so that they are
            # on the wire before the caller answers (a token revoked through node A and presented
            # to node B right after A's response is then refused by B, 30 of 30 times measured).
            await asyncio.sleep(0)
        except Exception as exc:
            self.publish_failures += 1
            if self.metrics is not None:
                self.metrics.publish_failures.labels(subject.split(".", 1)[0]).inc()
            if not self._failing:
                self._failing = True
                log.warning(
                    "bus: publishing to NATS failing (%s); other nodes miss events until it recovers",
                    type(exc).__name__,
                )
            return
        if self.metrics is not None:
            self.metrics.published.inc()
        if self._failing and client.is_connected:
            self._failing = False
            log.info("bus: publishing to NATS works again")

    async def subscribe(self, pattern: str, handler: Handler) -> Subscription:
        local = await self.local.subscribe(pattern, handler)
        async with self._lock:
            entry = self._patterns.get(pattern)
            if entry is None:
                entry = self._patterns[pattern] = _Pattern(pattern)
            entry.handlers.append(handler)
            if self._client is not None:
                await self._open(entry)
        return _NatsBusSubscription(self, pattern, handler, local)

    async def _open(self, entry: _Pattern, confirm: bool = True) -> None:
        """Subscribe on NATS (under the lock); nats-py re-subscribes by itself after a reconnect."""
        if entry.nats is not None or self._client is None or entry.pattern == BUS_RESYNC:
            return

        async def deliver(msg: Msg) -> None:
            await self._deliver(entry, msg)

        try:
            entry.nats = await self._client.subscribe(f"{self.prefix}.{entry.pattern}", cb=deliver)
        except Exception as exc:  # invalid pattern or a closed connection: local delivery still works
            log.error("bus: cannot subscribe to %s on NATS: %s", entry.pattern, exc)
            return
        if confirm and self._client.is_connected:
            # A round trip: once ``subscribe`` returns, the server delivers what others publish.
            with contextlib.suppress(Exception):
                await self._client.flush(timeout=1)

    async def _release(self, pattern: str, handler: Handler) -> None:
        async with self._lock:
            entry = self._patterns.get(pattern)
            if entry is None:
                return
            with contextlib.suppress(ValueError):
                entry.handlers.remove(handler)
            if entry.handlers:
                return
            del self._patterns[pattern]
            if entry.nats is not None:
                with contextlib.suppress(Exception):
                    await entry.nats.unsubscribe()

    async def _deliver(self, entry: _Pattern, msg: Msg) -> None:
        subject = msg.subject[len(self.prefix) + 1 :]
        try:
            payload = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            log.warning("bus: dropped a message on %s that is not JSON", msg.subject)
            return
        if self.metrics is not None:
            self.metrics.received.inc()
        for handler in list(entry.handlers):
            try:
                await handler(subject, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus handler for %s failed on %s", entry.pattern, subject)

    def _set_connected(self, connected: bool) -> None:
        if self.metrics is not None:
            self.metrics.connected.set(1 if connected else 0)

    async def _on_error(self, exc: Exception) -> None:
        # While NATS is down the same error comes back on every attempt: log each kind once.
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_error:
            self._last_error = text
            log.warning("bus: NATS error: %s", text)

    async def _on_disconnected(self) -> None:
        self._set_connected(False)
        if self._client is not None:
            log.warning("bus: disconnected from NATS at %s; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        self._set_connected(True)
        self._last_error = ""
        log.info("bus: reconnected to NATS at %s", self.url)
        await self.local.publish(BUS_RESYNC, {})

    async def _on_closed(self) -> None:
        self._set_connected(False)
        if self._client is not None:
            log.error("bus: NATS connection closed")
