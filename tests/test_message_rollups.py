"""Rollup-backed analytics (thingcloud/areas/messages/rollups.py) give exactly what the raw messages
give: randomized messages over several numeric fields (one in a group), sent out of order and
backdated, some deleted by retention or with their device; aggregates and histograms compared with
values computed here from what was sent, and the rollup rows themselves with per-hour statistics."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from thingcloud import tables as t
from thingcloud.areas.messages import rollups
from thingcloud.runtime import Runtime

from .conftest import TEST_DATABASE_URL, LiveServer, scratch_database_url, start_live
from .test_analytics import HOUR, bucket
from .test_import import imported, jsonl
from .test_message_queries import DAY, MINUTE, send
from .test_messages_ingest import Lamp, new_lamp, stored_messages
from .test_retention import run_purge, set_retention, wait_for_job

FIELDS = ("temp", "location.x")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    url = scratch_database_url() if TEST_DATABASE_URL else ""
    live, thread = start_live(tmp_path_factory.mktemp("rollups"), database_url=url, job_poll_interval=0.05)
    yield live
    thread.stop()


def rolled_up(server: LiveServer) -> None:
    """Wait until the rollup consumer has handled every feed entry."""

    async def behind(rt: Runtime) -> bool:
        async with rt.db.read() as conn:
            newest = await conn.scalar(select(func.max(t.feed.c.seq)))
            done = await conn.scalar(
                select(t.feed_checkpoints.c.seq).where(t.feed_checkpoints.c.consumer == rollups.CONSUMER)
            )
        return done is None or int(done) < int(newest or 0)

    deadline = time.monotonic() + 30
    while server.call(behind):
        assert time.monotonic() < deadline, "rollup consumer did not catch up"
        time.sleep(0.05)


def rollup_rows(server: LiveServer, did: str) -> list[dict[str, Any]]:
    async def read(rt: Runtime) -> list[dict[str, Any]]:
        r = t.message_rollups
        async with rt.db.read() as conn:
            return [dict(x._mapping) for x in await conn.execute(select(r).where(r.c.sdid == did))]

    return server.call(read)


def expected_stats(values: list[float]) -> dict[str, Any]:
    """Statistics computed here; float sums and variances compared within a relative tolerance."""
    return {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "mean": pytest.approx(statistics.fmean(values), rel=1e-9, abs=1e-9),
        "sum": pytest.approx(sum(values), rel=1e-9, abs=1e-9),
        "variance": pytest.approx(statistics.pvariance(values), rel=1e-9, abs=1e-9),
    }


def value_of(data: dict[str, Any], path: str) -> float | None:
    node: Any = data
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return None if node is None else float(node)


def random_data(rng: random.Random) -> dict[str, Any]:
    data: dict[str, Any] = {"state": rng.random() < 0.5}
    if rng.random() < 0.8:
        data["temp"] = round(rng.uniform(-20, 40), 3) + 1e6 * (rng.random() < 0.05)  # a few outliers
    if rng.random() < 0.5:
        data["location"] = {"x": float(rng.randint(-500, 500))}
    return data


class Sent:
    def __init__(self, lamp: Lamp) -> None:
        self.lamp = lamp
        self.messages: list[dict[str, Any]] = []

    def values(self, path: str, start: int, end: int) -> list[float]:
        found = (value_of(m["data"], path) for m in self.messages if start <= m["ts"] < end)
        return [v for v in found if v is not None]

    def send(self, client: httpx.Client, ts: int, data: dict[str, Any]) -> None:
        self.messages.append(send(client, self.lamp.token, self.lamp.did, ts, data))


def check_analytics(client: httpx.Client, sent: Sent, start: int, end: int, rng: random.Random) -> None:
    """Aggregates over random ranges and histograms by hour, day and month, against ``sent``."""
    headers, did = sent.lamp.owner.headers, sent.lamp.did
    for path in FIELDS:
        for _ in range(8):
            a = rng.randint(start, end)
            b = rng.randint(a, end)
            params: dict[str, Any] = {"sdid": did, "field": path, "startDate": a, "endDate": b}
            body = client.get("/v1.1/messages/analytics/aggregates", headers=headers, params=params).json()
            first, last = a - a % MINUTE, b - b % MINUTE
            values = sent.values(path, first, last)
            if values:
                assert body["data"] == [expected_stats(values)], (path, a, b)
            else:
                assert body["data"][0]["count"] == 0
        day = rng.randint(start, end - DAY)
        for interval, a, b in (("day", start, end), ("month", start, end), ("hour", day, day + DAY)):
            params["interval"] = interval
            params.update({"startDate": a, "endDate": b})
            body = client.get("/v1.1/messages/analytics/histogram", headers=headers, params=params).json()
            groups: dict[int, list[float]] = {}
            for m in sent.messages:
                value = value_of(m["data"], path)
                if a <= m["ts"] < b and value is not None:
                    groups.setdefault(bucket(m["ts"], interval), []).append(value)
            expected = [{**expected_stats(v), "ts": k} for k, v in sorted(groups.items())]
            assert body["data"] == expected, (path, interval)


def check_rows(server: LiveServer, sent: Sent) -> int:
    """Every rollup row against the sent values of its bucket; the number of non-empty rows."""
    rows = rollup_rows(server, sent.lamp.did)
    filled = 0
    for row in rows:
        values = sent.values(row["path"], row["bucket"], row["bucket"] + row["size"])
        assert row["n"] == len(values), row
        if values:
            filled += 1
            assert row["total"] == pytest.approx(sum(values), rel=1e-9, abs=1e-9)
            assert (row["low"], row["high"]) == (min(values), max(values))
            assert row["m2"] / row["n"] == pytest.approx(statistics.pvariance(values), rel=1e-9, abs=1e-9)
    return filled


def test_rollups_match_the_raw_messages(server: LiveServer) -> None:
    rng = random.Random(20261126)
    lamp = new_lamp(server)
    sent = Sent(lamp)
    now = server.clock.now_ms()
    start, end = now - 6 * DAY, now - MINUTE
    with server.client() as client:
        stamps = [rng.randint(start, end) for _ in range(240)]
        for ts in stamps:  # random order: most are backdated behind a newer one
            sent.send(client, ts, random_data(rng))
        rolled_up(server)
        assert check_rows(server, sent) > 10
        server.clock.advance(61)
        check_analytics(client, sent, start, end, rng)

        # Backdated into days already rolled up; read before the consumer has seen them.
        late = [
            (rng.randint(start, end), {"temp": 1000.0 + i, "location": {"x": -1000.0 - i}}) for i in range(6)
        ]
        for ts, data in late:
            sent.send(client, ts, data)
        fresh = sent.messages[-len(late) :]
        params: dict[str, Any] = {"sdid": lamp.did, "field": "temp", "startDate": start, "endDate": end}
        params["interval"] = "day"
        body = client.get(
            "/v1.1/messages/analytics/histogram", headers=lamp.owner.headers, params=params
        ).json()
        assert sum(b["count"] for b in body["data"]) == len(sent.values("temp", start, end))
        settled = Sent(lamp)
        settled.messages = [m for m in sent.messages if m not in fresh]
        del params["interval"]
        body = client.get(
            "/v1.1/messages/analytics/aggregates", headers=lamp.owner.headers, params=params
        ).json()
        assert body["data"] == [
            expected_stats(settled.values("temp", start - start % MINUTE, end - end % MINUTE))
        ]

        rolled_up(server)
        server.clock.advance(61)
        check_rows(server, sent)
        check_analytics(client, sent, start, end, rng)

        # Retention deletes the older half: min and max of the boundary buckets are recomputed.
        assert set_retention(client, lamp.owner.headers, lamp.did, 3).status_code == 200
        run_purge(server)
        kept = {r["mid"] for r in stored_messages(server, lamp.did)}
        assert 0 < len(kept) < len(sent.messages)
        sent.messages = [m for m in sent.messages if m["mid"] in kept]
        assert check_rows(server, sent) > 5
        check_analytics(client, sent, start, end, rng)
        rolled_up(server)
        check_analytics(client, sent, start, end, rng)


def test_a_deleted_device_loses_its_rollups(server: LiveServer) -> None:
    lamp = new_lamp(server)
    keep = new_lamp(server, lamp.owner, lamp.dtid)
    now = server.clock.now_ms()
    with server.client() as client:
        for n in range(5):
            send(client, lamp.token, lamp.did, now - n * HOUR, {"temp": float(n)})
            send(client, keep.token, keep.did, now - n * HOUR, {"temp": float(n)})
        rolled_up(server)
        assert rollup_rows(server, lamp.did)
        assert client.delete(f"/v1.1/devices/{lamp.did}", headers=lamp.owner.headers).status_code == 200

    async def the_job(rt: Runtime) -> str:
        j = t.jobs
        async with rt.db.read() as conn:
            query = select(j.c.id).where(j.c.unique_key == f"delete-device:{lamp.did}")
            return str((await conn.execute(query)).scalar_one())

    wait_for_job(server, server.call(the_job))
    rolled_up(server)
    assert rollup_rows(server, lamp.did) == []
    assert sum(r["n"] for r in rollup_rows(server, keep.did) if r["size"] == rollups.DAY_MS) == 5


def test_imported_history_is_counted(server: LiveServer) -> None:
    """Imported messages get no feed entry: their buckets are read raw until rebuilt, never stale."""
    rng = random.Random(7)
    lamp = new_lamp(server)
    sent = Sent(lamp)
    now = server.clock.now_ms()
    start, end = now - 3 * DAY, now - MINUTE
    with server.client() as client:
        for _ in range(60):
            sent.send(client, rng.randint(start, end), random_data(rng))
        rolled_up(server)
        server.clock.advance(61)
        check_analytics(client, sent, start, end, rng)
        history = [
            {"ts": m["ts"] + 1 + i, "data": {"temp": 500.0 + i, "location": {"x": -7.5 * i}}}
            for i, m in enumerate(sent.messages[:25])  # into hours that have rollups
        ]
        report = imported(client, lamp.owner.headers, lamp.did, jsonl(history), "application/x-ndjson")
        assert report["status"] == "Success", report
        mids = {m["mid"] for m in sent.messages}
        sent.messages += [m for m in stored_messages(server, lamp.did) if m["mid"] not in mids]
        assert len(sent.messages) == 85
        server.clock.advance(61)
        check_analytics(client, sent, start, end, rng)  # whether or not the rebuild has run yet
        deadline = time.monotonic() + 30
        temps = len(sent.values("temp", 0, 2**62))
        while (
            sum(
                r["n"]
                for r in rollup_rows(server, lamp.did)
                if r["size"] == rollups.DAY_MS and r["path"] == "temp"
            )
            < temps
        ):
            assert time.monotonic() < deadline, "imported buckets were not rebuilt"
            time.sleep(0.05)
        check_rows(server, sent)
        check_analytics(client, sent, start, end, rng)
