"""Publish/subscribe between the parts of ThingCloud: lifecycle events, revocations, live data.

Subjects are dot-separated (``device.deleted``, ``token.revoked``) with NATS-style wildcards in
subscriptions (``*`` one token, ``>`` the rest). ``InProcessBus`` is the single-node default; a NATS
implementation of the same ``Bus`` interface takes over when ``THINGCLOUD_NATS_URL`` is set. Payloads
are JSON-compatible dicts so that they cross process boundaries unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]

BUS_RESYNC = "bus.resync"
"""Delivered to this node's own subscribers only (never sent to other nodes) when the bus may have
lost messages, e.g. after a NATS reconnect: caches kept fresh by bus events drop what they hold."""


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


class Bus(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, subject: str, payload: dict[str, Any]) -> None: ...
    async def subscribe(self, pattern: str, handler: Handler) -> Subscription: ...


def subject_matches(pattern: str, subject: str) -> bool:
    pat = pattern.split(".")
    sub = subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


class _LocalSubscription:
    def __init__(self, bus: InProcessBus, pattern: str, handler: Handler) -> None:
        self.bus, self.pattern, self.handler = bus, pattern, handler

    async def unsubscribe(self) -> None:
        if self in self.bus._subscriptions:
            self.bus._subscriptions.remove(self)


class InProcessBus:
    """Delivers each publish to the matching handlers of this process, awaited in order.

    Awaiting handlers inline keeps ordering simple and makes cache invalidation synchronous with the
    publish; handlers must therefore be quick (hand long work to a task). A failing handler is
    logged and does not stop delivery to the others.
    """

    def __init__(self) -> None:
        self._subscriptions: list[_LocalSubscription] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscriptions.clear()

    async def publish(self, subject: str, payload: dict[str, Any]) -> None:
        for sub in list(self._subscriptions):
            if subject_matches(sub.pattern, subject):
                try:
                    await sub.handler(subject, payload)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("bus handler for %s failed on %s", sub.pattern, subject)

    async def subscribe(self, pattern: str, handler: Handler) -> Subscription:
        sub = _LocalSubscription(self, pattern, handler)
        self._subscriptions.append(sub)
        return sub
