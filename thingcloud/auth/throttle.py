"""Throttling of failed sign-ins and password grants, per account and per client address.

Only failures are counted, in a sliding window; a key that reached its limit is refused until its
oldest failure leaves the window. Counters are per node: a brute-force attempt spread over several
nodes gets at most N times the budget, which the argon2 cost still makes slow.
"""

from __future__ import annotations

from collections import deque

from thingcloud.clock import Clock

MAX_KEYS = 50_000


class LoginThrottle:
    def __init__(self, clock: Clock, per_account: int, per_address: int, window: int) -> None:
        self.clock = clock
        self.limits = {"account": per_account, "address": per_address}
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        entries = self._failures.get(key)
        if entries is None:
            return deque()
        cutoff = self.clock.now() - self.window
        while entries and entries[0] <= cutoff:
            entries.popleft()
        return entries

    def blocked(self, account: str, address: str) -> bool:
        return (
            len(self._recent(f"account:{account.lower()}")) >= self.limits["account"]
            or len(self._recent(f"address:{address}")) >= self.limits["address"]
        )

    def failed(self, account: str, address: str) -> None:
        if len(self._failures) > MAX_KEYS:
            self._failures.clear()
        now = self.clock.now()
        for key in (f"account:{account.lower()}", f"address:{address}"):
            self._recent(key)
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, account: str) -> None:
        self._failures.pop(f"account:{account.lower()}", None)
