"""``GET /v1.1/events``, the event feed, with the real ``websockets`` client: the device lifecycle and
presence events of the devices the token may read, the ``events``/``event`` filter with wildcards,
``did``/``dids``, refusals, and revocation cut-off."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import LiveServer
from .factories import make_device, make_device_token, make_user
from .test_messages_ingest import new_lamp
from .test_websocket_device import closed_with, error, open_ws, recv, registered


def feed(live: LiveServer, token: str, **query: str) -> Any:
    return open_ws(live, "/v1.1/events", Authorization=f"bearer {token}", **query)


def event(frame: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    assert set(frame) == {"event", "ts", "data"} and isinstance(frame["ts"], int)
    return frame["event"], frame["data"]


def test_device_lifecycle_and_presence(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    first = new_lamp(live, owner)
    with feed(live, owner.token) as ws, feed(live, owner.token, events="device.status.*") as status_only:
        did = make_device(live, owner.headers, first.dtid, name="Kitchen")["id"]
        ids = {"uid": owner.id, "did": did, "dtid": first.dtid}
        assert event(recv(ws)) == ("device.new", {**ids, "aid": None})
        assert (
            client.put(
                f"/v1.1/devices/{did}", headers=owner.headers, json={"name": "Hallway lamp"}
            ).status_code
            == 200
        )
        assert event(recv(ws)) == ("device.updated", {**ids, "aid": None})
        token = make_device_token(live, owner, did)
        with open_ws(live, "/v1.1/websocket", ack="true") as device:
            registered(device, did, token)
            assert event(recv(ws)) == ("device.connected", {**ids, "aid": owner.app.client_id})
            assert event(recv(ws)) == ("device.status.online", {**ids, "aid": owner.app.client_id})
        assert event(recv(ws)) == ("device.disconnected", {**ids, "aid": owner.app.client_id})
        assert event(recv(ws)) == ("device.status.offline", {**ids, "aid": owner.app.client_id})
        assert client.delete(f"/v1.1/devices/{did}", headers=owner.headers).status_code == 200
        assert event(recv(ws)) == ("device.deleted", {**ids, "aid": None})
        # The filtered session saw only the status events.
        assert [event(recv(status_only))[0] for _ in range(2)] == [
            "device.status.online",
            "device.status.offline",
        ]


def test_filters_by_device_and_name(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    one, two = new_lamp(live, owner), new_lamp(live, owner)
    stranger = new_lamp(live)
    with (
        feed(live, owner.token, did=one.did, event="device.updated") as by_did,
        feed(live, owner.token, dids=f"{one.did},{two.did}", events="device.up*") as by_dids,
        feed(live, owner.token, events="device.deleted") as nothing_yet,
        feed(live, owner.token, events="device.status.*") as status,
    ):
        # The REST availability change is an event too.
        put = client.put(
            f"/v1.1/devices/{two.did}/status", headers=owner.headers, json={"availability": "online"}
        )
        assert put.status_code == 200, put.text
        assert event(recv(status)) == (
            "device.status.online",
            {"uid": owner.id, "aid": owner.app.client_id, "did": two.did, "dtid": two.dtid},
        )
        for lamp in (stranger, two, one):
            response = client.put(
                f"/v1.1/devices/{lamp.did}", headers=lamp.owner.headers, json={"name": "Renamed lamp"}
            )
            assert response.status_code == 200
        assert event(recv(by_did))[1]["did"] == one.did
        assert [event(recv(by_dids))[1]["did"] for _ in range(2)] == [two.did, one.did]
        for ws in (by_did, by_dids, nothing_yet):
            try:
                extra = ws.recv(timeout=0.3)
            except TimeoutError:
                continue
            raise AssertionError(f"unexpected frame {extra}")


def test_profile_events_reach_the_users_sessions(live: LiveServer, client: httpx.Client) -> None:
    owner, other = make_user(live), make_user(live)
    with feed(live, owner.token, events="user.*") as ws:
        # Another user's profile change is not this session's business; the owner's three are.
        url = f"/v1.1/users/{other.id}/properties"
        assert client.post(url, headers=other.headers, json={"properties": "x=1"}).status_code == 200
        url = f"/v1.1/users/{owner.id}/properties"
        assert client.post(url, headers=owner.headers, json={"properties": "a=1"}).status_code == 200
        assert client.put(url, headers=owner.headers, json={"properties": "a=2"}).status_code == 200
        assert client.delete(url, headers=owner.headers).status_code == 200
        data = {"uid": owner.id, "aid": owner.app.client_id, "did": None, "dtid": None}
        for _ in range(3):
            frame = recv(ws)
            assert frame["event"] == "user.profile.updated" and frame["data"] == data
            assert isinstance(frame["ts"], int)


def test_refusals_and_revocation(live: LiveServer, client: httpx.Client) -> None:
    owner, stranger = make_user(live), make_user(live)
    lamp = new_lamp(live, owner)
    with feed(live, stranger.token, did=lamp.did) as ws:
        message = "You do not have the right permission: devices"
        assert closed_with(ws) == (1008, message, [error(403, message)])
    with feed(live, "nonsense") as ws:
        message = "Please provide a valid authorization header"
        assert closed_with(ws) == (1008, message, [error(401, message)])
    with feed(live, owner.token) as ws:
        assert client.put("/revokeToken", headers=owner.headers).status_code == 200
        assert closed_with(ws) == (
            1008,
            "Session closed: token revoked",
            [error(401, "Session closed: token revoked")],
        )
