"""Device status, batch status and presence (S20–S22, §5.1) over HTTP, plus the status writers that
ingest and the device channels call."""

from __future__ import annotations

from typing import Any

import httpx

from thingcloud.areas.devices.status import write_snapshot, write_status

from .conftest import LiveServer
from .factories import make_device, make_device_type, make_user, record_bus

EMPTY = {
    "lastMessageTs": None,
    "lastActionTs": None,
    "lastTimeOnline": None,
    "availability": "unknown",
    "snapshot": None,
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def owner_with_device(live: LiveServer) -> tuple[Any, dict[str, Any]]:
    owner = make_user(live)
    return owner, make_device(live, owner.headers, make_device_type(live, owner.id))


def write(live: LiveServer, did: str, **changes: Any) -> None:
    async def work(rt: Any) -> None:
        async with rt.db.write() as conn:
            await write_status(rt, conn, did, **changes)

    live.call(work)


def test_status_starts_unknown_and_follows_put(live: LiveServer, client: httpx.Client) -> None:
    owner, device = owner_with_device(live)
    url = f"/v1.1/devices/{device['id']}/status"
    assert client.get(url, headers=owner.headers).json() == {"did": device["id"], "data": EMPTY}
    events = record_bus(live, "device.status")

    before = live.clock.now_ms()
    online = client.put(url, headers=owner.headers, json={"data": {"availability": "online"}})
    assert online.status_code == 200, online.text
    body = online.json()
    assert body["did"] == device["id"]
    assert body["data"]["availability"] == "online"
    assert before <= body["data"]["lastTimeOnline"] <= live.clock.now_ms()
    assert client.get(url, headers=owner.headers).json() == body
    ids = {"uid": owner.id, "dtid": device["dtid"], "aid": owner.app.client_id}
    assert events == [("device.status", {"did": device["id"], "availability": "online", **ids})]

    live.clock.advance(60)
    # The Swift form, flat; going offline keeps the last time the device was online.
    offline = client.put(url, headers=owner.headers, json={"availability": "offline", "extra": True})
    assert offline.json()["data"] == {**body["data"], "availability": "offline"}


def test_bad_status_bodies_write_nothing(live: LiveServer, client: httpx.Client) -> None:
    owner, device = owner_with_device(live)
    url = f"/v1.1/devices/{device['id']}/status"
    client.put(url, headers=owner.headers, json={"availability": "offline"})
    for body in (
        {"availability": "sleeping"},
        {"data": {"availability": "ONLINE"}},
        {},
        {"data": None},
        {"data": "online"},
        {"availability": 1},
    ):
        response = client.put(url, headers=owner.headers, json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == 4001
    malformed = client.put(
        url, headers={**owner.headers, "Content-Type": "application/json"}, content=b"{oops"
    )
    assert malformed.status_code == 400
    assert client.get(url, headers=owner.headers).json()["data"]["availability"] == "offline"


def test_message_times_only_move_forward(live: LiveServer, client: httpx.Client) -> None:
    owner, device = owner_with_device(live)
    did = device["id"]
    write(live, did, last_message_ts=2_000, last_action_ts=1_000)
    write(live, did, last_message_ts=1_500)  # a late message
    write(live, did, last_action_ts=3_000)
    data = client.get(f"/v1.1/devices/{did}/status", headers=owner.headers).json()["data"]
    assert (data["lastMessageTs"], data["lastActionTs"], data["availability"]) == (2_000, 3_000, "unknown")


def test_snapshot_plain_and_with_timestamps(live: LiveServer, client: httpx.Client) -> None:
    owner, device = owner_with_device(live)
    did = device["id"]

    async def snapshot(rt: Any) -> None:
        async with rt.db.write() as conn:
            await write_snapshot(
                rt, conn, did, {"temp": (21.5, 1_000), "location.x": (1.25, 1_100), "state": (True, 900)}
            )
            await write_snapshot(
                rt, conn, did, {"temp": (19.0, 500), "state": (False, 1_200)}
            )  # temp is older

    live.call(snapshot)
    url = f"/v1.1/devices/{did}/status"
    plain = client.get(url, headers=owner.headers, params={"includeSnapshot": "true"}).json()["data"]
    assert plain["snapshot"] == {"temp": 21.5, "location": {"x": 1.25}, "state": False}
    stamped = client.get(
        url, headers=owner.headers, params={"includeSnapshot": "true", "includeSnapshotTimestamp": "true"}
    ).json()["data"]
    assert stamped["snapshot"] == {
        "temp": {"value": 21.5, "ts": 1_000},
        "location": {"x": {"value": 1.25, "ts": 1_100}},
        "state": {"value": False, "ts": 1_200},
    }
    assert client.get(url, headers=owner.headers).json()["data"]["snapshot"] is None


def test_batch_status(live: LiveServer, client: httpx.Client) -> None:
    owner, first = owner_with_device(live)
    second = make_device(live, owner.headers, first["dtid"], name="Second lamp")
    client.put(
        f"/v1.1/devices/{second['id']}/status", headers=owner.headers, json={"availability": "offline"}
    )
    response = client.get(
        "/v1.1/devices/status",
        headers=owner.headers,
        params={"dids": f"{second['id']}, {first['id']},{second['id']}", "includeSnapshot": "true"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["total"], body["offset"], body["count"]) == (2, 0, 2)
    assert [item["did"] for item in body["data"]] == [second["id"], first["id"]]
    assert body["data"][0]["data"]["availability"] == "offline"
    assert body["data"][1]["data"] == {**EMPTY, "snapshot": {}}


def test_batch_status_rejections(live: LiveServer, client: httpx.Client) -> None:
    owner, device = owner_with_device(live)
    _stranger, theirs = owner_with_device(live)
    url = "/v1.1/devices/status"
    for params in ({}, {"dids": ""}, {"dids": " , "}, {"dids": ",".join(f"{i:032x}" for i in range(101))}):
        response = client.get(url, headers=owner.headers, params=params)
        assert response.status_code == 400, params
        error = response.json()["error"]
        assert (error["code"], error["errors"][0][0]["field"]) == (4001, "dids")
    hundred = [device["id"]] + [f"{i:032x}" for i in range(99)]
    assert client.get(url, headers=owner.headers, params={"dids": ",".join(hundred)}).status_code == 404
    unknown = client.get(url, headers=owner.headers, params={"dids": f"{device['id']},{'0' * 32}"})
    assert unknown.status_code == 404
    forbidden = client.get(url, headers=owner.headers, params={"dids": f"{device['id']},{theirs['id']}"})
    assert forbidden.status_code == 403


def test_presence(live: LiveServer, client: httpx.Client) -> None:
    owner, device = owner_with_device(live)
    url = f"/v1.1/devices/{device['id']}/presence"
    assert client.get(url, headers=owner.headers).json() == {
        "sdid": device["id"],
        "data": {"connected": False, "lastSeenOn": None},
    }
    before = live.clock.now_ms()
    write(live, device["id"], connected=True)
    seen = client.get(url, headers=owner.headers).json()["data"]
    assert seen["connected"] is True and before <= seen["lastSeenOn"] <= live.clock.now_ms()
    assert (
        client.get(f"/v1.1/devices/{device['id']}", headers=owner.headers).json()["data"]["connected"] is True
    )
    status = client.get(f"/v1.1/devices/{device['id']}/status", headers=owner.headers).json()["data"]
    assert status["lastTimeOnline"] == seen["lastSeenOn"]
    live.clock.advance(5)
    write(live, device["id"], connected=False)
    gone = client.get(url, headers=owner.headers).json()["data"]
    assert gone["connected"] is False and gone["lastSeenOn"] > seen["lastSeenOn"]


def test_device_token_reads_and_sets_its_own_status(live: LiveServer, client: httpx.Client) -> None:
    owner, device = owner_with_device(live)
    sibling = make_device(live, owner.headers, device["dtid"], name="Sibling lamp")
    token = client.put(f"/v1.1/devices/{device['id']}/tokens", headers=owner.headers).json()["data"]
    headers = bearer(token["accessToken"])
    put = client.put(f"/v1.1/devices/{device['id']}/status", headers=headers, json={"availability": "online"})
    assert put.status_code == 200
    assert client.get(f"/v1.1/devices/{device['id']}/presence", headers=headers).status_code == 200
    assert client.get(f"/v1.1/devices/{sibling['id']}/status", headers=headers).status_code == 403
    assert (
        client.put(
            f"/v1.1/devices/{sibling['id']}/status", headers=headers, json={"availability": "online"}
        ).status_code
        == 403
    )
    both = client.get(
        "/v1.1/devices/status", headers=headers, params={"dids": f"{device['id']},{sibling['id']}"}
    )
    assert both.status_code == 403
    assert client.get(f"/v1.1/devices/{sibling['id']}/status", headers=owner.headers).json()["data"] == EMPTY


def test_silent_http_device_goes_offline_but_a_connected_one_does_not(
    live: LiveServer, client: httpx.Client
) -> None:
    owner, device = owner_with_device(live)
    url = f"/v1.1/devices/{device['id']}/status"
    assert client.put(url, headers=owner.headers, json={"availability": "online"}).status_code == 200
    live.clock.advance(live.settings.http_offline_after - 5)
    assert client.get(url, headers=owner.headers).json()["data"]["availability"] == "online"
    live.clock.advance(10)
    assert client.get(url, headers=owner.headers).json()["data"]["availability"] == "offline"

    other = make_device(live, owner.headers, make_device_type(live, owner.id))
    write(live, other["id"], availability="online", connected=True)
    live.clock.advance(live.settings.http_offline_after * 3)
    status = client.get(f"/v1.1/devices/{other['id']}/status", headers=owner.headers).json()
    assert status["data"]["availability"] == "online"
