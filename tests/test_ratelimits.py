"""Rate limits (REFERENCE.md §2.6): the headers on every authenticated response, separate counters per
user-per-application, per application and per address, the 429 body, ``THINGCLOUD_RATE_LIMITS=off``,
and cluster-wide counting through Redis — over HTTP against real servers — plus the sliding-window
arithmetic of ``RateLimiter`` on a pinned clock.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from thingcloud.clock import Clock
from thingcloud.ratelimit import ARTIK_LIMITS, DEFAULT_LIMITS, MemoryCounters, RateLimiter, RateStatus

from .conftest import LiveServer, ServerThread, start_live
from .factories import app_token, create_account, make_app, make_user, password_token

REDIS_URL = "redis://127.0.0.1:6379/15"
HEADERS = ("x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset")


def pair(response: httpx.Response, name: str) -> tuple[int, int]:
    value = response.headers[name]
    assert re.fullmatch(r"\d+/\d+", value), value
    minute, day = value.split("/")
    return int(minute), int(day)


def remaining(response: httpx.Response) -> tuple[int, int]:
    return pair(response, "x-rate-limit-remaining")


def to_minute_start(*servers: LiveServer) -> None:
    """Move the servers' clocks (which start together) to just after a minute boundary, so that a
    burst of calls falls in one fixed minute with nothing in the previous one."""
    now = servers[0].clock.now()
    delta = 60 - now % 60 + 0.5
    for server in servers:
        server.clock.advance(delta)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture()
def artik(tmp_path: Path) -> Iterator[LiveServer]:
    server, thread = start_live(tmp_path, rate_limits="artik")
    yield server
    thread.stop()


# --- headers on the session server (default limits) -------------------------------------------------


def test_headers_on_every_authenticated_response(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    to_minute_start(live)
    user_limit = DEFAULT_LIMITS[("user", "rest")]
    first = client.get("/v1.1/users/self", headers=user.headers)
    now = live.clock.now()
    assert first.status_code == 200
    assert pair(first, "x-rate-limit-limit") == user_limit
    assert remaining(first) == (user_limit[0] - 1, user_limit[1] - 1)
    assert pair(first, "x-rate-limit-reset") == ((int(now // 60) + 1) * 60, (int(now // 86400) + 1) * 86400)
    # Browsers may read them.
    exposed = first.headers["access-control-expose-headers"]
    assert exposed == "X-Rate-Limit-Limit, X-Rate-Limit-Remaining, X-Rate-Limit-Reset"
    # 404 and 403 answers carry them too, and count.
    missing = client.get(f"/v1.1/users/{user.id}/properties", headers=user.headers)
    assert missing.status_code == 404
    assert remaining(missing) == (user_limit[0] - 2, user_limit[1] - 2)
    forbidden = client.get(f"/v1.1/users/{'0' * 32}/properties", headers=user.headers)
    assert forbidden.status_code == 403
    assert remaining(forbidden) == (user_limit[0] - 3, user_limit[1] - 3)
    invalid = client.post(f"/v1.1/users/{user.id}/properties", headers=user.headers, json={"aid": 5})
    assert invalid.status_code == 400
    assert remaining(invalid) == (user_limit[0] - 4, user_limit[1] - 4)
    # The accounts server's bearer endpoints count against the same limit.
    info = client.get("/tokenInfo", headers=user.headers)
    assert remaining(info) == (user_limit[0] - 5, user_limit[1] - 5)
    # Unauthenticated endpoints carry no limit headers.
    assert not any(h in client.get("/healthz").headers for h in HEADERS)


def test_user_app_and_application_counters_are_separate(live: LiveServer, client: httpx.Client) -> None:
    alice = make_user(live)
    to_minute_start(live)
    user_limit = DEFAULT_LIMITS[("user", "rest")]
    app_limit = DEFAULT_LIMITS[("app", "rest")]
    for n in range(1, 4):
        response = client.get("/v1.1/users/self", headers=alice.headers)
        assert remaining(response) == (user_limit[0] - n, user_limit[1] - n)
    # The same user through another application: another counter.
    other_app = make_app(live, alice.id)
    via_other = password_token(live, other_app, alice.email)["access_token"]
    response = client.get("/v1.1/users/self", headers=bearer(via_other))
    assert remaining(response) == (user_limit[0] - 1, user_limit[1] - 1)
    # Another user of the first application: another counter.
    bob = make_user(live, app=alice.app)
    response = client.get("/v1.1/users/self", headers=bob.headers)
    assert remaining(response) == (user_limit[0] - 1, user_limit[1] - 1)
    # The application's own token: counted per application, with the application's limits — even
    # when the call is refused (403: /users/self needs a user token).
    token = app_token(live, alice.app)
    response = client.get("/v1.1/users/self", headers=bearer(token))
    assert response.status_code == 403
    assert pair(response, "x-rate-limit-limit") == app_limit
    assert remaining(response) == (app_limit[0] - 1, app_limit[1] - 1)
    response = client.get(f"/v1.1/users/{alice.id}/properties", headers=bearer(token))
    assert remaining(response) == (app_limit[0] - 2, app_limit[1] - 2)
    # Alice's counter was not touched by any of that.
    response = client.get("/v1.1/users/self", headers=alice.headers)
    assert remaining(response) == (user_limit[0] - 4, user_limit[1] - 4)


def test_anonymous_calls_are_counted_per_address(live: LiveServer, client: httpx.Client) -> None:
    to_minute_start(live)
    anonymous_limit = DEFAULT_LIMITS[("anonymous", "rest")]
    first = client.get("/v1.1/users/self", headers=bearer("0" * 32))
    assert first.status_code == 401
    assert pair(first, "x-rate-limit-limit") == anonymous_limit
    minute, day = remaining(first)
    second = client.get("/v1.1/users/self")
    assert second.status_code == 401
    assert remaining(second) == (minute - 1, day - 1)
    third = client.get("/v1.1/users/self", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert remaining(third) == (minute - 2, day - 2)


# --- ARTIK's published limits: 429 -----------------------------------------------------------------


def test_minute_limit_gives_429(artik: LiveServer) -> None:
    user = make_user(artik)
    bystander = make_user(artik, app=user.app)
    to_minute_start(artik)
    with artik.client() as client:
        for n in range(1, 101):
            response = client.get("/v1.1/users/self", headers=user.headers)
            assert response.status_code == 200, (n, response.text)
            assert pair(response, "x-rate-limit-limit") == (100, 1000)
            assert remaining(response) == (100 - n, 1000 - n)
        refused = client.get("/v1.1/users/self", headers=user.headers)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert set(error) == {"code", "message", "id"}
        assert (error["code"], error["message"]) == (429, "MINUTE rate limit exceeded")
        assert re.fullmatch(r"[0-9a-f]{32}", error["id"])
        assert error["id"] == refused.headers["x-request-id"]
        assert remaining(refused) == (0, 899)
        # Refused calls still count (ARTIK: "regardless of whether they are valid").
        assert remaining(client.get("/v1.1/users/self", headers=user.headers)) == (0, 898)
        # Others are not affected: another user of the app, and the app itself (500/min).
        assert client.get("/v1.1/users/self", headers=bystander.headers).status_code == 200
        token = app_token(artik, user.app)
        response = client.get(f"/v1.1/users/{user.id}/properties", headers=bearer(token))
        assert response.status_code == 404
        assert pair(response, "x-rate-limit-limit") == (500, 5000)
        # Two minutes later the sliding window is empty again.
        artik.clock.advance(120)
        again = client.get("/v1.1/users/self", headers=user.headers)
        assert again.status_code == 200
        assert remaining(again) == (99, 897)


def test_anonymous_limit_gives_429_for_that_address_only(artik: LiveServer) -> None:
    user = make_user(artik)
    to_minute_start(artik)
    with artik.client() as client:
        for n in range(1, 101):
            # A forwarded-for header is not believed from a peer that is not a trusted proxy.
            spoofed = {**bearer(f"{n:032x}"), "X-Forwarded-For": f"203.0.113.{n}"}
            response = client.get("/v1.1/users/self", headers=spoofed)
            assert response.status_code == 401
            assert remaining(response) == (100 - n, 10_000 - n)
        refused = client.get("/v1.1/users/self", headers=bearer("f" * 32))
        assert refused.status_code == 429
        assert refused.json()["error"]["message"] == "MINUTE rate limit exceeded"
        # A caller with a valid token is counted as itself, not as the address.
        response = client.get("/v1.1/users/self", headers=user.headers)
        assert response.status_code == 200
        assert remaining(response) == (99, 999)


def test_anonymous_addresses_behind_a_trusted_proxy(tmp_path: Path) -> None:
    server, thread = start_live(tmp_path, rate_limits="artik", trusted_proxies=["127.0.0.1"])
    try:
        to_minute_start(server)
        with server.client() as client:
            noisy = {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"}
            for n in range(1, 101):
                assert remaining(client.get("/v1.1/users/self", headers=noisy)) == (100 - n, 10_000 - n)
            assert client.get("/v1.1/users/self", headers=noisy).status_code == 429
            quiet = client.get("/v1.1/users/self", headers={"X-Forwarded-For": "203.0.113.8"})
            assert quiet.status_code == 401
            assert remaining(quiet) == (99, 9_999)
            # The proxy's own address is yet another counter.
            assert remaining(client.get("/v1.1/users/self")) == (99, 9_999)
    finally:
        thread.stop()


def test_rate_limits_off(tmp_path: Path) -> None:
    server, thread = start_live(tmp_path, rate_limits="off")
    try:
        user = make_user(server)
        with server.client() as client:
            for _ in range(150):
                response = client.get("/v1.1/users/self", headers=user.headers)
                assert response.status_code == 200
                assert not any(h in response.headers for h in HEADERS)
            for _ in range(150):
                response = client.get("/v1.1/users/self", headers=bearer("0" * 32))
                assert response.status_code == 401
                assert not any(h in response.headers for h in HEADERS)
    finally:
        thread.stop()


# --- Redis: one budget for the whole cluster --------------------------------------------------------


def flush_redis() -> None:
    import redis

    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()
    connection.close()


def test_redis_counters_are_shared_between_nodes(tmp_path: Path) -> None:
    flush_redis()
    # Two nodes on one database (the same SQLite file, or the test PostgreSQL) and one Redis.
    nodes: list[tuple[LiveServer, ServerThread]] = []
    try:
        for _ in range(2):
            nodes.append(start_live(tmp_path, rate_limits="artik", redis_url=REDIS_URL))
        (a, _), (b, _) = nodes
        user = make_user(a)
        to_minute_start(a, b)
        with a.client() as on_a, b.client() as on_b:
            for n in range(1, 61):
                assert remaining(on_a.get("/v1.1/users/self", headers=user.headers)) == (100 - n, 1000 - n)
            for n in range(61, 101):
                response = on_b.get("/v1.1/users/self", headers=user.headers)
                assert response.status_code == 200
                assert remaining(response) == (100 - n, 1000 - n)
            for node in (on_a, on_b):
                refused = node.get("/v1.1/users/self", headers=user.headers)
                assert refused.status_code == 429
                assert refused.json()["error"]["message"] == "MINUTE rate limit exceeded"
            # Anonymous calls from this address are shared as well.
            first = on_a.get("/v1.1/users/self")
            second = on_b.get("/v1.1/users/self")
            assert remaining(first) == (99, 9_999)
            assert remaining(second) == (98, 9_998)
    finally:
        for _, thread in nodes:
            thread.stop()
    flush_redis()


def test_unreachable_redis_does_not_take_the_api_down(tmp_path: Path) -> None:
    server, thread = start_live(tmp_path, redis_url="redis://127.0.0.1:1/0")
    try:
        account = create_account(server)
        app = make_app(server, account.id)
        token = password_token(server, app, account.email)["access_token"]
        with server.client() as client:
            response = client.get("/v1.1/users/self", headers=bearer(token))
            assert response.status_code == 200
            assert not any(h in response.headers for h in HEADERS)
            assert client.get("/v1.1/users/self").status_code == 401
    finally:
        thread.stop()


# --- RateLimiter arithmetic -------------------------------------------------------------------------


class PinnedClock(Clock):
    """A clock that moves only when told: exact window arithmetic."""

    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def hits(limiter: RateLimiter, n: int, key: str = "u:a") -> RateStatus:
    async def run() -> RateStatus:
        status = None
        for _ in range(n):
            status = await limiter.hit("user", key)
        assert status is not None
        return status

    return asyncio.run(run())


DAY0 = 20_000 * 86400.0  # a UTC midnight


def test_sliding_minute_weights_the_previous_minute() -> None:
    clock = PinnedClock(DAY0 + 600)  # the start of a minute
    limiter = RateLimiter("artik", clock, MemoryCounters())
    status = hits(limiter, 100)
    assert (status.remaining_minute, status.remaining_day, status.exceeded) == (0, 900, None)
    assert (status.reset_minute, status.reset_day) == (int(DAY0) + 660, int(DAY0) + 86400)
    status = hits(limiter, 1)
    assert (status.remaining_minute, status.exceeded) == (0, "MINUTE")
    # 30 s into the next minute half of the previous minute's 101 calls still count: 50 + 1.
    clock.t = DAY0 + 690
    status = hits(limiter, 1)
    assert (status.remaining_minute, status.remaining_day, status.exceeded) == (49, 898, None)
    assert status.reset_minute == int(DAY0) + 720
    # 45 s in: a quarter of 101 is 25, plus the 2 calls of this minute.
    clock.t = DAY0 + 705
    status = hits(limiter, 1)
    assert status.remaining_minute == 100 - 25 - 2
    # Two minutes on, nothing of it is left.
    clock.t = DAY0 + 780
    assert hits(limiter, 1).remaining_minute == 99
    # Other keys never shared any of it.
    assert hits(limiter, 1, key="v:a").remaining_minute == 99


def test_daily_limit_and_utc_day_reset() -> None:
    clock = PinnedClock(DAY0 + 3600)
    limiter = RateLimiter("artik", clock, MemoryCounters())
    for minute in range(10):
        clock.t = DAY0 + 3600 + minute * 120  # every other minute: no sliding carry-over
        status = hits(limiter, 100)
        assert status.exceeded is None
    assert status.remaining_day == 0
    clock.t += 120
    status = hits(limiter, 1)
    assert (status.exceeded, status.remaining_minute, status.remaining_day) == ("DAILY", 99, 0)
    # The daily window is the UTC day, not a sliding 24 hours.
    clock.t = DAY0 + 86400
    status = hits(limiter, 1)
    assert (status.exceeded, status.remaining_day, status.reset_day) == (None, 999, int(DAY0) + 2 * 86400)


def test_memory_counters_forget_past_windows() -> None:
    clock = PinnedClock(DAY0 + 60)
    store = MemoryCounters()
    limiter = RateLimiter("default", clock, store)
    for n in range(50):
        hits(limiter, 1, key=f"user-{n}")
    clock.t = DAY0 + 86400 + 60  # the next day
    hits(limiter, 1, key="user-0")
    clock.t += 60  # another minute: yesterday's counters must be gone by now
    hits(limiter, 1, key="user-0")
    assert sorted(store._counts.values()) == [1, 1, 2]  # previous minute, this minute, today


def test_limits_tables_and_modes() -> None:
    clock = PinnedClock(DAY0)
    assert asyncio.run(RateLimiter("off", clock, MemoryCounters()).hit("user", "k")) is None
    assert ARTIK_LIMITS[("user", "rest")] == (100, 1_000)
    assert ARTIK_LIMITS[("device", "rest")] == (100, 1_000)
    assert ARTIK_LIMITS[("app", "rest")] == (500, 5_000)
    limiter = RateLimiter("artik", clock, MemoryCounters())
    # A category without its own limits falls back to the REST limits of the actor.
    status = asyncio.run(limiter.hit("anonymous", "127.0.0.1", "websocket"))
    assert (
        status is not None and (status.limit_minute, status.limit_day) == ARTIK_LIMITS[("anonymous", "rest")]
    )
    assert status.headers() == [
        (b"x-rate-limit-limit", b"100/10000"),
        (b"x-rate-limit-remaining", b"99/9999"),
        (b"x-rate-limit-reset", f"{int(DAY0) + 60}/{int(DAY0) + 86400}".encode()),
    ]
