"""Several nodes over NATS (thingcloud/natsbus.py): two real ``thingcloud serve`` processes on one
PostgreSQL database and the CI NATS server, each with a subject prefix of this run; a node whose NATS is
unreachable keeps serving; the bus reconnects to a private ``nats-server`` killed and restarted.

The shared NATS server on 127.0.0.1:4222 is never stopped here (other jobs use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from thingcloud.bus import BUS_RESYNC
from thingcloud.natsbus import NatsBus
from thingcloud.settings import Settings

from .conftest import TEST_DATABASE_URL, free_port, scratch_database_url, start_live
from .factories import LAMP_MANIFEST, make_device, make_device_token, make_device_type, make_user
from .test_serve import ADMIN, THINGCLOUD, ServeProcess, console_client_id

NATS_URL = "nats://127.0.0.1:4222"
NATS_SERVER = "/usr/sbin/nats-server"
PROPAGATION_LIMIT = 1.0
"""Seconds within which another node must act on a revocation or invalidation (the caches would
otherwise keep an entry for 30-60 s)."""


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


needs_nats = pytest.mark.skipif(not reachable(4222), reason=f"no NATS server at {NATS_URL}")


def until(check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``check()`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not reached"
        time.sleep(0.005)
    return time.monotonic() - started


def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return float(sample.value)
    return 0.0


# --- Two serve processes, one PostgreSQL database, the CI NATS server -----------------------------


@dataclass
class Cluster:
    a: ServeProcess
    b: ServeProcess
    prefix: str
    headers: dict[str, str]
    """The administrator's token: works on both nodes."""
    password: str
    client_id: str
    env: dict[str, str]

    def user_token(self) -> str:
        form = {
            "grant_type": "password",
            "client_id": self.client_id,
            "username": ADMIN,
            "password": self.password,
        }
        response = httpx.post(f"{self.a.url}/token", data=form)
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    def device_type(self, manifest: dict[str, Any]) -> str:
        body = {"name": "Lamp", "uniqueName": f"com.example.lamp{uuid.uuid4().hex}"}
        response = httpx.post(f"{self.a.url}/v1.1/devicetypes", headers=self.headers, json=body)
        assert response.status_code == 200, response.text
        dtid: str = response.json()["data"]["id"]
        self.add_manifest(dtid, manifest)
        return dtid

    def add_manifest(self, dtid: str, manifest: dict[str, Any]) -> int:
        url = f"{self.a.url}/v1.1/devicetypes/{dtid}/manifests"
        response = httpx.post(url, headers=self.headers, json=manifest)
        assert response.status_code == 200, response.text
        version: int = response.json()["data"]["version"]
        return version

    def device(self, dtid: str) -> str:
        body = {"dtid": dtid, "name": "Office lamp"}
        response = httpx.post(f"{self.a.url}/v1.1/devices", headers=self.headers, json=body)
        assert response.status_code == 200, response.text
        did: str = response.json()["data"]["id"]
        return did

    def device_token(self, did: str) -> str:
        response = httpx.put(f"{self.a.url}/v1.1/devices/{did}/tokens", headers=self.headers)
        assert response.status_code == 200, response.text
        token: str = response.json()["data"]["accessToken"]
        return token


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not TEST_DATABASE_URL:
        pytest.skip("two nodes need PostgreSQL: two processes on one SQLite file is not a supported mode")
    if not reachable(4222):
        pytest.skip(f"no NATS server at {NATS_URL}")
    root = tmp_path_factory.mktemp("nats-cluster")
    prefix = f"tctest-{uuid.uuid4().hex[:12]}"
    password = "cluster-admin-password-1"
    env = {
        "THINGCLOUD_DATABASE_URL": scratch_database_url(),
        "THINGCLOUD_NATS_URL": NATS_URL,
        "THINGCLOUD_NATS_SUBJECT_PREFIX": prefix,
        "THINGCLOUD_SECRET_KEY": "cluster-secret-key-shared-by-both-nodes",
        "THINGCLOUD_ADMIN_PASSWORD": password,
        "THINGCLOUD_RATE_LIMITS": "off",
    }
    a = ServeProcess(root / "a", **env)
    try:
        a.wait_ready()
        b = ServeProcess(root / "b", **env)
        try:
            b.wait_ready()
            cluster = Cluster(a, b, prefix, {}, password, console_client_id(a.stdout), env)
            cluster.headers = {"Authorization": f"Bearer {cluster.user_token()}"}
            yield cluster
            assert a.terminate() == 0, a.stderr
            assert b.terminate() == 0, b.stderr
        finally:
            b.kill()
    finally:
        a.kill()


def post_message(url: str, token: str, data: dict[str, Any], sdid: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"data": data}
    if sdid is not None:
        body["sdid"] = sdid
    return httpx.post(f"{url}/v1.1/messages", headers={"Authorization": f"Bearer {token}"}, json=body)


@needs_nats
def test_device_token_regenerated_on_a_is_refused_by_b_at_once(cluster: Cluster) -> None:
    did = cluster.device(cluster.device_type(LAMP_MANIFEST))
    old = cluster.device_token(did)
    assert post_message(cluster.b.url, old, {"state": True}).status_code == 200  # cached on B

    new = cluster.device_token(did)  # PUT /devices/{did}/tokens on A: regenerate

    waited = until(lambda: post_message(cluster.b.url, old, {"state": True}).status_code == 401)
    assert waited < PROPAGATION_LIMIT
    refused = post_message(cluster.b.url, old, {"state": True})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == 401
    assert post_message(cluster.b.url, new, {"state": False}).status_code == 200


@needs_nats
def test_user_token_revoked_on_a_is_refused_by_b_at_once(cluster: Cluster) -> None:
    token = cluster.user_token()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{cluster.b.url}/v1.1/users/self", headers=headers).status_code == 200  # cached

    revoked = httpx.put(f"{cluster.a.url}/revokeToken", headers=headers)
    assert revoked.status_code == 200, revoked.text

    waited = until(lambda: httpx.get(f"{cluster.b.url}/v1.1/users/self", headers=headers).status_code == 401)
    assert waited < PROPAGATION_LIMIT
    assert httpx.get(f"{cluster.b.url}/v1.1/users/self", headers=cluster.headers).status_code == 200


@needs_nats
def test_device_deleted_on_a_is_refused_by_ingest_on_b_at_once(cluster: Cluster) -> None:
    dtid = cluster.device_type(LAMP_MANIFEST)
    did = cluster.device(dtid)
    uid = httpx.get(f"{cluster.a.url}/v1.1/users/self", headers=cluster.headers).json()["data"]["id"]
    token = cluster.user_token()  # the owner's token stays valid: only B's device cache is in question
    assert post_message(cluster.b.url, token, {"state": True}, sdid=did).status_code == 200

    subject = f"{cluster.prefix}.device.deleted"
    listener = NatsListener([subject])
    try:
        deleted = httpx.delete(f"{cluster.a.url}/v1.1/devices/{did}", headers=cluster.headers)
        assert deleted.status_code == 200, deleted.text

        waited = until(
            lambda: post_message(cluster.b.url, token, {"state": True}, sdid=did).status_code == 404
        )
        assert waited < PROPAGATION_LIMIT
        refused = post_message(cluster.b.url, token, {"state": True}, sdid=did)
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == 404
        until(lambda: len(listener.received) == 1)  # what every node heard
        assert listener.on(subject) == [{"did": did, "uid": uid, "dtid": dtid}]
    finally:
        listener.close()


@needs_nats
def test_user_deleted_by_the_cli_is_refused_by_the_nodes_at_once(cluster: Cluster, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THINGCLOUD_")}
    env.update(cluster.env, THINGCLOUD_DATA_DIR=str(tmp_path))
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"

    def cli(*args: str) -> None:
        done = subprocess.run([THINGCLOUD, "users", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    cli("create", "--email", email, "--password", "cli-password-1")
    form = {"grant_type": "password", "client_id": cluster.client_id, "username": email}
    response = httpx.post(f"{cluster.a.url}/token", data={**form, "password": "cli-password-1"})
    assert response.status_code == 200, response.text
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    for node in (cluster.a, cluster.b):  # cached on both
        assert httpx.get(f"{node.url}/v1.1/users/self", headers=headers).status_code == 200

    cli("delete", "--email", email)  # a process of its own: it reaches the nodes through NATS

    for url in (cluster.a.url, cluster.b.url):
        waited = until(lambda u=url: httpx.get(f"{u}/v1.1/users/self", headers=headers).status_code == 401)
        assert waited < PROPAGATION_LIMIT


class NatsListener:
    """A test-only subscriber straight on NATS, in a thread of its own."""

    def __init__(self, subjects: list[str]) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(subjects),))
        self._subscribed = threading.Event()
        self._thread.start()
        assert self._subscribed.wait(10), "listener did not subscribe"

    async def _run(self, subjects: list[str]) -> None:
        self._stop = asyncio.Event()
        client = await nats.connect(NATS_URL)

        async def record(msg: Any) -> None:
            self.received.append((msg.subject, orjson.loads(msg.data)))

        for subject in subjects:
            await client.subscribe(subject, cb=record)
        await client.flush()
        self._subscribed.set()
        await self._stop.wait()
        await client.close()

    def close(self) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def on(self, subject: str) -> list[dict[str, Any]]:
        return [payload for s, payload in list(self.received) if s == subject]


@needs_nats
def test_message_ingested_on_b_reaches_nats_and_node_a(cluster: Cluster) -> None:
    did = cluster.device(cluster.device_type(LAMP_MANIFEST))
    token = cluster.device_token(did)
    subject = f"{cluster.prefix}.message.{did}"
    listener = NatsListener([subject, f"{cluster.prefix}.feed.appended"])
    try:
        received_on_a = metric(cluster.a.url, "thingcloud_bus_received_total")
        sent = post_message(cluster.b.url, token, {"state": True, "temp": 21.5})
        assert sent.status_code == 200, sent.text
        mid = sent.json()["data"]["mid"]

        until(lambda: len(listener.on(subject)) == 1)
        (message,) = listener.on(subject)
        assert message["mid"] == mid
        assert message["sdid"] == did
        assert message["data"] == {"state": True, "temp": 21.5}
        assert message["mv"] == 1
        until(lambda: len(listener.on(f"{cluster.prefix}.feed.appended")) >= 1)  # the feed doorbell
        # Node A received B's publishes (its feed doorbell and caches subscribe to them).
        until(lambda: metric(cluster.a.url, "thingcloud_bus_received_total") > received_on_a)
    finally:
        listener.close()


@needs_nats
def test_message_ingested_on_b_reaches_a_live_socket_on_a(cluster: Cluster) -> None:
    did = cluster.device(cluster.device_type(LAMP_MANIFEST))
    token = cluster.device_token(did)
    query = httpx.QueryParams({"Authorization": f"bearer {token}"})
    url = f"{cluster.a.url.replace('http://', 'ws://')}/v1.1/live?{query}"
    with connect(url, open_timeout=10, close_timeout=2) as ws:
        sent: list[str] = []
        frame: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while not frame:  # the socket's subscription may follow the handshake: send until one arrives
            assert time.monotonic() < deadline, "no frame on node A"
            response = post_message(cluster.b.url, token, {"temp": float(len(sent))})
            assert response.status_code == 200, response.text
            sent.append(response.json()["data"]["mid"])
            with contextlib.suppress(TimeoutError):
                while not frame:
                    received = json.loads(ws.recv(timeout=0.5))
                    if received != {"type": "ping"}:
                        frame = received
    assert frame["mid"] in sent
    assert frame["sdid"] == did
    assert frame["data"] == {"temp": float(sent.index(frame["mid"]))}


@needs_nats
def test_token_regenerated_through_b_cuts_off_a_live_socket_on_a(cluster: Cluster) -> None:
    did = cluster.device(cluster.device_type(LAMP_MANIFEST))
    token = cluster.device_token(did)
    query = httpx.QueryParams({"Authorization": f"bearer {token}"})
    with connect(f"{cluster.a.url.replace('http://', 'ws://')}/v1.1/live?{query}", open_timeout=10) as ws:
        renewed = httpx.put(f"{cluster.b.url}/v1.1/devices/{did}/tokens", headers=cluster.headers)
        assert renewed.status_code == 200, renewed.text
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
        assert time.monotonic() - started < PROPAGATION_LIMIT
        assert (ws.close_code, ws.close_reason) == (1008, "Session closed: token revoked")


@needs_nats
def test_action_sent_through_b_reaches_the_device_connected_to_a(cluster: Cluster) -> None:
    did = cluster.device(cluster.device_type(LAMP_MANIFEST))
    token = cluster.device_token(did)
    with connect(
        f"{cluster.a.url.replace('http://', 'ws://')}/v1.1/websocket?ack=true", open_timeout=10
    ) as ws:
        register = {"type": "register", "sdid": did, "Authorization": f"bearer {token}", "cid": "r"}
        ws.send(json.dumps(register))
        assert json.loads(ws.recv(timeout=10)) == {"data": {"message": "OK", "code": 200, "cid": "r"}}

        actions = {"actions": [{"name": "setOn", "parameters": {}}]}
        sent = httpx.post(
            f"{cluster.b.url}/v1.1/actions", headers=cluster.headers, json={"ddid": did, "data": actions}
        )
        assert sent.status_code == 200, sent.text
        frame = json.loads(ws.recv(timeout=10))
        while frame == {"type": "ping"}:
            frame = json.loads(ws.recv(timeout=10))
    assert frame == {
        "ddid": did,
        "mid": sent.json()["data"]["mid"],
        "type": "action",
        "ts": frame["ts"],
        "data": actions,
    }


@needs_nats
def test_manifest_version_added_on_a_is_used_by_b_at_once(cluster: Cluster) -> None:
    dtid = cluster.device_type({"fields": [{"name": "temp", "valueClass": "Double"}]})
    did = cluster.device(dtid)
    token = cluster.device_token(did)
    subject = f"{cluster.prefix}.message.{did}"
    listener = NatsListener([subject])
    try:
        assert post_message(cluster.b.url, token, {"temp": 1.0, "humidity": 40.0}).status_code == 200
        until(lambda: len(listener.on(subject)) == 1)
        assert listener.on(subject)[0]["mv"] == 1  # B now caches 1 as the latest version
        assert listener.on(subject)[0]["data"] == {"temp": 1.0}

        fields = [{"name": "temp", "valueClass": "Double"}, {"name": "humidity", "valueClass": "Double"}]
        assert cluster.add_manifest(dtid, {"fields": fields}) == 2

        def stored_with_v2() -> bool:
            assert post_message(cluster.b.url, token, {"temp": 2.0, "humidity": 41.0}).status_code == 200
            until(lambda: len(listener.on(subject)) >= 2)
            return bool(listener.on(subject)[-1]["mv"] == 2)

        assert until(stored_with_v2) < PROPAGATION_LIMIT
        assert listener.on(subject)[-1]["data"] == {"temp": 2.0, "humidity": 41.0}
    finally:
        listener.close()


# --- NATS unreachable: the node serves, counts what others miss ----------------------------------


def test_node_serves_while_nats_is_unreachable(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    live, thread = start_live(tmp_path, nats_url=f"nats://127.0.0.1:{closed}", nats_subject_prefix="outage")
    try:
        user = make_user(live)
        did = make_device(live, user.headers, make_device_type(live, user.id))["id"]
        token = make_device_token(live, user, did)
        failures = {
            label: metric(live.url, "thingcloud_bus_publish_failures_total", {"subject": label})
            for label in ("message", "token")
        }
        assert metric(live.url, "thingcloud_bus_connected") == 0.0

        sent = post_message(live.url, token, {"state": True})
        assert sent.status_code == 200, sent.text
        mid = sent.json()["data"]["mid"]
        stored = httpx.get(
            f"{live.url}/v1.1/messages", headers=user.headers, params={"mid": mid, "sdid": did}
        )
        assert stored.status_code == 200, stored.text
        assert [m["mid"] for m in stored.json()["data"]] == [mid]
        assert metric(live.url, "thingcloud_bus_publish_failures_total", {"subject": "message"}) == (
            failures["message"] + 1
        )

        # A revocation still takes effect on this node at once: local delivery needs no NATS.
        new = make_device_token(live, user, did)
        assert post_message(live.url, token, {"state": True}).status_code == 401
        assert post_message(live.url, new, {"state": True}).status_code == 200
        assert metric(live.url, "thingcloud_bus_publish_failures_total", {"subject": "token"}) == (
            failures["token"] + 1
        )
        assert httpx.get(f"{live.url}/readyz").status_code == 200
    finally:
        thread.stop()


# --- Reconnecting: a private nats-server killed and restarted on the same port --------------------


class PrivateNats:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        until(lambda: reachable(self.port), timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


async def wait_for(check: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.mark.skipif(not Path(NATS_SERVER).exists(), reason=f"{NATS_SERVER} is not installed")
def test_bus_reconnects_after_the_nats_server_restarts() -> None:
    server = PrivateNats()
    server.start()

    async def scenario() -> None:
        prefix = f"tctest-{uuid.uuid4().hex[:12]}"
        a = NatsBus(server.url, prefix, reconnect_wait=0.2)
        b = NatsBus(server.url, prefix, reconnect_wait=0.2)
        stranger = NatsBus(server.url, "another-cloud", reconnect_wait=0.2)
        received: list[tuple[str, dict[str, Any]]] = []
        resyncs: list[str] = []
        others: list[str] = []

        async def record(subject: str, payload: dict[str, Any]) -> None:
            received.append((subject, payload))

        async def resynced(subject: str, _payload: dict[str, Any]) -> None:
            resyncs.append(subject)

        async def foreign(subject: str, _payload: dict[str, Any]) -> None:
            others.append(subject)

        for bus in (a, b, stranger):
            await bus.start()
        try:
            assert a.connected and b.connected
            await a.subscribe("device.*", record)
            await a.subscribe(BUS_RESYNC, resynced)
            await stranger.subscribe(">", foreign)

            await b.publish("device.deleted", {"did": "1"})
            await wait_for(lambda: len(received) == 1)
            assert received == [("device.deleted", {"did": "1"})]
            await a.publish("device.updated", {"did": "own"})  # delivered inline, once (no echo)
            assert received[-1] == ("device.updated", {"did": "own"})
            await b.publish("device.status.online", {"did": "x"})  # `*` is one token: not delivered
            await b.publish("device.deleted", {"did": "1b"})  # NATS keeps a publisher's order
            await wait_for(lambda: received[-1] == ("device.deleted", {"did": "1b"}))
            assert [p["did"] for _, p in received] == ["1", "own", "1b"]

            server.kill()
            await wait_for(lambda: not a.connected and not b.connected)
            await b.publish("device.deleted", {"did": "during"})  # buffered or dropped, never raised
            await a.publish("device.updated", {"did": "local"})  # this node's own still arrive
            assert received[-1] == ("device.updated", {"did": "local"})
            assert resyncs == []

            server.start()
            await wait_for(lambda: a.connected and b.connected)
            await wait_for(lambda: resyncs == [BUS_RESYNC])  # caches told to drop what they hold
            received.clear()
            await b.publish("device.deleted", {"did": "2"})
            await wait_for(lambda: ("device.deleted", {"did": "2"}) in received)
            assert others == [BUS_RESYNC]  # its own reconnect only: another prefix is another cloud
            assert a.publish_failures == 0 and b.publish_failures == 0
        finally:
            for bus in (a, b, stranger):
                await bus.close()

    try:
        asyncio.run(scenario())
    finally:
        server.kill()


def test_publish_never_waits_for_a_server_that_stopped_reading() -> None:
    """A NATS server that accepted the connection, then stopped reading: publishes beyond the buffer
    are dropped and counted at once, instead of waiting for the socket to drain."""

    async def scenario() -> None:
        stalled = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b'INFO {"server_id":"stalled","version":"2.10.0","max_payload":1048576}\r\n')
            await writer.drain()
            while b"PING" not in await reader.readline():  # CONNECT, then PING
                pass
            writer.write(b"PONG\r\n")
            await writer.drain()
            stalled.set()
            await asyncio.sleep(3600)  # never reads again

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        bus = NatsBus(f"nats://127.0.0.1:{port}", "stalled")
        try:
            await bus.start()
            await asyncio.wait_for(stalled.wait(), 5)
            assert bus.connected
            payload = {"blob": "x" * 16_000}
            started = time.monotonic()
            for _ in range(2_000):  # 32 MB: far more than the socket buffers and PENDING_BYTES
                await bus.publish("message.d1", payload)
            assert time.monotonic() - started < 5.0
            assert bus.publish_failures > 1_000
        finally:
            await bus.close()
            server.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("prefix", ["", "a.*", "a.>", "two words", "a..b", ".a"])
def test_subject_prefix_must_be_plain_tokens(prefix: str) -> None:
    with pytest.raises(ValidationError, match="nats_subject_prefix"):
        Settings(nats_subject_prefix=prefix)
    assert Settings(nats_subject_prefix="acme.cloud-2").nats_subject_prefix == "acme.cloud-2"
