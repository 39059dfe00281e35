"""Retention of messages and actions (beyond ARTIK): ``GET``/``PUT /v1.1/devices/{did}/retention``
on the session server, and the background work on a server of its own (a global default of 30
days, a one-hour dedup window, a fast job poll) whose clock the tests move: the ``messages.purge``
job run by the job runner, the dedup window, the deletion of a deleted device's messages, SQLite
space handed back, and PostgreSQL partitions dropped."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from thingcloud import tables as t
from thingcloud.jobs import enqueue, get_job
from thingcloud.runtime import Runtime

from .conftest import TEST_DATABASE_URL, LiveServer, scratch_database_url, start_live
from .factories import make_user
from .test_messages_ingest import (
    Lamp,
    bearer,
    field_errors,
    mid_of,
    new_lamp,
    stored_actions,
    stored_messages,
)

DAY_MS = 86_400_000
DEFAULT_DAYS = 30
DEDUP_WINDOW = 3600


def retention_of(client: httpx.Client, headers: dict[str, str], did: str) -> httpx.Response:
    return client.get(f"/v1.1/devices/{did}/retention", headers=headers)


def set_retention(client: httpx.Client, headers: dict[str, str], did: str, days: Any) -> httpx.Response:
    return client.put(f"/v1.1/devices/{did}/retention", headers=headers, json={"days": days})


def test_owner_reads_and_sets_a_device_retention(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    owner = lamp.owner.headers
    unset = {"did": lamp.did, "days": None, "defaultDays": None, "effectiveDays": None}
    assert retention_of(client, owner, lamp.did).json() == {"data": unset}

    week = {"data": {**unset, "days": 7, "effectiveDays": 7}}
    response = set_retention(client, owner, lamp.did, 7)
    assert (response.status_code, response.json()) == (200, week)
    assert retention_of(client, owner, lamp.did).json() == week

    for days in (0, -1, 36_501):
        assert field_errors(set_retention(client, owner, lamp.did, days)) == {
            "days": ["Must be between 1 and 36500, or null for the default"]
        }
    assert set(field_errors(set_retention(client, owner, lamp.did, "a week"))) == {"days"}
    assert set_retention(client, owner, lamp.did, 36_500).json()["data"]["days"] == 36_500

    # Only the owner: not an accepted share recipient, a stranger or the device itself.
    recipient, stranger = make_user(live), make_user(live)
    share = client.post(f"/v1.1/devices/{lamp.did}/shares", headers=owner, json={"email": recipient.email})
    accepted = client.put(
        f"/v1.1/devices/{lamp.did}/shares/{share.json()['shareId']}",
        headers=recipient.headers,
        json={"status": "ACCEPTED"},
    )
    assert accepted.status_code == 200, accepted.text
    for headers in (recipient.headers, stranger.headers, lamp.device):
        assert retention_of(client, headers, lamp.did).status_code == 403
        assert set_retention(client, headers, lamp.did, 1).status_code == 403
    assert set_retention(client, bearer("0" * 32), lamp.did, 1).status_code == 401
    assert retention_of(client, owner, "0" * 32).status_code == 404
    assert set_retention(client, owner, "0" * 32, 1).status_code == 404
    assert retention_of(client, owner, lamp.did).json()["data"]["days"] == 36_500

    cleared = set_retention(client, owner, lamp.did, None)
    assert (cleared.status_code, cleared.json()) == (200, {"data": unset})
    assert retention_of(client, owner, lamp.did).json() == {"data": unset}


# --- background work, on a server of its own ---------------------------------------------------------


@pytest.fixture(scope="module")
def retained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("retained")
    url = scratch_database_url() if TEST_DATABASE_URL else ""
    server, thread = start_live(
        data_dir,
        database_url=url,
        message_retention_days=DEFAULT_DAYS,
        dedup_window_seconds=DEDUP_WINDOW,
        job_poll_interval=0.05,
    )
    yield server
    thread.stop()


def wait_for_job(server: LiveServer, job_id: str) -> dict[str, Any]:
    async def fetch(rt: Runtime) -> dict[str, Any] | None:
        return await get_job(rt, job_id)

    deadline = time.monotonic() + 30
    while (row := server.call(fetch)) is None or row["status"] != "succeeded":
        assert row is None or row["status"] in ("queued", "running"), row
        assert time.monotonic() < deadline, row
        time.sleep(0.05)
    return row


def run_purge(server: LiveServer) -> dict[str, Any]:
    """Run ``messages.purge`` once, through the server's job runner; its result."""

    async def submit(rt: Runtime) -> str:
        return await enqueue(rt, "messages.purge")

    result: dict[str, Any] = wait_for_job(server, server.call(submit))["result"]
    assert set(result) == {"deleted", "droppedPartitions", "dedupKeysForgotten"}
    return result


def send(client: httpx.Client, lamp: Lamp, ts: int, temp: float) -> str:
    return mid_of(client.post("/v1.1/messages", headers=lamp.device, json={"ts": ts, "data": {"temp": temp}}))


def send_action(client: httpx.Client, lamp: Lamp, ts: int) -> str:
    body = {"ddid": lamp.did, "ts": ts, "data": {"actions": [{"name": "setOn"}]}}
    return mid_of(client.post("/v1.1/actions", headers=lamp.owner.headers, json=body))


def kept(server: LiveServer, lamp: Lamp) -> list[int]:
    return [r["ts"] for r in stored_messages(server, lamp.did)]


def test_purge_keeps_each_device_retention(retained: LiveServer) -> None:
    short, default = new_lamp(retained), new_lamp(retained)
    now = retained.clock.now_ms()
    with retained.client() as client:
        assert set_retention(client, short.owner.headers, short.did, 2).json()["data"] == {
            "did": short.did,
            "days": 2,
            "defaultDays": DEFAULT_DAYS,
            "effectiveDays": 2,
        }
        assert retention_of(client, default.owner.headers, default.did).json()["data"]["effectiveDays"] == 30
        for age_days in (3, 1, 0):
            send(client, short, now - age_days * DAY_MS, age_days)
        old_action, young_action = (
            send_action(client, short, now - 3 * DAY_MS),
            send_action(client, short, now),
        )
        for age_days in (40, 3):
            send(client, default, now - age_days * DAY_MS, age_days)

    run_purge(retained)
    assert kept(retained, short) == [now - DAY_MS, now]
    assert [r["mid"] for r in stored_actions(retained, short.did)] == [young_action]
    assert old_action != young_action
    assert kept(retained, default) == [now - 3 * DAY_MS]  # the global default: 30 days

    retained.clock.advance(1.5 * 86_400)  # the 1-day-old message is now 2.5 days old
    run_purge(retained)
    assert kept(retained, short) == [now]
    assert kept(retained, default) == [now - 3 * DAY_MS]


def dedup_keys(server: LiveServer, did: str) -> list[tuple[int, str]]:
    async def read(rt: Runtime) -> list[tuple[int, str]]:
        d = t.message_dedup
        async with rt.db.read() as conn:
            return [(r[0], r[1]) for r in await conn.execute(select(d.c.ts, d.c.mid).where(d.c.sdid == did))]

    return server.call(read)


def test_dedup_keys_are_forgotten_after_the_window(retained: LiveServer) -> None:
    lamp = new_lamp(retained)
    ts = retained.clock.now_ms() - 1_000
    with retained.client() as client:
        original = send(client, lamp, ts, 21)
        assert dedup_keys(retained, lamp.did) == [(ts, original)]
        retained.clock.advance(DEDUP_WINDOW / 2)
        run_purge(retained)
        assert send(client, lamp, ts, 21) == original  # still within the window
        retained.clock.advance(DEDUP_WINDOW / 2 + 60)
        run_purge(retained)
        assert dedup_keys(retained, lamp.did) == []
        again = send(client, lamp, ts, 21)  # now a new message
    assert again != original
    assert sorted(r["mid"] for r in stored_messages(retained, lamp.did)) == sorted([original, again])
    assert dedup_keys(retained, lamp.did) == [(ts, again)]


def test_a_deleted_device_loses_its_messages_in_the_background(retained: LiveServer) -> None:
    lamp = new_lamp(retained)
    sibling = new_lamp(retained, lamp.owner, lamp.dtid)
    now = retained.clock.now_ms()
    with retained.client() as client:
        for n in range(3):
            send(client, lamp, now - n, n)
        send_action(client, lamp, now)
        kept_mid = send(client, sibling, now, 1)
        deleted = client.delete(f"/v1.1/devices/{lamp.did}", headers=lamp.owner.headers)
        assert deleted.status_code == 200, deleted.text

    async def the_job(rt: Runtime) -> list[str]:
        j = t.jobs
        async with rt.db.read() as conn:
            query = select(j.c.id).where(
                j.c.kind == "messages.delete_device", j.c.unique_key == f"delete-device:{lamp.did}"
            )
            return list((await conn.execute(query)).scalars())

    [job_id] = retained.call(the_job)
    row = wait_for_job(retained, job_id)
    assert (row["payload"], row["result"]) == ({"did": lamp.did}, {"deleted": 4})
    assert stored_messages(retained, lamp.did) == []
    assert stored_actions(retained, lamp.did) == []
    assert dedup_keys(retained, lamp.did) == []
    assert [r["mid"] for r in stored_messages(retained, sibling.did)] == [kept_mid]


@pytest.mark.skipif(bool(TEST_DATABASE_URL), reason="SQLite only")
def test_sqlite_space_is_handed_back(retained: LiveServer) -> None:
    lamp = new_lamp(retained)
    old = retained.clock.now_ms() - 40 * DAY_MS
    with retained.client() as client:
        for n in range(400):
            send(client, lamp, old + n, n)

    async def pages(rt: Runtime) -> tuple[int, int]:
        async with rt.db.read() as conn:
            count = await conn.scalar(text("PRAGMA page_count"))
            free = await conn.scalar(text("PRAGMA freelist_count"))
        return int(count or 0), int(free or 0)

    before, _ = retained.call(pages)
    run_purge(retained)
    assert kept(retained, lamp) == []
    after, free = retained.call(pages)
    assert free == 0
    assert after < before


def partitions(server: LiveServer) -> set[str]:
    async def read(rt: Runtime) -> set[str]:
        query = text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname IN ('messages', 'actions')"
        )
        async with rt.db.read() as conn:
            return set((await conn.execute(query)).scalars())

    return server.call(read)


def month_partition(table: str, ts_ms: int) -> str:
    day = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC)
    return f"{table}_y{day.year:04d}m{day.month:02d}"


@pytest.mark.skipif(not TEST_DATABASE_URL, reason="PostgreSQL only")
def test_postgres_drops_partitions_older_than_every_retention(retained: LiveServer) -> None:
    lamp = new_lamp(retained)
    now = retained.clock.now_ms()
    ancient = now - 100 * DAY_MS
    with retained.client() as client:
        send(client, lamp, ancient, 1)
        send_action(client, lamp, ancient)
        send(client, lamp, now, 2)
    old = {month_partition("messages", ancient), month_partition("actions", ancient)}
    current = {month_partition("messages", now), month_partition("actions", now)}
    assert old | current <= partitions(retained)

    run_purge(retained)
    remaining = partitions(retained)
    assert not old & remaining
    assert current <= remaining
    assert kept(retained, lamp) == [now]
