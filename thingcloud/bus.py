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

MATCH_CACHE_SUBJECTS = 10_000

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
            self.bus._matching.clear()


class InProcessBus:
    """Delivers each publish to the matching handlers of this process, awaited in order.

    Awaiting handlers inline keeps ordering simple and makes cache invalidation synchronous with the
    publish; handlers must therefore be quick (hand long work to a task). A failing handler is
    logged and does not stop delivery to the others.
    """

    def __init__(self) -> None:
        self._subscriptions: list[_LocalSubscription] = []
        # subject -> its subscribers, so a publish (one per stored message, for /live) does not
        # match every pattern again; cleared whenever the subscriptions change.
        self._matching: dict[str, list[_LocalSubscription]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscriptions.clear()
        self._matching.clear()

    async def publish(self, subject: str, payload: dict[str, Any]) -> None:
        found = self._matching.get(subject)
        if found is None:
            if len(self._matching) >= MATCH_CACHE_SUBJECTS:
                self._matching.clear()
            found = [s for s in self._subscriptions if subject_matches(s.pattern, subject)]
            self._matching[subject] = found
        for sub in found:  # the subscribers as of the publish, as a copy would be
            try:
                await sub.handler(subject, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus handler for %s failed on %s", sub.pattern, subject)

    async def subscribe(self, pattern: str, handler: Handler) -> Subscription:
        sub = _LocalSubscription(self, pattern, handler)
        self._subscriptions.append(sub)
        self._matching.clear()
        return sub
