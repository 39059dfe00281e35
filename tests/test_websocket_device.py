"""``GET /v1.1/websocket``, the device channel, with the real ``websockets`` client against the live
server: register rules and every error frame of REFERENCE.md §5.2, messages in through the same
ingest as REST (acked only after the commit: the row is in the database when the ack arrives),
actions out (``POST /v1.1/actions`` → action frame), one connection per device, presence and its
events, revocation cut-off, rate limits, garbage and oversized frames, many sockets opened and
dropped quickly."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from .conftest import LiveServer, start_live
from .factories import make_user
from .test_messages_ingest import Lamp, new_lamp, status_of, stored_messages

# --- client helpers (shared with test_live.py and test_events.py) -----------------------------------


def ws_url(live: LiveServer, path: str, **query: str) -> str:
    base = live.url.replace("http://", "ws://") + path
    return base + ("?" + str(httpx.QueryParams(query)) if query else "")


def open_ws(live: LiveServer, path: str, **query: str) -> ClientConnection:
    return connect(ws_url(live, path, **query), open_timeout=10, close_timeout=2)


def recv(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    """The next frame that is not a ping."""
    while True:
        frame: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
        if frame != {"type": "ping"}:
            return frame


def closed_with(ws: ClientConnection, timeout: float = 10) -> tuple[int, str, list[dict[str, Any]]]:
    """Read until the server closes; (close code, reason, frames seen before)."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            frame = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if frame != {"type": "ping"}:
                frames.append(frame)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "closed without a close frame"
        return closed.rcvd.code, closed.rcvd.reason, frames
    except TimeoutError:
        pass
    raise AssertionError(f"socket still open; frames: {frames}")


def register(ws: ClientConnection, did: str, token: str, cid: str = "r1") -> None:
    ws.send(json.dumps({"type": "register", "sdid": did, "Authorization": f"bearer {token}", "cid": cid}))


def registered(ws: ClientConnection, did: str, token: str, cid: str = "r1") -> None:
    register(ws, did, token, cid)
    assert recv(ws) == {"data": {"message": "OK", "code": 200, "cid": cid}}


def error(code: int, message: str, cid: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if cid is not None:
        body["cid"] = cid
    return {"error": {**body, **extra}}


def presence(client: httpx.Client, lamp: Lamp) -> dict[str, Any]:
    response = client.get(f"/v1.1/devices/{lamp.did}/presence", headers=lamp.owner.headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def wait_for(check: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


@pytest.fixture()
def device_ws(live: LiveServer) -> Iterator[ClientConnection]:
    with open_ws(live, "/v1.1/websocket", ack="true") as ws:
        yield ws


# --- device → cloud -----------------------------------------------------------------------------------


def test_message_is_acked_after_commit_and_stored(
    live: LiveServer, client: httpx.Client, device_ws: ClientConnection
) -> None:
    lamp = new_lamp(live)
    registered(device_ws, lamp.did, lamp.token)
    ts = live.clock.now_ms() - 1000
    device_ws.send(
        json.dumps({"sdid": lamp.did, "cid": "m1", "type": "message", "ts": ts, "data": {"temp": 21.5}})
    )
    ack = recv(device_ws)
    assert set(ack) == {"data"} and ack["data"]["cid"] == "m1"
    mid = ack["data"]["mid"]
    # The ack came after the commit: the row is there already, no waiting.
    rows = stored_messages(live, lamp.did)
    assert [(r["mid"], r["ts"], r["data"]) for r in rows] == [(mid, ts, {"temp": 21.5})]
    assert status_of(client, lamp.owner.headers, lamp.did)["lastMessageTs"] == ts


def test_user_token_registers_several_devices_and_lists_them(
    live: LiveServer, device_ws: ClientConnection
) -> None:
    owner = make_user(live)
    one = new_lamp(live, owner)
    two = new_lamp(live, owner, one.dtid)
    registered(device_ws, one.did, owner.token, "a")
    registered(device_ws, two.did, owner.token, "b")
    device_ws.send(json.dumps({"type": "list", "cid": "l"}))
    assert recv(device_ws) == {"data": {"code": 200, "message": sorted([one.did, two.did]), "cid": "l"}}
    device_ws.send(json.dumps({"sdid": two.did, "cid": "m", "data": {"state": True}}))
    assert recv(device_ws)["data"]["cid"] == "m"
    assert [r["data"] for r in stored_messages(live, two.did)] == [{"state": True}]
    device_ws.send(json.dumps({"type": "unregister", "sdid": one.did, "cid": "u"}))
    assert recv(device_ws) == {"data": {"message": "OK", "code": 200, "cid": "u"}}
    device_ws.send(json.dumps({"type": "list", "cid": "l2"}))
    assert recv(device_ws) == {"data": {"code": 200, "message": [two.did], "cid": "l2"}}
    device_ws.send(json.dumps({"sdid": one.did, "cid": "m2", "data": {"state": True}}))
    assert recv(device_ws) == error(401, "Device not registered", "m2")


def test_without_ack_messages_are_stored_silently(live: LiveServer) -> None:
    lamp = new_lamp(live)
    with open_ws(live, "/v1.1/websocket") as ws:
        register(ws, lamp.did, lamp.token)
        ws.send(json.dumps({"sdid": lamp.did, "data": {"temp": 1.0}}))
        ws.send(json.dumps({"type": "list", "cid": "l"}))
        # No register OK and no ack: the first frame is the answer to list.
        assert recv(ws) == {"data": {"code": 200, "message": [lamp.did], "cid": "l"}}
        assert wait_for(lambda: stored_messages(live, lamp.did))[0]["data"] == {"temp": 1.0}


# --- application → cloud → device ---------------------------------------------------------------------


def test_action_posted_over_rest_reaches_the_device_socket(
    live: LiveServer, client: httpx.Client, device_ws: ClientConnection
) -> None:
    lamp = new_lamp(live)
    registered(device_ws, lamp.did, lamp.token)
    response = client.post(
        "/v1.1/actions",
        headers=lamp.owner.headers,
        json={"ddid": lamp.did, "data": {"actions": [{"name": "setOn", "parameters": {}}]}},
    )
    assert response.status_code == 200, response.text
    mid = response.json()["data"]["mid"]
    frame = recv(device_ws)
    assert frame == {
        "ddid": lamp.did,
        "mid": mid,
        "type": "action",
        "ts": frame["ts"],
        "data": {"actions": [{"name": "setOn", "parameters": {}}]},
    }
    assert isinstance(frame["ts"], int)


def test_action_sent_on_the_socket_goes_to_the_other_device(live: LiveServer) -> None:
    owner = make_user(live)
    sender, target = new_lamp(live, owner), new_lamp(live, owner)
    with open_ws(live, "/v1.1/websocket", ack="true") as a, open_ws(live, "/v1.1/websocket") as b:
        registered(a, sender.did, owner.token)
        register(b, target.did, target.token)
        b.send(json.dumps({"type": "list", "cid": "l"}))
        assert recv(b)["data"]["message"] == [target.did]
        actions = {"actions": [{"name": "setOn", "parameters": {}}]}
        a.send(json.dumps({"type": "action", "ddid": target.did, "cid": "x", "data": actions}))
        mid = recv(a)["data"]["mid"]
        assert recv(b)["mid"] == mid
        a.send(json.dumps({"type": "action", "cid": "y", "data": actions}))
        assert recv(a) == error(400, "Missing ddid value", "y")


# --- register rules and error frames --------------------------------------------------------------------


def test_error_frames(live: LiveServer, device_ws: ClientConnection) -> None:
    lamp = new_lamp(live)
    other = new_lamp(live)
    ws = device_ws
    ws.send("{not json")
    assert recv(ws) == error(400, "Bad Request")
    ws.send("[1, 2]")
    assert recv(ws) == error(400, "Bad Request")
    ws.send(json.dumps({"sdid": lamp.did, "cid": "early", "data": {"temp": 1.0}}))
    assert recv(ws) == error(401, "Device not registered", "early")
    ws.send(json.dumps({"type": "register", "Authorization": f"bearer {lamp.token}", "cid": "1"}))
    assert recv(ws) == error(400, "Missing sdid value", "1")
    ws.send(json.dumps({"type": "register", "sdid": lamp.did, "cid": "2"}))
    assert recv(ws) == error(401, "Please provide a valid authorization header", "2")
    register(ws, lamp.did, "0" * 32, "3")
    assert recv(ws) == error(401, "Please provide a valid authorization header", "3")
    register(ws, other.did, lamp.token, "4")  # a device token is only good for its own device
    assert recv(ws) == error(403, "You do not have the right permission: devices", "4")
    register(ws, other.did, lamp.owner.token, "5")  # someone else's device
    assert recv(ws) == error(403, "You do not have the right permission: devices", "5")
    register(ws, "f" * 32, lamp.owner.token, "6")  # no such device
    assert recv(ws) == error(403, "You do not have the right permission: devices", "6")
    registered(ws, lamp.did, lamp.token, "7")
    ws.send(json.dumps({"cid": "8", "data": {"temp": 1.0}}))
    assert recv(ws) == error(400, "Missing sdid value", "8")
    ws.send(json.dumps({"sdid": lamp.did, "cid": "9", "ts": -5, "data": {"temp": 1.0}}))
    frame = recv(ws)
    assert frame["error"]["code"] == 400 and frame["error"]["message"] == "Invalid ts value"
    future = live.clock.now_ms() + 3_600_000
    ws.send(json.dumps({"sdid": lamp.did, "cid": "10", "ts": future, "data": {"temp": 1.0}}))
    assert recv(ws)["error"]["message"] == "Invalid ts value (in future)"
    ws.send(json.dumps({"type": "unregister", "sdid": other.did, "cid": "11"}))
    assert recv(ws) == error(401, "Device not registered", "11")
    ws.send(json.dumps({"type": "dance", "cid": "12"}))
    assert recv(ws) == error(400, "Unknown frame type", "12")
    ws.send(json.dumps({"sdid": lamp.did, "cid": "13", "data": {"x": "y" * 20_000}}))
    assert recv(ws) == error(413, "Frame exceeds 10240 bytes")
    for cid in ({"nested": 1}, [1], True, 1.5, "c" * 129):  # echoed ids are short strings or integers
        ws.send(json.dumps({"sdid": lamp.did, "cid": cid, "data": {"temp": 1.0}}))
        assert recv(ws) == error(403, "Wrong cid")
    # None of it was stored, and the socket still works.
    assert stored_messages(live, lamp.did) == []
    ws.send(json.dumps({"sdid": lamp.did, "cid": "ok", "data": {"temp": 2.0}}))
    assert recv(ws)["data"]["cid"] == "ok"
    assert [r["data"] for r in stored_messages(live, lamp.did)] == [{"temp": 2.0}]


def test_authorization_on_the_url_serves_registers_without_a_token(live: LiveServer) -> None:
    lamp, other = new_lamp(live), new_lamp(live)
    with open_ws(live, "/v1.1/websocket", ack="true", Authorization=f"bearer {lamp.token}") as ws:
        ws.send(json.dumps({"type": "register", "sdid": lamp.did, "cid": 1}))
        assert recv(ws) == {"data": {"message": "OK", "code": 200, "cid": 1}}
        # The URL's token is the device's own: it does not open another device.
        ws.send(json.dumps({"type": "register", "sdid": other.did, "cid": 2}))
        assert recv(ws) == error(403, "You do not have the right permission: devices", 2)
        # A token in the frame still wins over the URL's.
        registered(ws, other.did, other.token, "3")
        ws.send(json.dumps({"sdid": other.did, "cid": 4, "data": {"temp": 3.0}}))
        assert recv(ws)["data"]["cid"] == 4
    assert [r["data"] for r in stored_messages(live, other.did)] == [{"temp": 3.0}]


def test_write_permission_is_needed_to_register(live: LiveServer, device_ws: ClientConnection) -> None:
    from thingcloud.auth.permissions import AppPermissions

    from .factories import make_app, password_token

    owner = make_user(live)
    lamp = new_lamp(live, owner)
    read_only = make_app(live, owner.id, permissions=AppPermissions(device_types={"*": frozenset({"READ"})}))
    token = password_token(live, read_only, owner.email)["access_token"]
    register(device_ws, lamp.did, token, "ro")
    assert recv(device_ws) == error(403, "You do not have the right permission: devices", "ro")


# --- one connection per device, presence, revocation ----------------------------------------------------


def test_new_registration_replaces_only_that_device(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    one, two = new_lamp(live, owner), new_lamp(live, owner)
    with open_ws(live, "/v1.1/websocket", ack="true") as old:
        registered(old, one.did, owner.token, "a")
        registered(old, two.did, owner.token, "b")
        with open_ws(live, "/v1.1/websocket", ack="true") as new:
            registered(new, one.did, one.token, "c")
            assert recv(old) == error(
                409, f"Device {one.did} was registered on another connection", sdid=one.did
            )
            old.send(json.dumps({"type": "list", "cid": "l"}))
            assert recv(old) == {"data": {"code": 200, "message": [two.did], "cid": "l"}}
            # Actions for the moved device go to the new socket only.
            body = {"ddid": one.did, "data": {"actions": [{"name": "setOn"}]}}
            mid = client.post("/v1.1/actions", headers=owner.headers, json=body).json()["data"]["mid"]
            assert recv(new)["mid"] == mid
            old.send(json.dumps({"type": "list", "cid": "l2"}))
            assert recv(old)["data"]["cid"] == "l2"  # nothing arrived on the old socket before it
            assert presence(client, one)["connected"] is True
        assert wait_for(lambda: presence(client, one)["connected"] is False)
        assert presence(client, two)["connected"] is True


def test_presence_status_and_events(live: LiveServer, client: httpx.Client) -> None:
    from .factories import record_bus

    seen = record_bus(live, "device.>")
    lamp = new_lamp(live)
    assert presence(client, lamp)["connected"] is False
    with open_ws(live, "/v1.1/websocket", ack="true") as ws:
        registered(ws, lamp.did, lamp.token)
        assert presence(client, lamp)["connected"] is True
        assert status_of(client, lamp.owner.headers, lamp.did)["availability"] == "online"
    assert wait_for(lambda: presence(client, lamp)["connected"] is False)
    assert status_of(client, lamp.owner.headers, lamp.did)["availability"] == "offline"
    names = [
        s for s, p in seen if p.get("did") == lamp.did and s.startswith(("device.c", "device.d", "device.s"))
    ]
    assert names == [
        "device.connected",
        "device.status.online",
        "device.disconnected",
        "device.status.offline",
    ]


def test_revoked_device_token_cuts_the_socket(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    with open_ws(live, "/v1.1/websocket", ack="true") as ws:
        registered(ws, lamp.did, lamp.token)
        response = client.delete(f"/v1.1/devices/{lamp.did}/tokens", headers=lamp.owner.headers)
        assert response.status_code == 200
        code, reason, frames = closed_with(ws)
        assert (code, reason) == (1008, "Session closed: token revoked")
        assert frames == [error(401, "Session closed: token revoked")]
    assert wait_for(lambda: presence(client, lamp)["connected"] is False)


def test_deleted_device_leaves_the_socket_other_devices_stay(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    one, two = new_lamp(live, owner), new_lamp(live, owner)
    with open_ws(live, "/v1.1/websocket", ack="true") as ws:
        registered(ws, one.did, owner.token, "a")
        registered(ws, two.did, owner.token, "b")
        assert client.delete(f"/v1.1/devices/{one.did}", headers=owner.headers).status_code == 200
        assert recv(ws) == error(401, "Session closed: device deleted", sdid=one.did)
        ws.send(json.dumps({"type": "list", "cid": "l"}))
        assert recv(ws) == {"data": {"code": 200, "message": [two.did], "cid": "l"}}


# --- limits and faults --------------------------------------------------------------------------------


def test_registration_timeout_and_rate_limit(tmp_path: Path) -> None:
    server, thread = start_live(tmp_path, websocket_register_timeout=0.5, rate_limits="artik")
    try:
        with open_ws(server, "/v1.1/websocket") as idle:
            code, reason, frames = closed_with(idle, timeout=5)
            assert (code, reason, frames) == (
                1008,
                "Registration timeout",
                [error(400, "Registration timeout")],
            )
        owner = make_user(server)
        lamp = new_lamp(server, owner)
        with open_ws(server, "/v1.1/websocket", ack="true") as ws:
            registered(ws, lamp.did, lamp.token)
            # ARTIK: 1,000 websocket messages per device and minute (the clock stays in this minute).
            for i in range(1000):
                ws.send(json.dumps({"sdid": lamp.did, "cid": str(i), "data": {"temp": 1.0}}))
            answers = [recv(ws) for _ in range(1000)]
            assert all("data" in a for a in answers), [a for a in answers if "error" in a][:3]
            ws.send(json.dumps({"sdid": lamp.did, "cid": "over", "data": {"temp": 1.0}}))
            assert recv(ws) == error(429, "DEVICE MINUTE rate limit exceeded", "over")
        assert len(stored_messages(server, lamp.did)) == 1000
    finally:
        thread.stop()


def test_many_sockets_opened_and_dropped_quickly(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    host, port = live.url.removeprefix("http://").split(":")
    for i in range(200):
        if i % 2:
            # Wait for the ack: a registration still in flight when the final socket registers would
            # (rightly) take the device from it — last registration wins.
            with open_ws(live, "/v1.1/websocket", ack="true") as ws:
                registered(ws, lamp.did, lamp.token, str(i))
        else:  # a raw TCP connection that sends half a handshake and vanishes
            with socket.create_connection((host, int(port))) as raw:
                raw.sendall(b"GET /v1.1/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
    assert client.get("/healthz").status_code == 200
    with open_ws(live, "/v1.1/websocket", ack="true") as ws:
        registered(ws, lamp.did, lamp.token)
        ws.send(json.dumps({"sdid": lamp.did, "cid": "after", "data": {"temp": 3.0}}))
        assert recv(ws)["data"]["cid"] == "after"
    assert wait_for(lambda: presence(client, lamp)["connected"] is False)
