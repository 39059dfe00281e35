"""The feed's newest entries as this node last read them, shared by all of its consumers.

Every durable consumer (rollups, subscription matching, the rules engine, ...) follows the same
feed. Reading it once per consumer cost a database read and a JSON decode of every entry per
consumer: with three consumers a third of the ingest throughput on SQLite (BENCHMARKS.md, "ingest
regression"). ``FeedTail`` reads each new stretch of the feed once and hands the decoded entries to
every consumer that asks for it.

What it holds is a window ``(low, high]`` of seqs that it has read completely: every entry of the
feed in that range is in ``entries``, and a seq in the window that is missing is a rolled-back
transaction, never one still in flight — the feed hands out seqs in commit order (thingcloud/feed.py),
so a read that saw seq N saw everything below N that will ever exist. A consumer caught up with the
window makes the tail read the next stretch (one read at a time, under a lock: the others wait for
it and are then served from memory); a consumer behind the window (catching up after a restart)
reads the database directly and does not disturb it. The window keeps at most ``capacity`` entries,
enough for a consumer that batches a few seconds of full-rate ingest to be served from memory.

The entries are shared between consumers: handlers must not change them.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thingcloud.feed import FeedEntry

# ``feed.read_after`` bound to the runtime: (after seq, limit) -> entries in seq order.
FeedReader = Callable[[int, int], Awaitable[list["FeedEntry"]]]

# A read from the head fetches at least this many entries: consumers that ask for small batches
# then share one larger read.
MIN_FETCH = 2_000


class FeedTail:
    def __init__(self, read: FeedReader, capacity: int) -> None:
        self.read, self.capacity = read, capacity
        self.low: int | None = None  # every entry with low < seq <= high is in ``entries``
        self.high: int | None = None
        self.entries: list[FeedEntry] = []
        self._seqs: list[int] = []  # entries' seqs, for bisect
        self._lock = asyncio.Lock()
        self.reads = 0  # database reads made for the window (tests and metrics look at it)

    async def after(self, seq: int, limit: int) -> list[FeedEntry]:
        """Up to ``limit`` entries after ``seq``, in seq order, as ``read`` returns them."""
        if self.capacity <= 0:
            return await self.read(seq, limit)
        served = self._serve(seq, limit)
        if served is not None:
            return served
        async with self._lock:
            served = self._serve(seq, limit)  # another consumer may have read it meanwhile
            if served is not None:
                return served
            assert self.low is not None and self.high is not None
            if seq < self.low:  # behind the window: read the database, keep the window as it is
                return await self.read(seq, limit)
            if seq > self.high:  # ahead of it (a checkpoint written elsewhere): start over there
                self._reset(seq)
            await self._extend(max(limit, MIN_FETCH))
        return self._serve(seq, limit) or []

    def _serve(self, seq: int, limit: int) -> list[FeedEntry] | None:
        """From memory, or None when the window does not cover the entries after ``seq`` yet."""
        if self.low is None or self.high is None:
            self._reset(seq)
            return None
        if seq < self.low or seq >= self.high:
            return None
        start = bisect.bisect_right(self._seqs, seq)
        return self.entries[start : start + limit]

    def _reset(self, seq: int) -> None:
        self.low = self.high = seq
        self.entries, self._seqs = [], []

    async def _extend(self, limit: int) -> None:
        assert self.high is not None
        fresh = await self.read(self.high, min(limit, self.capacity))
        self.reads += 1
        if not fresh:
            return
        self.entries.extend(fresh)
        self._seqs.extend(e.seq for e in fresh)
        self.high = fresh[-1].seq
        excess = len(self.entries) - self.capacity
        if excess > 0:
            # The window now starts after the last dropped entry (gaps before it are final too).
            self.low = self._seqs[excess - 1]
            del self.entries[:excess], self._seqs[:excess]
