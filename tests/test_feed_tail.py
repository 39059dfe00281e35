"""FeedTail: consumers of one node share one read of the feed's newest entries.

The tail is given an in-memory feed here (its reader is a plain function), so that each case can
say exactly which entries exist and count the reads; tests/test_feed.py covers the real reader and
the consumers on both databases.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from thingcloud.feed import FeedEntry
from thingcloud.feed_tail import MIN_FETCH, FeedTail


class MemoryFeed:
    def __init__(self) -> None:
        self.entries: list[FeedEntry] = []
        self.reads: list[tuple[int, int]] = []

    def add(self, *seqs: int) -> None:
        self.entries += [FeedEntry(kind="message", payload={"n": s}, seq=s) for s in seqs]

    async def read(self, seq: int, limit: int) -> list[FeedEntry]:
        self.reads.append((seq, limit))
        await asyncio.sleep(0)  # a real read yields to other tasks
        return [e for e in self.entries if e.seq > seq][:limit]


def synchronous(case: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(case)
    def run() -> None:
        asyncio.run(case())

    return run


def seqs(entries: list[FeedEntry]) -> list[int]:
    return [e.seq for e in entries]


@synchronous
async def test_consumers_at_the_head_share_one_read() -> None:
    memory = MemoryFeed()
    memory.add(1, 2, 3, 5, 6)  # 4 rolled back
    tail = FeedTail(memory.read, 100)
    first, second, third = await asyncio.gather(tail.after(0, 10), tail.after(0, 10), tail.after(0, 2))
    assert seqs(first) == seqs(second) == [1, 2, 3, 5, 6]
    assert seqs(third) == [1, 2]
    assert memory.reads == [(0, min(MIN_FETCH, 100))]  # one read, larger than any batch asked for
    assert seqs(await tail.after(3, 10)) == [5, 6]  # from memory
    assert len(memory.reads) == 1
    assert await tail.after(6, 10) == []  # caught up: asks the feed again, finds nothing
    memory.add(7, 8)
    assert seqs(await tail.after(6, 10)) == [7, 8]
    assert seqs(await tail.after(5, 1)) == [6]  # a consumer one entry behind, from memory
    assert len(memory.reads) == 3


@synchronous
async def test_a_consumer_behind_the_window_reads_the_feed_itself() -> None:
    memory = MemoryFeed()
    memory.add(*range(1, 31))
    tail = FeedTail(memory.read, 10)  # keeps the newest 10 entries
    assert seqs(await tail.after(0, 50)) == list(range(1, 11))  # one read of at most `capacity`
    assert seqs(await tail.after(10, 50)) == list(range(11, 21))
    assert tail.low == 10 and tail.high == 20
    reads = len(memory.reads)
    # A consumer still at 3 (catching up after a restart) reads the feed and leaves the window.
    assert seqs(await tail.after(3, 4)) == [4, 5, 6, 7]
    assert len(memory.reads) == reads + 1 and (tail.low, tail.high) == (10, 20)
    assert seqs(await tail.after(15, 3)) == [16, 17, 18]  # still served from memory
    assert len(memory.reads) == reads + 1


@synchronous
async def test_a_consumer_ahead_of_the_window_moves_it() -> None:
    memory = MemoryFeed()
    memory.add(*range(1, 11))
    tail = FeedTail(memory.read, 100)
    assert seqs(await tail.after(0, 3)) == list(range(1, 11))[:3]
    assert tail.high == 10
    memory.add(11, 12, 13)
    # A checkpoint written by another node, past what this node has read.
    assert seqs(await tail.after(12, 10)) == [13]
    assert (tail.low, tail.high) == (12, 13)
    assert seqs(await tail.after(5, 2)) == [6, 7]  # now behind: read directly, correct all the same


@synchronous
async def test_trimming_keeps_gaps_final() -> None:
    memory = MemoryFeed()
    memory.add(1, 2, 4, 7, 8, 9)
    tail = FeedTail(memory.read, 3)
    assert seqs(await tail.after(0, 3)) == [1, 2, 4]
    assert seqs(await tail.after(4, 3)) == [7, 8, 9]
    assert (tail.low, tail.high) == (4, 9)  # entries 5 and 6 never existed: still covered
    assert seqs(await tail.after(4, 10)) == [7, 8, 9]
    assert seqs(await tail.after(5, 10)) == [7, 8, 9]


@synchronous
async def test_capacity_zero_reads_every_time() -> None:
    memory = MemoryFeed()
    memory.add(1, 2, 3)
    tail = FeedTail(memory.read, 0)
    assert seqs(await tail.after(0, 2)) == [1, 2]
    assert seqs(await tail.after(0, 2)) == [1, 2]
    assert memory.reads == [(0, 2), (0, 2)]
