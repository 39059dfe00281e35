"""The running cloud's shared parts, handed to every service function as ``rt``.

``create_app`` builds one ``Runtime`` from the settings; the CLI builds one too, so REST, the CLI and
(later) WebSocket, MQTT and jobs call the same services with the same parts. Nothing here is created
at import time.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from thingcloud.auth.crypto import SecretBox
from thingcloud.auth.throttle import LoginThrottle
from thingcloud.bus import Bus, InProcessBus
from thingcloud.clock import Clock, SystemClock
from thingcloud.db import Database
from thingcloud.ids import new_id
from thingcloud.ratelimit import CounterStore, MemoryCounters, RateLimiter, RedisCounters
from thingcloud.settings import Settings

if TYPE_CHECKING:
    from thingcloud.areas.devices.directory import DeviceDirectory
    from thingcloud.areas.devicetypes.service import ManifestCache
    from thingcloud.areas.messages.writer import GroupCommitWriter
    from thingcloud.auth.tokens import TokenCache
    from thingcloud.feed import Feed
    from thingcloud.jobs.runner import JobRunner


@dataclass
class Runtime:
    settings: Settings
    db: Database
    clock: Clock
    bus: Bus
    box: SecretBox
    limiter: RateLimiter
    token_cache: TokenCache = field(init=False)
    login_throttle: LoginThrottle = field(init=False)
    manifests: ManifestCache = field(init=False)
    devices: DeviceDirectory = field(init=False)
    writer: GroupCommitWriter = field(init=False)
    node_id: str = field(init=False)
    """Who holds a lease (feed consumers, jobs): unique per process start."""
    feed: Feed = field(init=False)
    jobs: JobRunner = field(init=False)

    def __post_init__(self) -> None:
        from thingcloud.areas.devices.directory import DeviceDirectory
        from thingcloud.areas.devicetypes.service import ManifestCache
        from thingcloud.areas.messages.service import publish_committed
        from thingcloud.areas.messages.writer import GroupCommitWriter
        from thingcloud.auth.tokens import TokenCache
        from thingcloud.feed import Feed
        from thingcloud.jobs.runner import JobRunner

        self.token_cache = TokenCache(self.clock)
        self.manifests = ManifestCache(self.clock)
        self.devices = DeviceDirectory(self)
        self.writer = GroupCommitWriter(self)
        self.writer.after_commit.append(lambda items: publish_committed(self, items))
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self.feed = Feed(self)
        self.jobs = JobRunner(self)
        s = self.settings
        self.login_throttle = LoginThrottle(
            self.clock, s.login_failures_per_account, s.login_failures_per_address, s.login_failure_window
        )

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None, bus: Bus | None = None) -> Runtime:
        clock = clock or SystemClock()
        store: CounterStore = RedisCounters(settings.redis_url) if settings.redis_url else MemoryCounters()
        return cls(
            settings=settings,
            db=Database(settings),
            clock=clock,
            bus=bus or build_bus(settings),
            box=SecretBox(settings.resolved_secret_key()),
            limiter=RateLimiter(settings.rate_limits, clock, store),
        )

    async def start(self) -> None:
        await self.bus.start()
        await self.token_cache.attach(self.bus)
        await self.manifests.attach(self.bus)
        await self.devices.attach(self.bus)
        await self.writer.attach(self.bus)
        await self.writer.start()

    async def close(self) -> None:
        await self.feed.stop()
        await self.jobs.stop()
        await self.writer.stop()
        await self.bus.close()
        await self.limiter.store.close()
        await self.db.close()


def build_bus(settings: Settings) -> Bus:
    """Over NATS when ``nats_url`` is set (several nodes), otherwise in this process only."""
    if settings.nats_url:
        from thingcloud.natsbus import NatsBus

        return NatsBus(settings.nats_url, settings.nats_subject_prefix)
    return InProcessBus()
