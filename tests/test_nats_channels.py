"""The live channels across two nodes over NATS (thingcloud/channels/, thingcloud/natsbus.py): two real
``thingcloud serve`` processes on one PostgreSQL database and the CI NATS server (the ``cluster``
fixture of test_nats.py), real ``websockets`` clients.

* one connection per device across nodes: a device registered on node A that registers again on
  node B leaves A's socket (told why; the other devices on that socket stay) and gets its actions on B;
* ``/events`` on node B sees the events produced on node A (device.new, connected, status.online,
  disconnected, status.offline, the availability set over REST, deleted);
* a revocation made through node B (user token revoked, share revoked, device deleted) cuts off the
  ``/live`` sessions (and the device channel) on node A.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from .factories import LAMP_MANIFEST
from .test_nats import Cluster, cluster, needs_nats, until
from .test_serve import THINGCLOUD, ServeProcess
from .test_websocket_device import closed_with, error, recv

__all__ = ["cluster"]  # the module-scoped fixture of test_nats.py, used here as well

ACTIONS = {"actions": [{"name": "setOn", "parameters": {}}]}


def ws_open(node: ServeProcess, path: str, **query: str) -> ClientConnection:
    base = node.url.replace("http://", "ws://") + path
    url = base + ("?" + str(httpx.QueryParams(query)) if query else "")
    return connect(url, open_timeout=10, close_timeout=2)


def register(ws: ClientConnection, did: str, token: str, cid: str) -> None:
    ws.send(json.dumps({"type": "register", "sdid": did, "Authorization": f"bearer {token}", "cid": cid}))
    assert recv(ws) == {"data": {"message": "OK", "code": 200, "cid": cid}}


def listed(ws: ClientConnection, cid: str) -> list[str]:
    ws.send(json.dumps({"type": "list", "cid": cid}))
    frame = recv(ws)
    assert frame["data"]["cid"] == cid, frame
    dids: list[str] = frame["data"]["message"]
    return dids


def send_action(node: ServeProcess, headers: dict[str, str], did: str) -> str:
    sent = httpx.post(f"{node.url}/v1.1/actions", headers=headers, json={"ddid": did, "data": ACTIONS})
    assert sent.status_code == 200, sent.text
    mid: str = sent.json()["data"]["mid"]
    return mid


def connected(node: ServeProcess, headers: dict[str, str], did: str) -> bool:
    response = httpx.get(f"{node.url}/v1.1/devices/{did}/presence", headers=headers)
    assert response.status_code == 200, response.text
    return bool(response.json()["data"]["connected"])


def owner_id(cluster: Cluster) -> str:
    uid: str = httpx.get(f"{cluster.a.url}/v1.1/users/self", headers=cluster.headers).json()["data"]["id"]
    return uid


# --- one connection per device across nodes -------------------------------------------------------


@needs_nats
def test_device_registered_again_on_b_leaves_a_and_gets_its_actions_there(cluster: Cluster) -> None:
    dtid = cluster.device_type(LAMP_MANIFEST)
    moving, staying = cluster.device(dtid), cluster.device(dtid)
    token = cluster.user_token()
    with ws_open(cluster.a, "/v1.1/websocket", ack="true") as on_a:
        register(on_a, moving, token, "a1")
        register(on_a, staying, token, "a2")
        with ws_open(cluster.b, "/v1.1/websocket", ack="true") as on_b:
            register(on_b, moving, cluster.device_token(moving), "b1")
            # A's socket is told why, once, and keeps its other device.
            assert recv(on_a) == error(
                409, f"Device {moving} was registered on another connection", sdid=moving
            )
            assert listed(on_a, "l1") == [staying]
            assert listed(on_b, "l2") == [moving]

            # Actions for the moved device reach B only, whichever node they are sent through;
            # the device that stayed still gets its own on A.
            for node in (cluster.a, cluster.b):
                mid = send_action(node, cluster.headers, moving)
                frame = recv(on_b)
                assert frame == {
                    "ddid": moving,
                    "mid": mid,
                    "type": "action",
                    "ts": frame["ts"],
                    "data": ACTIONS,
                }
            mid = send_action(cluster.b, cluster.headers, staying)
            assert recv(on_a)["mid"] == mid  # the first frame on A since the list: no action of `moving`
            assert connected(cluster.a, cluster.headers, moving)  # A letting go did not mark it offline

        # B's socket closed: offline now; A's socket still holds the other device.
        until(lambda: not connected(cluster.b, cluster.headers, moving))
        assert connected(cluster.b, cluster.headers, staying)
        assert listed(on_a, "l3") == [staying]
    until(lambda: not connected(cluster.a, cluster.headers, staying))


# --- /events across nodes -----------------------------------------------------------------------------


def event(frame: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    assert set(frame) == {"event", "ts", "data"} and isinstance(frame["ts"], int), frame
    return frame["event"], frame["data"]


@needs_nats
def test_events_produced_on_a_reach_an_events_socket_on_b(cluster: Cluster) -> None:
    uid = owner_id(cluster)
    dtid = cluster.device_type(LAMP_MANIFEST)
    token = cluster.user_token()
    with ws_open(cluster.b, "/v1.1/events", Authorization=f"bearer {token}", uid=uid) as events:
        did = cluster.device(dtid)  # created through A
        ids = {"uid": uid, "did": did, "dtid": dtid}
        assert event(recv(events)) == ("device.new", {**ids, "aid": None})
        device_token = cluster.device_token(did)
        with ws_open(cluster.a, "/v1.1/websocket", ack="true") as device:
            register(device, did, device_token, "r")
            assert event(recv(events)) == ("device.connected", {**ids, "aid": cluster.client_id})
            assert event(recv(events)) == ("device.status.online", {**ids, "aid": cluster.client_id})
        assert event(recv(events)) == ("device.disconnected", {**ids, "aid": cluster.client_id})
        assert event(recv(events)) == ("device.status.offline", {**ids, "aid": cluster.client_id})
        # The availability set over REST on A (PUT /devices/{did}/status), by the console app's token.
        url = f"{cluster.a.url}/v1.1/devices/{did}/status"
        put = httpx.put(url, headers=cluster.headers, json={"data": {"availability": "online"}})
        assert put.status_code == 200, put.text
        assert event(recv(events)) == ("device.status.online", {**ids, "aid": cluster.client_id})
        deleted = httpx.delete(f"{cluster.a.url}/v1.1/devices/{did}", headers=cluster.headers)
        assert deleted.status_code == 200, deleted.text
        assert event(recv(events)) == ("device.deleted", {**ids, "aid": None})


# --- revocation through B cuts off sessions on A ------------------------------------------------------


def make_friend(cluster: Cluster, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A second user (created by the CLI, a process of its own), with a token from node A."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THINGCLOUD_")}
    env.update(cluster.env, THINGCLOUD_DATA_DIR=str(tmp_path))
    email, password = f"friend-{uuid.uuid4().hex[:8]}@example.com", "friend-password-1"
    done = subprocess.run(
        [THINGCLOUD, "users", "create", "--email", email, "--password", password],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    form = {"grant_type": "password", "client_id": cluster.client_id, "username": email, "password": password}
    response = httpx.post(f"{cluster.a.url}/token", data=form)
    assert response.status_code == 200, response.text
    return email, {"Authorization": f"Bearer {response.json()['access_token']}"}


@needs_nats
def test_user_token_revoked_through_b_cuts_off_live_on_a(cluster: Cluster) -> None:
    uid = owner_id(cluster)
    token = cluster.user_token()
    headers = {"Authorization": f"Bearer {token}"}
    with (
        ws_open(cluster.a, "/v1.1/live", Authorization=f"bearer {token}", uid=uid) as by_user,
        ws_open(cluster.a, "/v1.1/live", Authorization=f"bearer {cluster.user_token()}", uid=uid) as other,
    ):
        revoked = httpx.put(f"{cluster.b.url}/revokeToken", headers=headers)
        assert revoked.status_code == 200, revoked.text
        code, reason, frames = closed_with(by_user)
        assert (code, reason) == (1008, "Session closed: token revoked")
        assert frames == [error(401, "Session closed: token revoked")]
        other.ping().wait(5)  # another token of the same user: still open
        assert other.close_code is None


@needs_nats
def test_share_revoked_through_b_cuts_off_the_friends_live_on_a(cluster: Cluster, tmp_path: Path) -> None:
    body = {"name": "Lamp", "uniqueName": f"com.example.lamp{uuid.uuid4().hex}", "published": True}
    made = httpx.post(f"{cluster.a.url}/v1.1/devicetypes", headers=cluster.headers, json=body)
    assert made.status_code == 200, made.text  # published: its devices may be shared with anyone
    dtid = made.json()["data"]["id"]
    cluster.add_manifest(dtid, LAMP_MANIFEST)
    did = cluster.device(dtid)
    email, friend = make_friend(cluster, tmp_path)
    created = httpx.post(
        f"{cluster.a.url}/v1.1/devices/{did}/shares", headers=cluster.headers, json={"email": email}
    )
    assert created.status_code == 200, created.text
    url = f"/v1.1/devices/{did}/shares/{created.json()['shareId']}"
    accepted = httpx.put(f"{cluster.a.url}{url}", headers=friend, json={"status": "ACCEPTED"})
    assert accepted.status_code == 200, accepted.text
    friend_token = friend["Authorization"].split()[1]
    owner_token = cluster.user_token()
    with (
        ws_open(cluster.a, "/v1.1/live", Authorization=f"bearer {friend_token}", sdid=did) as by_friend,
        ws_open(cluster.a, "/v1.1/live", Authorization=f"bearer {owner_token}", sdid=did) as by_owner,
    ):
        revoked = httpx.delete(f"{cluster.b.url}{url}", headers=cluster.headers)
        assert revoked.status_code == 200, revoked.text
        assert closed_with(by_friend)[:2] == (1008, "Session closed: share revoked")
        by_owner.ping().wait(5)  # the owner's session on the same device stays
        assert by_owner.close_code is None


@needs_nats
def test_device_deleted_through_b_cuts_off_live_and_the_device_channel_on_a(cluster: Cluster) -> None:
    dtid = cluster.device_type(LAMP_MANIFEST)
    did, other = cluster.device(dtid), cluster.device(dtid)
    token = cluster.user_token()
    with (
        ws_open(cluster.a, "/v1.1/live", Authorization=f"bearer {token}", sdid=did) as watcher,
        ws_open(cluster.a, "/v1.1/websocket", ack="true") as device,
    ):
        register(device, did, token, "r1")
        register(device, other, token, "r2")
        deleted = httpx.delete(f"{cluster.b.url}/v1.1/devices/{did}", headers=cluster.headers)
        assert deleted.status_code == 200, deleted.text
        assert closed_with(watcher)[:2] == (1008, "Session closed: device deleted")
        assert recv(device) == error(401, "Session closed: device deleted", sdid=did)
        assert listed(device, "l") == [other]
