"""Rate limits per user-per-application, per device and per application (REFERENCE.md §2.6).

Two windows, as ARTIK counted them: a sliding minute and a UTC day. The minute is a sliding-window
counter (the current fixed minute plus the previous one weighted by how much of it still overlaps),
which needs O(1) memory per key. Counters live in this process by default; with
``THINGCLOUD_REDIS_URL`` they live in Redis and are exact across every node.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

from thingcloud.clock import Clock

log = logging.getLogger(__name__)

# Limits as (per minute, per day) for each actor and category of call.
Limits = dict[tuple[str, str], tuple[int, int]]

ARTIK_LIMITS: Limits = {
    ("user", "rest"): (100, 1_000),
    ("device", "rest"): (100, 1_000),
    ("app", "rest"): (500, 5_000),
    ("user", "messages"): (100, 100_000),
    ("device", "messages"): (100, 100_000),
    ("app", "messages"): (500, 100_000),
    ("user", "websocket"): (1_000, 100_000),
    ("device", "websocket"): (1_000, 100_000),
    ("app", "websocket"): (5_000, 500_000),
    ("device", "mqtt"): (1_000, 100_000),
    ("anonymous", "rest"): (100, 10_000),
}

# Generous defaults for a self-hosted install: a busy device or dashboard never notices them, a
# runaway client still does.
DEFAULT_LIMITS: Limits = {
    ("user", "rest"): (3_000, 1_000_000),
    ("device", "rest"): (3_000, 1_000_000),
    ("app", "rest"): (20_000, 10_000_000),
    ("user", "messages"): (30_000, 10_000_000),
    ("device", "messages"): (6_000, 5_000_000),
    ("app", "messages"): (60_000, 50_000_000),
    ("user", "websocket"): (30_000, 10_000_000),
    ("device", "websocket"): (6_000, 5_000_000),
    ("app", "websocket"): (60_000, 50_000_000),
    ("device", "mqtt"): (6_000, 5_000_000),
    ("anonymous", "rest"): (600, 100_000),
}


@dataclass(frozen=True)
class RateStatus:
    limit_minute: int
    limit_day: int
    remaining_minute: int
    remaining_day: int
    reset_minute: int  # epoch seconds
    reset_day: int
    exceeded: str | None  # "MINUTE" | "DAILY" | None

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-rate-limit-limit", f"{self.limit_minute}/{self.limit_day}".encode()),
            (b"x-rate-limit-remaining", f"{self.remaining_minute}/{self.remaining_day}".encode()),
            (b"x-rate-limit-reset", f"{self.reset_minute}/{self.reset_day}".encode()),
        ]


class CounterStore(Protocol):
    async def incr(self, minute_key: str, prev_minute_key: str, day_key: str) -> tuple[int, int, int]:
        """Count one call; return (this minute's count, previous minute's count, today's count)."""
        ...

    async def close(self) -> None: ...


class MemoryCounters:
    """Per-process counters; old windows are dropped as time moves on."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._window = ""

    async def incr(self, minute_key: str, prev_minute_key: str, day_key: str) -> tuple[int, int, int]:
        window = minute_key.rsplit(":", 1)[1]
        if window != self._window:
            # A new minute: keep only the previous minute's and today's counters (past days' counters
            # would otherwise pile up for every user, device and address ever seen).
            prev = ":" + prev_minute_key.rsplit(":", 1)[1]
            today = ":" + day_key.rsplit(":", 1)[1]
            self._counts = {
                k: v
                for k, v in self._counts.items()
                if k.endswith(prev if k.rsplit(":", 2)[1] == "m" else today)
            }
            self._window = window
        counts = self._counts
        counts[minute_key] = counts.get(minute_key, 0) + 1
        counts[day_key] = counts.get(day_key, 0) + 1
        return counts[minute_key], counts.get(prev_minute_key, 0), counts[day_key]

    async def close(self) -> None:
        return None


class RedisCounters:
    """Cluster-wide counters in Redis: one round trip (a pipeline) per call."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url)

    async def incr(self, minute_key: str, prev_minute_key: str, day_key: str) -> tuple[int, int, int]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(minute_key)
        pipe.expire(minute_key, 180)
        pipe.get(prev_minute_key)
        pipe.incr(day_key)
        pipe.expire(day_key, 2 * 86400)
        minute, _, prev, day, _ = await pipe.execute()
        return int(minute), int(prev or 0), int(day)

    async def close(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    def __init__(self, mode: str, clock: Clock, store: CounterStore) -> None:
        self.enabled = mode != "off"
        self.limits = ARTIK_LIMITS if mode == "artik" else DEFAULT_LIMITS
        self.clock = clock
        self.store = store
        self._store_failed_at = -math.inf

    async def hit(self, actor: str, key: str, category: str = "rest") -> RateStatus | None:
        """Count one call of ``actor`` (user/device/app/anonymous) identified by ``key``."""
        if not self.enabled:
            return None
        limits = self.limits.get((actor, category)) or self.limits[(actor, "rest")]
        per_minute, per_day = limits
        now = self.clock.now()
        minute = int(now // 60)
        day = int(now // 86400)
        base = f"rl:{category}:{actor}:{key}"
        try:
            this_m, prev_m, today = await self.store.incr(
                f"{base}:m:{minute}", f"{base}:m:{minute - 1}", f"{base}:d:{day}"
            )
        except Exception as exc:
            # The counter store (Redis) is unreachable: serve the call unlimited rather than fail
            # every request of the API; say so in the log at most once a minute.
            if now - self._store_failed_at > 60:
                self._store_failed_at = now
                log.warning("rate-limit counters unavailable, not limiting: %s", exc.__class__.__name__)
            return None
        overlap = 1.0 - (now - minute * 60) / 60.0
        used_minute = this_m + math.floor(prev_m * overlap)
        exceeded = "DAILY" if today > per_day else "MINUTE" if used_minute > per_minute else None
        return RateStatus(
            limit_minute=per_minute,
            limit_day=per_day,
            remaining_minute=max(0, per_minute - used_minute),
            remaining_day=max(0, per_day - today),
            reset_minute=(minute + 1) * 60,
            reset_day=(day + 1) * 86400,
            exceeded=exceeded,
        )
