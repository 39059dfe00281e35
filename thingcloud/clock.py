"""The one clock every part of ThingCloud reads, so tests (and only tests) can move time.

Token expiries, rate-limit windows, schedules and rule timers all call ``clock.now_ms()``. The server
uses ``SystemClock``; tests pass a ``ManualClock`` to ``create_app`` and ``advance()`` it.
"""

from __future__ import annotations

import time


class Clock:
    """Wall-clock time in the units the API speaks: epoch milliseconds (UTC)."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def now_ms(self) -> int:
        return int(self.now() * 1000)


class SystemClock(Clock):
    pass


class ManualClock(Clock):
    """Real time plus an offset that only grows: ``advance(3600)`` jumps an hour ahead.

    It keeps running (rather than standing still) so that a live server under test behaves normally
    between jumps.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
