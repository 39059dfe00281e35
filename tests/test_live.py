"""``GET /v1.1/live``, the firehose, with the real ``websockets`` client: frames are the stored
normalized messages (plus their resume cursor), filters by device, device type and user, permission
refusals, resume with ``since=`` while messages keep flowing (no gap, no duplicate), revocation
cut-off, pings, a slow consumer disconnected once its queue is full, and tokens kept out of logs."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from thingcloud.areas.users import service as users

from .conftest import LiveServer, start_live
from .factories import make_device_type, make_user
from .test_messages_ingest import new_lamp, stored_messages
from .test_shares import share
from .test_websocket_device import closed_with, error, open_ws, recv, wait_for, ws_url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"bearer {token}"}


def post(client: httpx.Client, token: str, did: str, data: dict[str, Any]) -> str:
    response = client.post("/v1.1/messages", headers=bearer(token), json={"sdid": did, "data": data})
    assert response.status_code == 200, response.text
    mid: str = response.json()["data"]["mid"]
    return mid


def firehose(live: LiveServer, token: str, **query: str) -> Any:
    return open_ws(live, "/v1.1/live", Authorization=f"bearer {token}", **query)


def test_frames_are_the_stored_messages_with_a_cursor(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    with firehose(live, lamp.token) as ws:  # a device token watches itself
        ws.send("garbage: the firehose is read-only and ignores what clients send")
        ws.send(b"\x00" * 100_000)
        mid = post(client, lamp.token, lamp.did, {"temp": 20.5, "ignored": 1})
        frame = recv(ws)
    row = stored_messages(live, lamp.did)[0]
    assert frame == {
        "mid": mid,
        "sdid": lamp.did,
        "sdtid": lamp.dtid,
        "uid": lamp.owner.id,
        "ts": row["ts"],
        "cts": row["cts"],
        "mv": 1,
        "data": row["data"],
        "cursor": frame["cursor"],
    }
    assert frame["cursor"].isdigit()


def test_filters(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    friend = make_user(live)
    a = new_lamp(live, owner)
    b = new_lamp(live, owner, a.dtid)
    other_type = new_lamp(live, owner)
    theirs = new_lamp(live, friend)
    share_id = share(client, friend, theirs.did, email=owner.email).json()["shareId"]
    accepted = client.put(
        f"/v1.1/devices/{theirs.did}/shares/{share_id}", headers=owner.headers, json={"status": "ACCEPTED"}
    )
    assert accepted.status_code == 200
    with (
        firehose(live, owner.token, sdid=a.did) as one,
        firehose(live, owner.token, sdids=f"{a.did},{b.did}") as two,
        firehose(live, owner.token, sdtids=a.dtid, uid=owner.id) as by_type,
        firehose(live, owner.token, uid=owner.id) as mine,
        firehose(live, owner.token, uid=owner.id, includeSharedDevices="true") as with_shared,
    ):
        mids = {
            name: post(client, lamp.token, lamp.did, {"temp": 1.0})
            for name, lamp in (("a", a), ("b", b), ("other", other_type), ("theirs", theirs))
        }
        # A device created after the session opened belongs to the user's firehose as well.
        late = new_lamp(live, owner, a.dtid)
        time.sleep(0.3)
        mids["late"] = post(client, late.token, late.did, {"temp": 1.0})
        expected = {
            one: ["a"],
            two: ["a", "b"],
            by_type: ["a", "b", "late"],
            mine: ["a", "b", "other", "late"],
            with_shared: ["a", "b", "other", "theirs", "late"],
        }
        for ws, names in expected.items():
            got = [recv(ws)["mid"] for _ in names]
            assert got == [mids[n] for n in names]
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0.3)


def test_device_shared_after_connecting_joins_the_shared_firehose(
    live: LiveServer, client: httpx.Client
) -> None:
    owner, friend = make_user(live), make_user(live)
    theirs = new_lamp(live, friend)
    with (
        firehose(live, owner.token, uid=owner.id, includeSharedDevices="true") as with_shared,
        firehose(live, owner.token, uid=owner.id) as mine,
    ):
        share_id = share(client, friend, theirs.did, email=owner.email).json()["shareId"]
        url = f"/v1.1/devices/{theirs.did}/shares/{share_id}"
        assert client.put(url, headers=owner.headers, json={"status": "ACCEPTED"}).status_code == 200
        time.sleep(0.3)
        mid = post(client, theirs.token, theirs.did, {"temp": 1.0})
        assert recv(with_shared)["mid"] == mid
        with pytest.raises(TimeoutError):
            mine.recv(timeout=0.3)


def test_refusals(live: LiveServer) -> None:
    owner = make_user(live)
    stranger = make_user(live)
    lamp = new_lamp(live, owner)
    cases = [
        (firehose(live, stranger.token, sdid=lamp.did), 403, "You do not have the right permission: devices"),
        (
            firehose(live, stranger.token, uid=owner.id),
            403,
            f"You do not have the right permission: 'user' ['{owner.id}']",
        ),
        (firehose(live, "0" * 32, sdid=lamp.did), 401, "Please provide a valid authorization header"),
        (open_ws(live, "/v1.1/live", sdid=lamp.did), 401, "Please provide a valid authorization header"),
        (
            firehose(live, lamp.token, sdtids=lamp.dtid),
            400,
            "sdtids and uid are not allowed with a device token",
        ),
        (firehose(live, owner.token, sdid="f" * 32), 404, f"Device {'f' * 32} not found"),
        (firehose(live, owner.token, since="yesterday"), 400, "Invalid since value"),
    ]
    for ws, code, message in cases:
        with ws:
            closing = closed_with(ws)
        assert closing == (1008, message, [error(code, message)])


def test_resume_without_gap_or_duplicate_while_messages_flow(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    sent: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        with live.client() as c:
            while not stop.is_set() and len(sent) < 400:
                sent.append(post(c, lamp.token, lamp.did, {"temp": float(len(sent))}))

    received: list[dict[str, Any]] = []
    with firehose(live, lamp.owner.token, sdid=lamp.did) as ws:
        producer = threading.Thread(target=produce)
        producer.start()
        while len(received) < 20:
            received.append(recv(ws))

    def more_sent(count: int) -> int:
        """Wait (by count, not by time: a loaded machine posts slowly) until ``count`` more were sent."""
        target, deadline = len(sent) + count, time.monotonic() + 30
        while len(sent) < target and producer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(sent)

    # Disconnected while the producer keeps going; resume from the last cursor seen.
    while_away = more_sent(10)
    cursor = received[-1]["cursor"]
    with firehose(live, lamp.owner.token, sdid=lamp.did, since=cursor) as ws:
        after_resume = more_sent(10)
        stop.set()
        producer.join()
        while len(received) < len(sent):
            received.append(recv(ws))
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.5)
    mids = [f["mid"] for f in received]
    assert mids == sent  # every message once, in commit order
    cursors = [int(f["cursor"]) for f in received]
    assert cursors == sorted(set(cursors))
    # Messages flowed while away and after the resume (the seam was crossed under load).
    assert len(received) > 20 and while_away >= 30 and after_resume >= while_away + 10


def test_resume_from_a_trimmed_cursor_says_so(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    mid = post(client, lamp.token, lamp.did, {"temp": 1.0})
    with firehose(live, lamp.token, since="0") as ws:
        first = recv(ws)
        if first.get("type") == "gap":  # older entries were trimmed by another test: said first
            assert first["cursor"] == "0" and int(first["through"]) >= 1
        frames = [first] if "mid" in first else []
        while not frames or frames[-1]["mid"] != mid:
            frames.append(recv(ws))
        assert [f["mid"] for f in frames if f["sdid"] == lamp.did] == [mid]


def test_revocation_cuts_off_live_sessions(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    friend = make_user(live)
    lamp = new_lamp(live, owner)
    share_id = share(client, owner, lamp.did, email=friend.email).json()["shareId"]
    url = f"/v1.1/devices/{lamp.did}/shares/{share_id}"
    assert client.put(url, headers=friend.headers, json={"status": "ACCEPTED"}).status_code == 200
    with (
        firehose(live, owner.token, uid=owner.id) as by_user,
        firehose(live, friend.token, sdid=lamp.did) as by_friend,
        firehose(live, lamp.token) as by_device,
    ):
        assert client.delete(url, headers=owner.headers).status_code == 200
        assert closed_with(by_friend)[:2] == (1008, "Session closed: share revoked")
        assert client.put(f"/v1.1/devices/{lamp.did}/tokens", headers=owner.headers).status_code == 200
        assert closed_with(by_device)[:2] == (1008, "Session closed: token revoked")
        assert client.put("/revokeToken", headers=owner.headers).status_code == 200
        assert closed_with(by_user)[:2] == (1008, "Session closed: token revoked")


def test_user_deletion_cuts_off(live: LiveServer) -> None:
    owner = make_user(live)
    lamp = new_lamp(live, owner)
    with firehose(live, owner.token, sdid=lamp.did) as ws:

        async def work(rt: Any) -> Any:
            return await users.delete_user(rt, owner.email)

        live.call(work)
        code, reason, _ = closed_with(ws)
        assert code == 1008 and reason.startswith("Session closed: ")


def test_ping_slow_consumer_and_no_token_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server, thread = start_live(
        tmp_path, channel_ping_interval=0.2, channel_send_queue=4, max_message_bytes=1_000_000
    )
    try:
        owner = make_user(server)
        dtid = make_device_type(
            server,
            owner.id,
            documents=[{"fields": [{"name": "blob", "valueClass": "String"}], "actions": []}],
        )
        lamp = new_lamp(server, owner, dtid)
        with (
            caplog.at_level(logging.INFO, logger="uvicorn.error"),
            firehose(server, owner.token, sdid=lamp.did) as ws,
        ):
            assert json.loads(ws.recv(timeout=5)) == {"type": "ping"}
        assert "WebSocket /v1.1/live?" in caplog.text
        assert owner.token not in caplog.text

        # A client that stops reading (small receive buffer, and it never calls recv).
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", server.settings.port))
        url = ws_url(server, "/v1.1/live", Authorization=f"bearer {owner.token}", sdid=lamp.did)
        # No compression: the blobs must really fill the socket buffers.
        with (
            connect(url, sock=raw, max_queue=1, open_timeout=10, compression=None) as slow,
            server.client() as c,
        ):
            blob = "x" * 500_000
            hub = server.app.state.channels
            for _ in range(60):
                post(c, owner.token, lamp.did, {"blob": blob})
                if not any(s.kind == "live" and not s.finished.is_set() for s in hub.sessions):
                    break
            # Disconnected although it never read: the server's buffer for it stayed bounded.
            assert wait_for(lambda: not any(s.kind == "live" for s in hub.sessions))
            code, reason, frames = closed_with(slow, timeout=30)
            assert (code, reason) == (1013, "Slow consumer: send queue full")
            assert 1 <= len(frames) < 60
    finally:
        thread.stop()


def test_resume_backlog_larger_than_the_send_queue(tmp_path: Path) -> None:
    """Catch-up waits for a slow client (small queue, big frames) while new messages keep arriving:
    those that overflow the waiting list are read again from the feed, none is lost or repeated."""
    server, thread = start_live(tmp_path, channel_send_queue=4, max_message_bytes=1_000_000)
    try:
        owner = make_user(server)
        blob_type = {"fields": [{"name": "blob", "valueClass": "String"}], "actions": []}
        lamp = new_lamp(server, owner, make_device_type(server, owner.id, documents=[blob_type]))
        blob = "y" * 200_000
        with server.client() as c:
            backlog = [post(c, lamp.token, lamp.did, {"blob": blob}) for _ in range(40)]
        more: list[str] = []

        def produce() -> None:
            with server.client() as c:
                for _ in range(40):
                    more.append(post(c, lamp.token, lamp.did, {"blob": blob}))

        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", server.settings.port))
        url = ws_url(server, "/v1.1/live", Authorization=f"bearer {lamp.token}", since="0")
        with connect(url, sock=raw, max_queue=1, open_timeout=10, compression=None) as ws:
            producer = threading.Thread(target=produce)
            producer.start()
            producer.join()  # all sent while the client had read nothing
            got = [recv(ws, timeout=30)["mid"] for _ in range(80)]
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0.3)
        assert got == backlog + more
    finally:
        thread.stop()


def test_many_sessions_opened_and_dropped_leave_nothing_behind(
    live: LiveServer, client: httpx.Client
) -> None:
    lamp = new_lamp(live)
    hub = live.app.state.channels
    for i in range(100):
        with firehose(live, lamp.owner.token, sdid=lamp.did) if i % 2 else open_ws(live, "/v1.1/events"):
            pass
    assert wait_for(lambda: not hub.sessions and not hub.live)
    assert hub.tail is None  # no /live session: the feed is not followed
    with firehose(live, lamp.owner.token, sdid=lamp.did) as ws:
        mid = post(client, lamp.token, lamp.did, {"temp": 4.0})
        assert recv(ws)["mid"] == mid


def test_server_shutdown_closes_open_sessions(tmp_path: Path) -> None:
    server, thread = start_live(tmp_path)
    lamp = new_lamp(server)
    with firehose(server, lamp.token) as live_ws, open_ws(server, "/v1.1/websocket", ack="true") as device:
        stopping = threading.Thread(target=thread.stop)
        started = time.monotonic()
        stopping.start()
        assert closed_with(live_ws)[0] in (1001, 1012)
        assert closed_with(device)[0] in (1001, 1012)
        stopping.join()
        assert time.monotonic() - started < 10
