"""Analytics over HTTP (S49 aggregates, S50 histogram, S51 presence): results compared with values
computed here from what was sent (UTC buckets by ``datetime``, population variance by
``statistics``), the one-minute settling of aggregates, and bad input."""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from .conftest import LiveServer
from .test_message_queries import MINUTE, error, send
from .test_messages_ingest import Lamp, new_lamp

HOUR = 60 * MINUTE
DAY = 24 * HOUR


def utc(*parts: int) -> int:
    return int(dt.datetime(*parts, tzinfo=dt.UTC).timestamp() * 1000)  # type: ignore[misc]


def bucket(ts: int, interval: str) -> int:
    d = dt.datetime.fromtimestamp(ts / 1000, tz=dt.UTC)
    fields = {"minute": 5, "hour": 4, "day": 3, "month": 2, "year": 1}[interval]
    parts = [
        d.year,
        d.month if fields >= 2 else 1,
        d.day if fields >= 3 else 1,
        d.hour if fields >= 4 else 0,
        d.minute if fields >= 5 else 0,
    ]
    return utc(*parts)


def temp_of(i: int) -> float | None:
    return None if i % 6 == 5 else (i * 13 % 37) * 1.25 - 7.0


@dataclass
class Dataset:
    lamp: Lamp
    points: list[tuple[int, float | None]]  # (ts, temp)

    def stats(self, start: int, end: int) -> list[float]:
        return [v for ts, v in self.points if start <= ts < end and v is not None]


def expected_stats(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "mean": pytest.approx(statistics.fmean(values)),
        "sum": pytest.approx(sum(values)),
        "variance": pytest.approx(statistics.pvariance(values), abs=1e-9),
    }


DENSE_HOUR = utc(2024, 3, 9, 14)


@pytest.fixture(scope="module")
def dataset(live: LiveServer) -> Dataset:
    """A dense hour (a message every 37 s) and two sparse years (every 9 days and 7 hours)."""
    lamp = new_lamp(live)
    stamps = [DENSE_HOUR - 5 * MINUTE + i * 37_000 for i in range(110)]
    stamps += [utc(2022, 11, 20) + i * (9 * DAY + 7 * HOUR) for i in range(85)]
    points = []
    with live.client() as client:
        for i, ts in enumerate(stamps):
            value = temp_of(i)
            data: dict[str, Any] = {"state": i % 2 == 0} if value is None else {"temp": value}
            send(client, lamp.token, lamp.did, ts, data)
            points.append((ts, value))
    live.clock.advance(61)  # aggregates count messages received at least a minute ago
    return Dataset(lamp, points)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (DENSE_HOUR, DENSE_HOUR + HOUR),
        (DENSE_HOUR + 17_345, DENSE_HOUR + 40 * MINUTE + 59_999),  # rounded down to the minute
        (utc(2023, 1, 1), utc(2023, 1, 31)),
        (utc(2030, 1, 1), utc(2030, 1, 2)),  # nothing there
    ],
)
def test_aggregates(client: httpx.Client, dataset: Dataset, start: int, end: int) -> None:
    lamp = dataset.lamp
    params = {"sdid": lamp.did, "field": "TEMP", "startDate": start, "endDate": end}
    body = client.get("/v1.1/messages/analytics/aggregates", headers=lamp.owner.headers, params=params).json()
    first, last = start - start % MINUTE, end - end % MINUTE
    values = dataset.stats(first, last)
    assert {k: v for k, v in body.items() if k != "data"} == {
        "sdid": lamp.did,
        "field": "TEMP",
        "startDate": first,
        "endDate": last,
        "size": 1,
    }
    if values:
        assert body["data"] == [expected_stats(values)]
    else:
        assert body["data"] == [
            {"count": 0, "min": None, "max": None, "mean": None, "sum": 0.0, "variance": None}
        ]


def test_aggregates_count_only_settled_messages(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    now = live.clock.now_ms()
    send(client, lamp.token, lamp.did, now - 10 * MINUTE, {"temp": 4.0})
    live.clock.advance(61)
    send(client, lamp.token, lamp.did, now - 5 * MINUTE, {"temp": 10.0})  # received just now
    params = {"sdid": lamp.did, "field": "temp", "startDate": now - HOUR, "endDate": now + 2 * MINUTE}
    body = client.get("/v1.1/messages/analytics/aggregates", headers=lamp.owner.headers, params=params).json()
    assert body["data"] == [{"count": 1, "min": 4.0, "max": 4.0, "mean": 4.0, "sum": 4.0, "variance": 0.0}]
    live.clock.advance(61)
    body = client.get("/v1.1/messages/analytics/aggregates", headers=lamp.owner.headers, params=params).json()
    assert body["data"] == [{"count": 2, "min": 4.0, "max": 10.0, "mean": 7.0, "sum": 14.0, "variance": 9.0}]


@pytest.mark.parametrize(
    ("interval", "start", "end"),
    [
        ("minute", DENSE_HOUR, DENSE_HOUR + HOUR),
        ("hour", DENSE_HOUR - 3 * HOUR, DENSE_HOUR + 21 * HOUR),
        ("day", utc(2023, 2, 1), utc(2023, 3, 4)),
        ("month", utc(2022, 11, 1), utc(2024, 12, 1)),
        ("year", utc(2015, 1, 1), utc(2024, 12, 31)),
    ],
)
def test_histogram(client: httpx.Client, dataset: Dataset, interval: str, start: int, end: int) -> None:
    lamp = dataset.lamp
    params = {"sdid": lamp.did, "field": "temp", "startDate": start, "endDate": end, "interval": interval}
    body = client.get("/v1.1/messages/analytics/histogram", headers=lamp.owner.headers, params=params).json()
    groups: dict[int, list[float]] = {}
    for ts, value in dataset.points:
        if start <= ts < end and value is not None:
            groups.setdefault(bucket(ts, interval), []).append(value)
    expected = [{**expected_stats(values), "ts": key} for key, values in sorted(groups.items())]
    assert len(expected) > 1
    assert body == {
        "sdid": lamp.did,
        "field": "temp",
        "interval": interval,
        "startDate": start,
        "endDate": end,
        "size": len(expected),
        "data": expected,
    }


@pytest.mark.parametrize(
    ("interval", "start", "end", "field"),
    [
        ("minute", DENSE_HOUR, DENSE_HOUR + HOUR, None),
        ("minute", DENSE_HOUR, DENSE_HOUR + HOUR, "state"),
        ("day", utc(2023, 2, 1), utc(2023, 3, 4), "Temp"),
        ("month", utc(2023, 1, 1), utc(2023, 12, 31), None),
        ("year", utc(2015, 1, 1), utc(2024, 12, 31), "state"),
    ],
)
def test_presence(
    client: httpx.Client, dataset: Dataset, interval: str, start: int, end: int, field: str | None
) -> None:
    lamp = dataset.lamp
    params: dict[str, Any] = {"sdid": lamp.did, "startDate": start, "endDate": end, "interval": interval}
    if field:
        params["fieldPresence"] = field
    body = client.get("/v1.1/messages/presence", headers=lamp.owner.headers, params=params).json()
    starts = sorted(
        {
            bucket(ts, interval)
            for ts, value in dataset.points
            if start <= ts <= end and (field is None or (value is None) == (field == "state"))
        }
    )
    assert len(starts) > 1
    assert body == {
        "sdid": lamp.did,
        "fieldPresence": field,
        "interval": interval.upper(),
        "startDate": start,
        "endDate": end,
        "size": len(starts),
        "data": [{"startDate": s} for s in starts],
    }
    # Without sdid: the caller's own devices (here one).
    if field is None:
        mine = client.get(
            "/v1.1/messages/presence",
            headers=lamp.owner.headers,
            params={k: v for k, v in params.items() if k != "sdid"},
        ).json()
        assert mine["data"] == body["data"]


def test_bad_input(client: httpx.Client, dataset: Dataset) -> None:
    lamp = dataset.lamp
    h = lamp.owner.headers
    agg = "/v1.1/messages/analytics/aggregates"
    hist = "/v1.1/messages/analytics/histogram"
    base = utc(2023, 1, 1)
    ok = {"sdid": lamp.did, "field": "temp", "startDate": base, "endDate": base + DAY}
    assert error(client.get(agg, headers=h, params={**ok, "field": "state"})) == "Numeric field only"
    assert error(client.get(agg, headers=h, params={**ok, "field": "location"})) == "Numeric field only"
    assert error(client.get(agg, headers=h, params={**ok, "field": "nosuch"})) == "Unknown field 'nosuch'"
    assert (
        error(client.get(agg, headers=h, params={**ok, "endDate": base + 32 * DAY}))
        == "Maximum range 31 days"
    )
    for missing in ("sdid", "field", "startDate", "endDate"):
        params = {k: v for k, v in ok.items() if k != missing}
        response = client.get(agg, headers=h, params=params)
        assert error(response) == "Required parameter"
        assert response.json()["error"]["errors"][0][0]["field"] == missing
    limits = {
        "minute": (HOUR, "1 hour"),
        "hour": (DAY, "1 day"),
        "day": (31 * DAY, "31 days"),
        "month": (3660 * DAY, "10 years"),
    }
    for interval, (span, text) in limits.items():
        assert (
            client.get(
                hist, headers=h, params={**ok, "endDate": base + span, "interval": interval}
            ).status_code
            == 200
        )
        too_long = client.get(
            hist, headers=h, params={**ok, "endDate": base + span + DAY, "interval": interval}
        )
        assert error(too_long) == f"Maximum range {text}"
    assert (
        error(client.get(hist, headers=h, params={**ok, "interval": "week"}))
        == "Must be one of minute, hour, day, month, year"
    )
    assert error(client.get(hist, headers=h, params=ok)) == "Required parameter"
    assert (
        error(client.get(hist, headers=h, params={**ok, "interval": "day", "field": "state"}))
        == "Numeric field only"
    )
    presence = {"sdid": lamp.did, "startDate": base, "endDate": base + 367 * DAY, "interval": "month"}
    assert error(client.get("/v1.1/messages/presence", headers=h, params=presence)) == "Maximum range 1 year"
    assert error(
        client.get("/v1.1/messages/presence", headers=h, params={**presence, "interval": "fortnight"})
    ).startswith("Must be")
    assert (
        error(
            client.get(
                "/v1.1/messages/presence",
                headers=h,
                params={**presence, "interval": "day", "endDate": base + DAY, "fieldPresence": "nope"},
            )
        )
        == "Unknown field 'nope'"
    )
    assert client.get(agg, headers=h, params={**ok, "sdid": "0" * 32}).status_code == 404
