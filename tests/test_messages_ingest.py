"""``POST /v1.1/messages`` and ``POST /v1.1/actions`` against the live server: who may send, what is
stored (read back from the database: ``GET /messages`` does not exist yet), status and snapshot,
deduplication (also inside one concurrent burst), bad input that stores and changes nothing, rate
limits on the hot path, and the feed and bus events of each stored message."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Table, select

from thingcloud import tables as t
from thingcloud.auth.permissions import AppPermissions
from thingcloud.runtime import Runtime

from .conftest import LiveServer, start_live
from .factories import TestUser as User
from .factories import (
    app_token,
    make_app,
    make_device,
    make_device_token,
    make_device_type,
    make_user,
    password_token,
    record_bus,
)
from .test_ratelimits import pair, to_minute_start

HEX32 = re.compile(r"[0-9a-f]{32}")
SNAPSHOT = {"includeSnapshot": "true", "includeSnapshotTimestamp": "true"}
# Version 2 adds a field and an action with a parameter: a device pinned to version 1 knows neither.
THERMOSTAT_V1: dict[str, Any] = {
    "fields": [{"name": "temp", "valueClass": "Double"}],
    "actions": [{"name": "setOn"}],
}
THERMOSTAT_V2: dict[str, Any] = {
    "fields": [{"name": "temp", "valueClass": "Double"}, {"name": "humidity", "valueClass": "Integer"}],
    "actions": [
        {"name": "setOn"},
        {"name": "setLevel", "parameters": [{"name": "level", "valueClass": "Integer"}]},
    ],
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Lamp:
    """A device (of the factories' lamp type), its owner and its device token."""

    owner: User
    dtid: str
    did: str
    token: str

    @property
    def device(self) -> dict[str, str]:
        return bearer(self.token)


def new_lamp(live: LiveServer, owner: User | None = None, dtid: str | None = None, **body: Any) -> Lamp:
    owner = owner or make_user(live)
    dtid = dtid or make_device_type(live, owner.id)
    did = make_device(live, owner.headers, dtid, **body)["id"]
    return Lamp(owner, dtid, did, make_device_token(live, owner, did))


@pytest.fixture()
def lamp(live: LiveServer) -> Lamp:
    return new_lamp(live)


# --- reading back what was stored -------------------------------------------------------------------


def _rows(live: LiveServer, table: Table, key: str, did: str) -> list[dict[str, Any]]:
    async def read(rt: Runtime) -> list[dict[str, Any]]:
        async with rt.db.read() as conn:
            query = select(table).where(table.c[key] == did).order_by(table.c.ts, table.c.mid)
            return [dict(r._mapping) for r in await conn.execute(query)]

    return live.call(read)


def stored_messages(live: LiveServer, sdid: str) -> list[dict[str, Any]]:
    return _rows(live, t.messages, "sdid", sdid)


def stored_actions(live: LiveServer, ddid: str) -> list[dict[str, Any]]:
    return _rows(live, t.actions, "ddid", ddid)


def feed_of(live: LiveServer, did: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(kind, ref, payload) of the device's feed entries, in seq order."""

    async def read(rt: Runtime) -> list[tuple[str, str | None, dict[str, Any]]]:
        f = t.feed
        async with rt.db.read() as conn:
            rows = await conn.execute(
                select(f.c.kind, f.c.ref, f.c.payload).where(f.c.did == did).order_by(f.c.seq)
            )
            return [(r[0], r[1], r[2]) for r in rows]

    return live.call(read)


def status_of(client: httpx.Client, headers: dict[str, str], did: str) -> dict[str, Any]:
    response = client.get(f"/v1.1/devices/{did}/status", headers=headers, params=SNAPSHOT)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def fingerprint(live: LiveServer, client: httpx.Client, lamp: Lamp) -> list[Any]:
    """Everything an ingest could change for the lamp."""
    return [
        stored_messages(live, lamp.did),
        stored_actions(live, lamp.did),
        feed_of(live, lamp.did),
        status_of(client, lamp.owner.headers, lamp.did),
    ]


def mid_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"data"} and set(body["data"]) == {"mid"}
    mid: str = body["data"]["mid"]
    assert HEX32.fullmatch(mid)
    return mid


def field_errors(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 4001
    assert HEX32.fullmatch(error["id"])
    return {e["field"]: e["messages"] for e in error["errors"][0]}


def error_code(response: httpx.Response, status: int) -> int:
    assert response.status_code == status, response.text
    code: int = response.json()["error"]["code"]
    return code


def published(events: list[tuple[str, dict[str, Any]]], expected: list[tuple[str, dict[str, Any]]]) -> bool:
    """Whether the bus events become exactly ``expected`` (they follow the commit, not the answer)."""
    deadline = time.monotonic() + 5
    while events != expected and len(events) <= len(expected) and time.monotonic() < deadline:
        time.sleep(0.02)
    return events == expected


# --- who may send ------------------------------------------------------------------------------------


def test_device_token_sends_as_its_own_device(live: LiveServer, client: httpx.Client, lamp: Lamp) -> None:
    before = live.clock.now_ms()
    client_ts = before - 5_000
    first = mid_of(
        client.post(
            "/v1.1/messages",
            headers=lamp.device,
            json={
                "sdid": lamp.did,
                "ts": client_ts,
                "type": "message",
                "data": {"temp": 21.5, "state": True},
            },
        )
    )
    live.clock.advance(1)  # a later millisecond: the second mid sorts after the first
    second = mid_of(client.post("/v1.1/messages", headers=lamp.device, json={"data": {"temp": 22}}))
    after = live.clock.now_ms()

    rows = stored_messages(live, lamp.did)
    assert [r["mid"] for r in rows] == [first, second]
    assert second > first
    common = {"sdid": lamp.did, "sdtid": lamp.dtid, "uid": lamp.owner.id, "mv": 1}
    assert rows[0] == {
        **common,
        "mid": first,
        "ts": client_ts,
        "cts": rows[0]["cts"],
        "data": {"temp": 21.5, "state": True},
    }
    assert rows[1] == {
        **common,
        "mid": second,
        "ts": rows[1]["cts"],
        "cts": rows[1]["cts"],
        "data": {"temp": 22.0},
    }
    assert before <= rows[0]["cts"] < rows[1]["cts"] <= after
    for row in rows:  # time-ordered ids: the first 48 bits are the reception time
        assert int(row["mid"][:12], 16) == row["cts"]

    other = new_lamp(live, lamp.owner, lamp.dtid)
    refused = client.post(
        "/v1.1/messages", headers=lamp.device, json={"sdid": other.did, "data": {"temp": 1}}
    )
    assert error_code(refused, 403) == 403
    assert stored_messages(live, other.did) == []
    assert len(stored_messages(live, lamp.did)) == 2


def test_data_is_normalized_against_the_manifest(live: LiveServer, client: httpx.Client, lamp: Lamp) -> None:
    ts = live.clock.now_ms() - 1_000
    data = {
        "state": "true",
        "TEMP": "21.5",
        "location": {"x": "3", "y": 4},
        "colour": "red",
        "group": {"a": 1},
    }
    mid = mid_of(client.post("/v1.1/messages", headers=lamp.device, json={"ts": ts, "data": data}))
    [row] = stored_messages(live, lamp.did)
    assert (row["mid"], row["data"]) == (mid, {"state": True, "temp": 21.5, "location": {"x": 3.0}})
    assert type(row["data"]["location"]["x"]) is float
    assert status_of(client, lamp.owner.headers, lamp.did)["snapshot"] == {
        "location": {"x": {"value": 3.0, "ts": ts}},
        "state": {"value": True, "ts": ts},
        "temp": {"value": 21.5, "ts": ts},
    }


def test_user_tokens_need_write_on_the_device(live: LiveServer, client: httpx.Client, lamp: Lamp) -> None:
    accepted, pending, stranger = make_user(live), make_user(live), make_user(live)
    shares = {}
    for recipient in (accepted, pending):
        response = client.post(
            f"/v1.1/devices/{lamp.did}/shares", headers=lamp.owner.headers, json={"email": recipient.email}
        )
        assert response.status_code == 200, response.text
        shares[recipient.id] = response.json()["shareId"]
    response = client.put(
        f"/v1.1/devices/{lamp.did}/shares/{shares[accepted.id]}",
        headers=accepted.headers,
        json={"status": "ACCEPTED"},
    )
    assert response.status_code == 200, response.text

    sent = {}
    for user in (lamp.owner, accepted):
        body = {"sdid": lamp.did, "data": {"temp": 1 if user is lamp.owner else 2}}
        sent[user.id] = mid_of(client.post("/v1.1/messages", headers=user.headers, json=body))
    for user in (pending, stranger):
        refused = client.post(
            "/v1.1/messages", headers=user.headers, json={"sdid": lamp.did, "data": {"temp": 3}}
        )
        assert error_code(refused, 403) == 403
    rows = stored_messages(live, lamp.did)
    # The message belongs to the device's owner, whoever sent it.
    assert sorted((r["mid"], r["uid"], r["data"]["temp"]) for r in rows) == sorted(
        [(sent[lamp.owner.id], lamp.owner.id, 1.0), (sent[accepted.id], lamp.owner.id, 2.0)]
    )


def test_app_tokens_need_write_on_the_device_type(live: LiveServer, client: httpx.Client, lamp: Lamp) -> None:
    def application(rights: set[str], authorized: bool = True) -> dict[str, str]:
        app = make_app(
            live, lamp.owner.id, permissions=AppPermissions(device_types={lamp.dtid: frozenset(rights)})
        )
        if authorized:
            password_token(live, app, lamp.owner.email)  # the owner authorizes the application
        return bearer(app_token(live, app))

    writer = application({"READ", "WRITE"})
    mid = mid_of(client.post("/v1.1/messages", headers=writer, json={"sdid": lamp.did, "data": {"temp": 5}}))
    missing_sdid = client.post("/v1.1/messages", headers=writer, json={"data": {"temp": 5}})
    assert field_errors(missing_sdid) == {"sdid": ["Required parameter"]}
    for headers in (application({"READ"}), application({"READ", "WRITE"}, authorized=False)):
        refused = client.post("/v1.1/messages", headers=headers, json={"sdid": lamp.did, "data": {"temp": 6}})
        assert error_code(refused, 403) == 403
    assert [(r["mid"], r["data"]) for r in stored_messages(live, lamp.did)] == [(mid, {"temp": 5.0})]


def test_manifest_version_latest_or_pinned(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    dtid = make_device_type(live, owner.id, documents=[THERMOSTAT_V1, THERMOSTAT_V2])
    latest = new_lamp(live, owner, dtid)
    pinned = new_lamp(live, owner, dtid, manifestVersion=1, manifestVersionPolicy="DEVICE")
    for device in (latest, pinned):
        mid_of(
            client.post(
                "/v1.1/messages", headers=device.device, json={"data": {"temp": "20", "humidity": "55"}}
            )
        )
    [on_latest] = stored_messages(live, latest.did)
    [on_pinned] = stored_messages(live, pinned.did)
    assert (on_latest["mv"], on_latest["data"]) == (2, {"temp": 20.0, "humidity": 55})
    assert (on_pinned["mv"], on_pinned["data"]) == (1, {"temp": 20.0})

    level = {"actions": [{"name": "setLevel", "parameters": {"level": "7", "speed": 3}}]}
    mid = mid_of(
        client.post("/v1.1/actions", headers=owner.headers, json={"ddid": latest.did, "data": level})
    )
    [action] = stored_actions(live, latest.did)
    assert (action["mid"], action["mv"]) == (mid, 2)
    assert action["data"] == {"actions": [{"name": "setLevel", "parameters": {"level": 7}}]}
    unknown = client.post("/v1.1/actions", headers=owner.headers, json={"ddid": pinned.did, "data": level})
    assert field_errors(unknown) == {"data.actions.0.name": ["Unknown action 'setLevel'"]}
    assert stored_actions(live, pinned.did) == []


# --- actions -----------------------------------------------------------------------------------------


def test_actions_are_stored_for_the_destination(live: LiveServer, client: httpx.Client, lamp: Lamp) -> None:
    events = record_bus(live, f"action.{lamp.did}")
    owner = lamp.owner.headers
    ts = live.clock.now_ms() - 2_000
    body = {"ddid": lamp.did, "ts": ts, "type": "action", "data": {"actions": [{"name": "SETON"}]}}
    by_user = mid_of(client.post("/v1.1/actions", headers=owner, json=body))
    # Legacy: an action through /messages, here sent by the device itself (its own sdid is recorded).
    legacy = {"ddid": lamp.did, "type": "action", "data": {"actions": [{"name": "setOn", "parameters": {}}]}}
    by_device = mid_of(client.post("/v1.1/messages", headers=lamp.device, json=legacy))

    assert stored_messages(live, lamp.did) == []
    rows = stored_actions(live, lamp.did)
    assert [r["mid"] for r in rows] == [by_user, by_device]
    common = {"ddid": lamp.did, "ddtid": lamp.dtid, "uid": lamp.owner.id, "mv": 1}
    set_on = {"actions": [{"name": "setOn", "parameters": {}}]}
    assert rows[0] == {
        **common,
        "mid": by_user,
        "sdid": None,
        "ts": ts,
        "cts": rows[0]["cts"],
        "data": set_on,
    }
    assert rows[1] == {
        **common,
        "mid": by_device,
        "sdid": lamp.did,
        "ts": rows[1]["cts"],
        "cts": rows[1]["cts"],
        "data": set_on,
    }
    assert feed_of(live, lamp.did) == [("action", r["mid"], r) for r in rows]
    assert published(events, [(f"action.{lamp.did}", r) for r in rows])
    status = status_of(client, owner, lamp.did)
    # An action tells when the device was last sent something, not that it was heard from.
    assert (status["lastActionTs"], status["lastMessageTs"]) == (rows[1]["ts"], None)
    assert (status["availability"], status["lastTimeOnline"], status["snapshot"]) == ("unknown", None, {})


def test_bad_actions_store_nothing(live: LiveServer, client: httpx.Client, lamp: Lamp) -> None:
    mid_of(
        client.post(
            "/v1.1/actions",
            headers=lamp.owner.headers,
            json={"ddid": lamp.did, "data": {"actions": [{"name": "setOn"}]}},
        )
    )
    before = fingerprint(live, client, lamp)
    stranger = new_lamp(live)
    set_on = {"actions": [{"name": "setOn"}]}
    cases: list[tuple[dict[str, str], dict[str, Any], dict[str, list[str]] | int]] = [
        (
            lamp.owner.headers,
            {"ddid": lamp.did, "data": {"actions": [{"name": "fly"}]}},
            {"data.actions.0.name": ["Unknown action 'fly'"]},
        ),
        (
            lamp.owner.headers,
            {"ddid": lamp.did, "data": {**set_on, "extra": 1}},
            {"data.extra": ["Only 'actions' is allowed here"]},
        ),
        (
            lamp.owner.headers,
            {"ddid": lamp.did, "data": {"actions": []}},
            {"data.actions": ["At least one action is required"]},
        ),
        (
            lamp.owner.headers,
            {"ddid": lamp.did, "data": {"actions": {"name": "setOn"}}},
            {"data.actions": ["Array expected"]},
        ),
        (lamp.owner.headers, {"ddid": lamp.did, "data": [set_on]}, {"data": ["JSON object expected"]}),
        (lamp.owner.headers, {"ddid": lamp.did}, {"data": ["Required parameter"]}),
        (lamp.owner.headers, {"data": set_on}, {"ddid": ["Required parameter"]}),
        (lamp.owner.headers, {"ddid": lamp.did, "ts": -5, "data": set_on}, {"ts": ["Invalid ts value"]}),
        (lamp.owner.headers, {"ddid": "0" * 32, "data": set_on}, 404),
        (stranger.owner.headers, {"ddid": lamp.did, "data": set_on}, 403),
        (stranger.device, {"ddid": lamp.did, "data": set_on}, 403),  # another device's token
        # A user may name as the source only a device it may read.
        (lamp.owner.headers, {"ddid": lamp.did, "sdid": stranger.did, "data": set_on}, 403),
        (lamp.owner.headers, {"ddid": lamp.did, "sdid": "0" * 32, "data": set_on}, 404),
    ]
    for headers, body, expected in cases:
        response = client.post("/v1.1/actions", headers=headers, json=body)
        if isinstance(expected, int):
            assert error_code(response, expected) == expected, body
        else:
            assert field_errors(response) == expected, body
    assert fingerprint(live, client, lamp) == before


# --- status and snapshot -----------------------------------------------------------------------------


def test_status_and_snapshot_keep_the_newest_value(
    live: LiveServer, client: httpx.Client, lamp: Lamp
) -> None:
    owner = lamp.owner.headers
    fresh = status_of(client, owner, lamp.did)
    assert fresh == {
        "lastMessageTs": None,
        "lastActionTs": None,
        "lastTimeOnline": None,
        "availability": "unknown",
        "snapshot": {},
    }
    now = live.clock.now_ms()
    newest = now - 1_000
    mid_of(
        client.post(
            "/v1.1/messages",
            headers=lamp.device,
            json={"ts": now - 10_000, "data": {"temp": 20, "state": False}},
        )
    )
    mid_of(client.post("/v1.1/messages", headers=lamp.device, json={"ts": newest, "data": {"temp": 25}}))
    status = status_of(client, owner, lamp.did)
    assert (status["lastMessageTs"], status["availability"]) == (newest, "online")
    assert now <= status["lastTimeOnline"] <= live.clock.now_ms()

    # A late, backdated message is stored but changes neither lastMessageTs nor newer snapshot values;
    # a field the snapshot did not have yet is taken from it.
    late = mid_of(
        client.post(
            "/v1.1/messages",
            headers=lamp.device,
            json={"ts": now - 5_000, "data": {"temp": 10, "location": {"x": 1}}},
        )
    )
    assert late in [r["mid"] for r in stored_messages(live, lamp.did)]
    after = status_of(client, owner, lamp.did)
    assert after["lastMessageTs"] == newest
    assert after["snapshot"] == {
        "location": {"x": {"value": 1.0, "ts": now - 5_000}},
        "state": {"value": False, "ts": now - 10_000},
        "temp": {"value": 25.0, "ts": newest},
    }
    plain = client.get(f"/v1.1/devices/{lamp.did}/status", headers=owner, params={"includeSnapshot": "true"})
    assert plain.json()["data"]["snapshot"] == {"location": {"x": 1.0}, "state": False, "temp": 25.0}


def test_backdated_values_in_one_concurrent_burst(live: LiveServer, lamp: Lamp) -> None:
    """Messages committed together (one group-commit batch, most likely) still leave the value with
    the newest ``ts`` in the snapshot, whatever order they arrived in."""
    now = live.clock.now_ms()
    bodies = [{"ts": now - 60_000 + i * 1_000, "data": {"temp": i}} for i in range(30)]
    with live.client() as client, ThreadPoolExecutor(30) as pool:
        mids = list(
            pool.map(
                lambda b: mid_of(client.post("/v1.1/messages", headers=lamp.device, json=b)), reversed(bodies)
            )
        )
        status = status_of(client, lamp.owner.headers, lamp.did)
    assert len(set(mids)) == 30 and len(stored_messages(live, lamp.did)) == 30
    assert status["lastMessageTs"] == now - 31_000
    assert status["snapshot"] == {"temp": {"value": 29.0, "ts": now - 31_000}}


# --- deduplication -----------------------------------------------------------------------------------


def test_a_resent_message_gets_its_original_mid(live: LiveServer, client: httpx.Client, lamp: Lamp) -> None:
    ts = live.clock.now_ms() - 3_000

    def send(data: dict[str, Any], **extra: Any) -> str:
        return mid_of(client.post("/v1.1/messages", headers=lamp.device, json={"data": data, **extra}))

    original = send({"temp": 21}, ts=ts)
    assert send({"temp": 21}, ts=ts) == original
    assert send({"temp": "21", "colour": "red"}, ts=ts) == original  # the same once normalized
    changed = send({"temp": 22}, ts=ts)
    untimed = [send({"temp": 21}), send({"temp": 21})]  # without a client ts: never deduplicated
    other = new_lamp(live, lamp.owner, lamp.dtid)
    elsewhere = mid_of(
        client.post("/v1.1/messages", headers=other.device, json={"ts": ts, "data": {"temp": 21}})
    )

    assert len({original, changed, *untimed, elsewhere}) == 5
    rows = stored_messages(live, lamp.did)
    assert sorted(r["mid"] for r in rows) == sorted([original, changed, *untimed])
    assert [r["mid"] for r in stored_messages(live, other.did)] == [elsewhere]
    assert sorted(ref or "" for kind, ref, _ in feed_of(live, lamp.did)) == sorted(
        [original, changed, *untimed]
    )


def _burst(live: LiveServer, lamp: Lamp, body: dict[str, Any], n: int = 20) -> list[str]:
    with live.client() as client, ThreadPoolExecutor(n) as pool:
        responses = list(
            pool.map(lambda _: client.post("/v1.1/messages", headers=lamp.device, json=body), range(n))
        )
    return [mid_of(r) for r in responses]


def test_duplicates_in_one_concurrent_burst(live: LiveServer, lamp: Lamp) -> None:
    body = {"ts": live.clock.now_ms() - 1_000, "data": {"temp": 30}}
    mids = _burst(live, lamp, body)
    assert len(set(mids)) == 1
    assert [r["mid"] for r in stored_messages(live, lamp.did)] == mids[:1]
    assert [ref for _, ref, _ in feed_of(live, lamp.did)] == mids[:1]


def test_a_burst_resending_a_stored_message(live: LiveServer, client: httpx.Client, lamp: Lamp) -> None:
    body = {"ts": live.clock.now_ms() - 1_000, "data": {"temp": 31}}
    original = mid_of(client.post("/v1.1/messages", headers=lamp.device, json=body))
    for _ in range(3):
        assert _burst(live, lamp, body) == [original] * 20
    assert [r["mid"] for r in stored_messages(live, lamp.did)] == [original]
    assert [ref for _, ref, _ in feed_of(live, lamp.did)] == [original]


# --- bad input ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settled(live: LiveServer) -> Iterator[Lamp]:
    """A lamp with one message stored (so status and snapshot exist)."""
    lamp = new_lamp(live)
    with live.client() as client:
        mid_of(client.post("/v1.1/messages", headers=lamp.device, json={"data": {"temp": 19, "state": True}}))
    yield lamp


def _future(live: LiveServer) -> int:
    return live.clock.now_ms() + (live.settings.future_grace_seconds + 60) * 1000


BAD_BODIES: dict[str, tuple[Any, dict[str, list[str]]]] = {
    "ts negative": ({"ts": -1, "data": {"temp": 1}}, {"ts": ["Invalid ts value"]}),
    "ts in the future": ({"ts": _future, "data": {"temp": 1}}, {"ts": ["Invalid ts value (in future)"]}),
    "ts text": ({"ts": "yesterday", "data": {"temp": 1}}, {"ts": ["Numeric field only"]}),
    "ts boolean": ({"ts": True, "data": {"temp": 1}}, {"ts": ["Numeric field only"]}),
    "data text": ({"data": "temp=1"}, {"data": ["JSON object expected"]}),
    "data list": ({"data": [{"temp": 1}]}, {"data": ["JSON object expected"]}),
    "data null": ({"data": None}, {"data": ["Required parameter"]}),
    "data missing": ({"sdid": "@"}, {"data": ["Required parameter"]}),
    "nothing matches": (
        {"data": {"colour": "red"}},
        {"data": ["No field of the message matches the manifest"]},
    ),
    "wrong value type": ({"data": {"temp": "hot", "state": True}}, {"data.temp": ["Numeric field only"]}),
    "group not an object": ({"data": {"location": 5}}, {"data.location": ["JSON object expected"]}),
    "type unknown": ({"type": "event", "data": {"temp": 1}}, {"type": ["Must be 'message' or 'action'"]}),
    "sdid not text": ({"sdid": 12, "data": {"temp": 1}}, {"sdid": ["Text field only"]}),
    "body not an object": ([{"data": {"temp": 1}}], {"body": ["JSON object expected"]}),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_message_stores_and_changes_nothing(
    live: LiveServer, client: httpx.Client, settled: Lamp, case: str
) -> None:
    body, expected = BAD_BODIES[case]
    if isinstance(body, dict):
        body = {k: (v(live) if callable(v) else settled.did if v == "@" else v) for k, v in body.items()}
    before = fingerprint(live, client, settled)
    response = client.post("/v1.1/messages", headers=settled.device, json=body)
    assert field_errors(response) == expected
    assert fingerprint(live, client, settled) == before


def test_other_refusals_store_and_change_nothing(
    live: LiveServer, client: httpx.Client, settled: Lamp
) -> None:
    before = fingerprint(live, client, settled)
    limit = live.settings.max_message_bytes
    big = {"data": {"temp": 1, "note": "x" * limit}}
    too_large = client.post("/v1.1/messages", headers=settled.device, json=big)
    assert error_code(too_large, 413) == 413
    # Without a Content-Length (chunked): refused while reading.
    chunks = (
        b'{"data": {"temp": 1, "note": "' + b"x" * 1024 + b'"}}' if i == 0 else b" " * 1024 for i in range(12)
    )
    streamed = client.post(
        "/v1.1/messages", headers={**settled.device, "Content-Type": "application/json"}, content=chunks
    )
    assert error_code(streamed, 413) == 413

    malformed = client.post(
        "/v1.1/messages",
        headers={**settled.device, "Content-Type": "application/json"},
        content=b'{"data": {"temp": 1}',
    )
    assert field_errors(malformed) == {"body": ["Malformed JSON body"]}
    owner = settled.owner.headers
    assert field_errors(client.post("/v1.1/messages", headers=owner, json={"data": {"temp": 1}})) == {
        "sdid": ["Required parameter"]
    }
    unknown = client.post("/v1.1/messages", headers=owner, json={"sdid": "0" * 32, "data": {"temp": 1}})
    assert error_code(unknown, 404) == 404
    for headers in ({}, bearer("0" * 32)):
        unauthorized = client.post(
            "/v1.1/messages", headers=headers, json={"sdid": settled.did, "data": {"temp": 1}}
        )
        assert error_code(unauthorized, 401) == 401
    assert fingerprint(live, client, settled) == before


def test_ts_within_the_future_grace_is_accepted(live: LiveServer, client: httpx.Client, lamp: Lamp) -> None:
    ts = live.clock.now_ms() + (live.settings.future_grace_seconds - 10) * 1000
    mid = mid_of(client.post("/v1.1/messages", headers=lamp.device, json={"ts": ts, "data": {"temp": 1}}))
    assert [(r["mid"], r["ts"]) for r in stored_messages(live, lamp.did)] == [(mid, ts)]


# --- rate limits -------------------------------------------------------------------------------------


def test_rate_limit_headers_on_the_hot_path(live: LiveServer, client: httpx.Client, lamp: Lamp) -> None:
    responses = [
        client.post("/v1.1/messages", headers=lamp.device, json={"data": {"temp": n}}) for n in range(2)
    ]
    for response in responses:
        mid_of(response)
        assert {"x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset"} <= set(response.headers)
    limits = live.rt.limiter.limits[("device", "messages")]
    assert pair(responses[0], "x-rate-limit-limit") == limits
    first, second = (pair(r, "x-rate-limit-remaining") for r in responses)
    assert second == (first[0] - 1, first[1] - 1)


def test_device_minute_limit_gives_429(tmp_path: Path) -> None:
    artik, thread = start_live(tmp_path, rate_limits="artik")
    try:
        lamp = new_lamp(artik)
        to_minute_start(artik)
        with artik.client() as client:
            for n in range(1, 101):
                response = client.post("/v1.1/messages", headers=lamp.device, json={"data": {"temp": n}})
                mid_of(response)
                assert pair(response, "x-rate-limit-remaining") == (100 - n, 100_000 - n)
            refused = client.post("/v1.1/messages", headers=lamp.device, json={"data": {"temp": 101}})
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert (error["code"], error["message"]) == (429, "DEVICE MINUTE rate limit exceeded")
            assert error["id"] == refused.headers["x-request-id"]
            assert len(stored_messages(artik, lamp.did)) == 100
            # The owner's own quota is separate.
            assert (
                client.post(
                    "/v1.1/messages", headers=lamp.owner.headers, json={"sdid": lamp.did, "data": {"temp": 0}}
                ).status_code
                == 200
            )
    finally:
        thread.stop()


# --- feed and bus ------------------------------------------------------------------------------------


def test_feed_and_bus_get_each_stored_message_once(
    live: LiveServer, client: httpx.Client, lamp: Lamp
) -> None:
    events = record_bus(live, f"message.{lamp.did}")
    ts = live.clock.now_ms() - 1_000
    mids = [
        mid_of(client.post("/v1.1/messages", headers=lamp.device, json={"ts": ts + i, "data": {"temp": i}}))
        for i in range(3)
    ]
    assert (
        mid_of(client.post("/v1.1/messages", headers=lamp.device, json={"ts": ts, "data": {"temp": 0}}))
        == mids[0]
    )
    assert (
        client.post("/v1.1/messages", headers=lamp.device, json={"ts": ts, "data": {"temp": "x"}}).status_code
        == 400
    )

    rows = stored_messages(live, lamp.did)
    assert [r["mid"] for r in rows] == mids
    assert feed_of(live, lamp.did) == [("message", r["mid"], r) for r in rows]
    assert published(events, [(f"message.{lamp.did}", r) for r in rows])


def test_a_device_deleted_on_another_node_fails_only_its_own_messages(tmp_path: Path) -> None:
    """Node 2 still has the device in its cache when node 1 deletes it (their buses are separate):
    its message is refused with 404, and the messages it shares a group commit with are stored."""
    first, first_thread = start_live(tmp_path)
    second, second_thread = start_live(tmp_path)  # the same database
    try:
        doomed = new_lamp(first)
        survivor = new_lamp(first, doomed.owner, doomed.dtid)
        with second.client() as client:
            body = {"sdid": doomed.did, "data": {"temp": 1}}
            mid_of(client.post("/v1.1/messages", headers=doomed.owner.headers, json=body))
            deleted = httpx.delete(f"{first.url}/v1.1/devices/{doomed.did}", headers=doomed.owner.headers)
            assert deleted.status_code == 200, deleted.text

            def post(n: int) -> httpx.Response:
                if n == 0:
                    return client.post("/v1.1/messages", headers=doomed.owner.headers, json=body)
                return client.post("/v1.1/messages", headers=survivor.device, json={"data": {"temp": n}})

            with ThreadPoolExecutor(20) as pool:
                responses = list(pool.map(post, range(20)))
        assert error_code(responses[0], 404) == 404
        mids = [mid_of(r) for r in responses[1:]]
        assert sorted(r["mid"] for r in stored_messages(first, survivor.did)) == sorted(mids)
        # The one stored before the deletion goes with the deletion's job; none was stored after it.
        deadline = time.monotonic() + 15
        while stored_messages(first, doomed.did):
            assert time.monotonic() < deadline, "the device's messages were not deleted"
            time.sleep(0.05)
    finally:
        second_thread.stop()
        first_thread.stop()


def test_successful_device_data_is_not_access_logged_by_default(
    live: LiveServer, client: httpx.Client, lamp: Lamp, caplog: pytest.LogCaptureFixture
) -> None:
    """``THINGCLOUD_ACCESS_LOG_DATA`` is off: a stored message is counted in /metrics but gets no
    access-log line; a refused one, and every other request, still does."""
    with caplog.at_level(logging.INFO, logger="thingcloud.access"):
        stored = client.post("/v1.1/messages", headers=lamp.device, json={"data": {"temp": 20}})
        refused = client.post("/v1.1/messages", headers=lamp.device, json={"data": "not an object"})
        other = client.get(f"/v1.1/devices/{lamp.did}", headers=lamp.owner.headers)
        assert (stored.status_code, refused.status_code, other.status_code) == (200, 400, 200)

        def access_lines() -> dict[Any, Any]:
            return {
                getattr(r, "fields", {}).get("path"): getattr(r, "fields", {}).get("status")
                for r in caplog.records
                if r.name == "thingcloud.access"
            }

        # The line is written after the answer has gone out (the server runs in another thread).
        deadline = time.monotonic() + 10
        while f"/v1.1/devices/{lamp.did}" not in access_lines() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # the stored message's request ended before the GET began: its line, if any, is in
    logged = access_lines()
    message_lines = [
        getattr(r, "fields", {}).get("status")
        for r in caplog.records
        if r.name == "thingcloud.access" and getattr(r, "fields", {}).get("path") == "/v1.1/messages"
    ]
    assert message_lines == [400]  # only the refused one
    assert logged.get(f"/v1.1/devices/{lamp.did}") == 200
    metrics = client.get("/metrics").text
    assert 'thingcloud_http_requests_total{method="POST",route="/v1.1/messages",status="200"}' in metrics
