"""The MQTT endpoint (REFERENCE.md §5.3) with the real paho-mqtt client (and raw sockets where the
exact bytes matter) against live servers on free ports: publish → stored (PUBACK only after the
commit, also across a SIGKILL) and on ``/live``; ``POST /actions`` → the actions topic; the errors
topic (413, 400, 403, 429); refused credentials and topics; malformed packets; one connection per
device across MQTT and ``/websocket``; revocation cut-off; a taken port; two nodes over NATS."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from thingcloud import tables as t
from thingcloud.channels.mqtt import packets

from .conftest import TEST_DATABASE_URL, LiveServer, free_port, scratch_database_url, start_live
from .factories import LAMP_MANIFEST, make_user
from .test_messages_ingest import new_lamp, stored_messages
from .test_nats import NATS_URL, Cluster, reachable
from .test_serve import ServeProcess, console_client_id, password_grant
from .test_websocket_device import open_ws, presence, recv, registered, wait_for


def actions_topic(did: str) -> str:
    return f"/v1.1/actions/{did}"


def errors_topic(did: str) -> str:
    return f"/v1.1/errors/{did}"


def messages_topic(did: str) -> str:
    return f"/v1.1/messages/{did}"


class Device:
    """A paho-mqtt client connected as one device; what arrives lands in ``inbox``."""

    def __init__(self, port: int, did: str, token: str, subscribe: bool = True) -> None:
        self.did = did
        self.inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.connected: queue.Queue[int] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.gone = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"t-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,  # a replaced or cut-off device stays away
        )
        self.client.username_pw_set(did, token)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connected.put(rc.value)
        self.client.on_message = lambda _c, _u, m: self.inbox.put((m.topic, json.loads(m.payload)))
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.subacks.put([c.value for c in codes])
        self.client.on_disconnect = lambda *_: self.gone.set()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.connected.get(timeout=10) == 0
        if subscribe:
            assert self.subscribe(actions_topic(did), errors_topic(did)) == [0, 0]

    def subscribe(self, *topics: str) -> list[int]:
        self.client.subscribe([(topic, 0) for topic in topics])
        return self.subacks.get(timeout=10)

    def publish(self, payload: Any, qos: int = 1, topic: str | None = None) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.client.publish(topic or messages_topic(self.did), raw, qos=qos)
        if qos:
            info.wait_for_publish(timeout=10)
            assert info.is_published(), "no PUBACK"

    def next(self, timeout: float = 10) -> tuple[str, Any]:
        return self.inbox.get(timeout=timeout)

    def nothing_more(self, wait: float = 0.3) -> None:
        with pytest.raises(queue.Empty):
            self.inbox.get(timeout=wait)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def mqtt_port(live: LiveServer) -> int:
    return live.settings.mqtt_port


def raw_connect(port: int, did: str, token: str, level: int = 4) -> tuple[socket.socket, bytes]:
    """A CONNECT sent on a plain socket; the socket and the CONNACK bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    packet = packets.connect("raw", did, token)
    if level != 4:
        packet = packet.replace(b"MQTT\x04", b"MQTT" + bytes((level,)), 1)
    sock.sendall(packet)
    return sock, read_exactly(sock, 4)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def without_id(item: tuple[str, Any]) -> tuple[str, Any]:
    topic, body = item
    assert len(body["error"].pop("id")) == 32
    return topic, body


# --- device → cloud -------------------------------------------------------------------------------------


def test_publish_is_acked_after_commit_stored_and_live(live: LiveServer) -> None:
    lamp = new_lamp(live)
    firehose = open_ws(live, "/v1.1/live", sdid=lamp.did, Authorization=f"bearer {lamp.owner.token}")
    with firehose, Device(mqtt_port(live), lamp.did, lamp.token) as device:
        device.publish({"temp": 21.5, "state": True})
        # The PUBACK came after the commit: the row is there already, no waiting.
        rows = stored_messages(live, lamp.did)
        assert [r["data"] for r in rows] == [{"temp": 21.5, "state": True}]
        frame = recv(firehose)
        assert (frame["sdid"], frame["mid"], frame["data"]) == (lamp.did, rows[0]["mid"], rows[0]["data"])
        device.publish({"temp": 3.0}, qos=0)
        assert wait_for(lambda: len(stored_messages(live, lamp.did)) == 2)
        assert recv(firehose)["data"] == {"temp": 3.0}
        device.nothing_more()


def test_action_posted_over_rest_reaches_the_actions_topic(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    with Device(mqtt_port(live), lamp.did, lamp.token) as device:
        body = {"ddid": lamp.did, "data": {"actions": [{"name": "setOn", "parameters": {}}]}}
        response = client.post("/v1.1/actions", headers=lamp.owner.headers, json=body)
        assert response.status_code == 200, response.text
        assert device.next() == (actions_topic(lamp.did), [{"name": "setOn", "parameters": {}}])


def test_errors_topic_and_refused_topics(live: LiveServer) -> None:
    lamp, other = new_lamp(live), new_lamp(live)
    with Device(mqtt_port(live), lamp.did, lamp.token) as device:
        device.publish(b"x" * 1025)
        assert without_id(device.next()) == (
            errors_topic(lamp.did),
            error(413, f"Plan quota exceeded for device {lamp.did}. Reason: Max payload Size limit"),
        )
        device.publish(b"{not json")
        assert without_id(device.next()) == (errors_topic(lamp.did), error(400, "Bad Request"))
        device.publish(b"[1, 2]")
        assert without_id(device.next()) == (errors_topic(lamp.did), error(400, "Bad Request"))
        device.publish({"temp": "warm"})  # the manifest says Double
        topic, body = device.next()
        assert (topic, body["error"]["code"]) == (errors_topic(lamp.did), 400)
        device.publish({"temp": 1.0}, topic=messages_topic(other.did))
        forbidden = error(403, "You do not have publish permission to topic")
        assert without_id(device.next()) == (errors_topic(lamp.did), forbidden)
        # Another device's topics and any other path: refused, 403 on the errors topic, no delivery.
        codes = device.subscribe(actions_topic(other.did), errors_topic(other.did), "#", "/v1.1/other")
        assert codes == [0x80] * 4
        assert without_id(device.next()) == (
            errors_topic(lamp.did),
            error(403, "You do not have subscribe permission to topic"),
        )
        body = {"ddid": other.did, "data": {"actions": [{"name": "setOn"}]}}
        with httpx.Client(base_url=live.url) as api:
            assert api.post("/v1.1/actions", headers=other.owner.headers, json=body).status_code == 200
        device.nothing_more()
        # Unsubscribed from the errors topic: errors are no longer sent.
        device.client.unsubscribe(errors_topic(lamp.did))
        time.sleep(0.2)
        device.publish(b"{not json")
        device.nothing_more()
    assert stored_messages(live, lamp.did) == []
    assert stored_messages(live, other.did) == []


def test_rate_limit_on_the_errors_topic(tmp_path: Path) -> None:
    server, thread = start_live(tmp_path, rate_limits="artik")
    try:
        lamp = new_lamp(server)
        with Device(mqtt_port(server), lamp.did, lamp.token) as device:
            # ARTIK: 1,000 MQTT publishes per device and minute (the clock stays in this minute).
            infos = [
                device.client.publish(messages_topic(lamp.did), b'{"temp": 1.0}', qos=1) for _ in range(1000)
            ]
            for info in infos:
                info.wait_for_publish(timeout=60)
            device.nothing_more()
            device.publish({"temp": 2.0})
            topic, body = without_id(device.next())
            assert topic == errors_topic(lamp.did)
            assert body["error"].pop("X-Rate-Limit-Limit") == "1000/100000"
            assert body["error"].pop("X-Rate-Limit-Remaining") == "0/98999"
            assert body["error"].pop("X-Rate-Limit-Reset")
            assert body == error(429, "DEVICE MINUTE rate limit exceeded")
        assert len(stored_messages(server, lamp.did)) == 1000
    finally:
        thread.stop()


# --- credentials and bad input ----------------------------------------------------------------------------


def test_refused_credentials_get_the_connack_code(live: LiveServer) -> None:
    lamp, other = new_lamp(live), new_lamp(live)
    port = mqtt_port(live)
    cases = [
        (lamp.did, "0" * 32, packets.BAD_CREDENTIALS),  # no such token
        (lamp.did, "not a token", packets.BAD_CREDENTIALS),
        (lamp.did, other.token, packets.NOT_AUTHORIZED),  # a valid token of another device
        (uuid.uuid4().hex, lamp.token, packets.NOT_AUTHORIZED),  # no such device
    ]
    for did, token, code in cases:
        sock, answer = raw_connect(port, did, token)
        with sock:
            assert answer == packets.connack(code), (did, token)
            assert closed_by_server(sock)
    sock, answer = raw_connect(port, lamp.did, lamp.token, level=5)
    with sock:
        assert answer == packets.connack(packets.UNACCEPTABLE_PROTOCOL)
    # Without a password.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = struct.pack("!H", 4) + b"MQTT" + bytes((4, 0x82)) + struct.pack("!HH", 30, 1) + b"c"
        body += struct.pack("!H", len(lamp.did)) + lamp.did.encode()
        sock.sendall(bytes((0x10, len(body))) + body)
        assert read_exactly(sock, 4) == packets.connack(packets.BAD_CREDENTIALS)
    assert presence(httpx.Client(base_url=live.url), lamp)["connected"] is False


def test_malformed_packets_close_only_that_connection(live: LiveServer) -> None:
    lamp, other = new_lamp(live), new_lamp(live)
    port = mqtt_port(live)
    with Device(port, lamp.did, lamp.token) as device:
        garbage = [
            b"\x00\x00",  # packet type 0
            b"\x30\xff\xff\xff\xff\x01",  # remaining length of five bytes
            b"\x82\x02\x00",  # SUBSCRIBE cut short, then silence: closed when the stream ends
            b"\x10\x02\x00\x04",  # a CONNECT that is too short
            b"\x34\x05\x00\x01a\x00\x01",  # QoS 2 publish
        ]
        for raw in garbage:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                if raw.startswith((b"\x30", b"\x82", b"\x34")):
                    sock.sendall(packets.connect("m", other.did, other.token))
                    assert read_exactly(sock, 4) == packets.connack(0)
                sock.sendall(raw)
                if raw.startswith(b"\x82"):
                    sock.shutdown(socket.SHUT_WR)
                assert closed_by_server(sock), raw
        # Clients that connect and vanish at once.
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(packets.connect("v", other.did, other.token)[:7])
            sock.close()
        device.publish({"temp": 5.0})
        assert [r["data"] for r in stored_messages(live, lamp.did)] == [{"temp": 5.0}]
        assert not device.gone.is_set()


def test_keepalive_and_ping(live: LiveServer) -> None:
    lamp = new_lamp(live)
    sock = socket.create_connection(("127.0.0.1", mqtt_port(live)), timeout=10)
    with sock:
        sock.sendall(packets.connect("k", lamp.did, lamp.token, keepalive=1))
        assert read_exactly(sock, 4) == packets.connack(0)
        sock.sendall(bytes((packets.PINGREQ << 4, 0)))
        assert read_exactly(sock, 2) == packets.PINGRESP_PACKET
        started = time.monotonic()
        assert closed_by_server(sock)  # silent past 1.5 x the keep-alive
        assert time.monotonic() - started < 5
    assert wait_for(lambda: presence(httpx.Client(base_url=live.url), lamp)["connected"] is False)


# --- one connection per device, presence, revocation ----------------------------------------------------


def test_mqtt_connection_replaced_by_mqtt(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    with Device(mqtt_port(live), lamp.did, lamp.token) as old:
        assert presence(client, lamp)["connected"] is True
        with Device(mqtt_port(live), lamp.did, lamp.token) as new:
            assert old.gone.wait(10)
            body = {"ddid": lamp.did, "data": {"actions": [{"name": "setOn"}]}}
            assert client.post("/v1.1/actions", headers=lamp.owner.headers, json=body).status_code == 200
            assert new.next()[0] == actions_topic(lamp.did)
            assert presence(client, lamp)["connected"] is True
        assert wait_for(lambda: presence(client, lamp)["connected"] is False)


def test_mqtt_and_websocket_replace_each_other(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    with (
        Device(mqtt_port(live), lamp.did, lamp.token) as device,
        open_ws(live, "/v1.1/websocket", ack="true") as ws,
    ):
        registered(ws, lamp.did, lamp.token)
        assert device.gone.wait(10)
        assert without_id(device.next()) == (
            errors_topic(lamp.did),
            {
                "error": {
                    "code": 409,
                    "message": f"Device {lamp.did} was registered on another connection",
                }
            },
        )
        # ... and an MQTT connection takes the device back from the socket.
        with Device(mqtt_port(live), lamp.did, lamp.token) as again:
            assert recv(ws) == {
                "error": {
                    "code": 409,
                    "message": f"Device {lamp.did} was registered on another connection",
                    "sdid": lamp.did,
                }
            }
            body = {"ddid": lamp.did, "data": {"actions": [{"name": "setOn"}]}}
            assert client.post("/v1.1/actions", headers=lamp.owner.headers, json=body).status_code == 200
            assert again.next()[0] == actions_topic(lamp.did)
            assert presence(client, lamp)["connected"] is True
    assert wait_for(lambda: presence(client, lamp)["connected"] is False)


def test_many_connections_of_one_device_in_quick_succession(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    port = mqtt_port(live)
    sockets = []
    for _ in range(100):
        sock, answer = raw_connect(port, lamp.did, lamp.token)
        assert answer == packets.connack(0)
        sockets.append(sock)
    # Each connection replaced the one before it: all closed by the server, except the last.
    for sock in sockets[:-1]:
        assert closed_by_server(sock)
        sock.close()
    last = sockets[-1]
    with last:
        subscribe = (
            struct.pack("!HH", 7, len(actions_topic(lamp.did))) + actions_topic(lamp.did).encode() + b"\0"
        )
        last.sendall(bytes((0x82, len(subscribe))) + subscribe)
        assert read_exactly(last, 5) == packets.suback(7, [0])
        body = {"ddid": lamp.did, "data": {"actions": [{"name": "setOn", "parameters": {}}]}}
        assert client.post("/v1.1/actions", headers=lamp.owner.headers, json=body).status_code == 200
        expected = packets.publish(actions_topic(lamp.did), b'[{"name":"setOn","parameters":{}}]')
        assert read_exactly(last, len(expected)) == expected
        assert presence(client, lamp)["connected"] is True
    assert wait_for(lambda: presence(client, lamp)["connected"] is False)


def test_presence_and_events(live: LiveServer, client: httpx.Client) -> None:
    from .factories import record_bus

    seen = record_bus(live, "device.>")
    lamp = new_lamp(live)
    with Device(mqtt_port(live), lamp.did, lamp.token):
        assert presence(client, lamp)["connected"] is True
    assert wait_for(lambda: presence(client, lamp)["connected"] is False)
    names = [
        s for s, p in seen if p.get("did") == lamp.did and s.startswith(("device.c", "device.d", "device.s"))
    ]
    assert names == [
        "device.connected",
        "device.status.online",
        "device.disconnected",
        "device.status.offline",
    ]


@pytest.mark.parametrize("what", ["token", "device", "user"])
def test_revocation_cuts_the_connection(live: LiveServer, client: httpx.Client, what: str) -> None:
    owner = make_user(live)
    lamp = new_lamp(live, owner)
    with Device(mqtt_port(live), lamp.did, lamp.token) as device:
        if what == "token":
            response = client.delete(f"/v1.1/devices/{lamp.did}/tokens", headers=owner.headers)
            why = {"token revoked"}
        elif what == "device":
            response = client.delete(f"/v1.1/devices/{lamp.did}", headers=owner.headers)
            # Deleting a device drops its tokens too: either reason may arrive first.
            why = {"device deleted", "token revoked"}
        else:
            from thingcloud.areas.users import service as users

            live.call(lambda rt: users.delete_user(rt, owner.email))
            response = httpx.Response(200)
            why = {"user deleted", "token revoked"}
        assert response.status_code == 200, response.text
        assert device.gone.wait(10)
        topic, body = without_id(device.next())
        assert topic == errors_topic(lamp.did)
        assert body in [error(401, f"Session closed: {reason}") for reason in why]
    sock, answer = raw_connect(mqtt_port(live), lamp.did, lamp.token)
    with sock:
        assert answer in (packets.connack(packets.BAD_CREDENTIALS), packets.connack(packets.NOT_AUTHORIZED))


# --- the port --------------------------------------------------------------------------------------------


def test_taken_port_is_logged_and_http_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="thingcloud.channels.mqtt.server"):
            server, thread = start_live(tmp_path, mqtt_port=port)
        try:
            assert server.app.state.mqtt.ports == []
            assert any(f"cannot listen on 127.0.0.1:{port}" in r.getMessage() for r in caplog.records)
            with server.client() as http:
                assert http.get("/readyz").status_code == 200
        finally:
            thread.stop()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "mqtt.crt", directory / "mqtt.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_port_when_certificate_and_key_are_set(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls_port = free_port()
    server, thread = start_live(
        tmp_path / "data", mqtt_tls_port=tls_port, mqtt_tls_cert=str(cert), mqtt_tls_key=str(key)
    )
    try:
        assert server.app.state.mqtt.ports == [server.settings.mqtt_port, tls_port]
        lamp = new_lamp(server)
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311, reconnect_on_failure=False
        )
        client.tls_set(ca_certs=str(cert))
        client.username_pw_set(lamp.did, lamp.token)
        connected: queue.Queue[int] = queue.Queue()
        client.on_connect = lambda _c, _u, _f, rc, _p: connected.put(rc.value)
        client.connect("127.0.0.1", tls_port)
        client.loop_start()
        try:
            assert connected.get(timeout=10) == 0
            info = client.publish(messages_topic(lamp.did), b'{"temp": 7.0}', qos=1)
            info.wait_for_publish(timeout=10)
            assert [r["data"] for r in stored_messages(server, lamp.did)] == [{"temp": 7.0}]
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        thread.stop()
    # Without the key, no TLS port.
    server, thread = start_live(tmp_path / "data2", mqtt_tls_port=free_port(), mqtt_tls_cert=str(cert))
    try:
        assert server.app.state.mqtt.ports == [server.settings.mqtt_port]
    finally:
        thread.stop()


def test_mqtt_can_be_turned_off(tmp_path: Path) -> None:
    port = free_port()
    server, thread = start_live(tmp_path, mqtt_enabled=False, mqtt_port=port)
    try:
        assert server.app.state.mqtt.ports == []
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        thread.stop()


# --- PUBACK means committed, across a SIGKILL ---------------------------------------------------------------

ADMIN_PASSWORD = "admin-password-mqtt"


def provision(url: str, stdout: str, count: int) -> list[tuple[str, str]]:
    """Devices of a new lamp type made over the API by the first-start administrator: (did, token)."""
    token = password_grant(url, console_client_id(stdout), ADMIN_PASSWORD).json()["access_token"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        body = {"name": "Lamp", "uniqueName": f"com.example.l{uuid.uuid4().hex}"}
        dtid = api.post("/v1.1/devicetypes", json=body).json()["data"]["id"]
        assert api.post(f"/v1.1/devicetypes/{dtid}/manifests", json=LAMP_MANIFEST).status_code == 200
        devices = []
        for n in range(count):
            did = api.post("/v1.1/devices", json={"dtid": dtid, "name": f"Lamp {n}"}).json()["data"]["id"]
            devices.append((did, api.put(f"/v1.1/devices/{did}/tokens").json()["data"]["accessToken"]))
    return devices


class Publisher:
    """A paho client publishing QoS 1 as fast as it is acknowledged; keeps every PUBACKed value.

    No lock of ours is held around paho calls: paho runs ``on_publish`` under its own lock."""

    def __init__(self, port: int, did: str, token: str) -> None:
        self.did = did
        self.sent: dict[int, float] = {}  # paho message id → the value published
        self.acked_ids: list[int] = []
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311, reconnect_on_failure=False
        )
        self.client.username_pw_set(did, token)
        self.client.on_publish = lambda _c, _u, mid, _rc, _p: self.acked_ids.append(mid)
        self.client.max_inflight_messages_set(50)
        ready = threading.Event()
        self.client.on_connect = lambda *_: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def acked(self) -> list[float]:
        return [self.sent[mid] for mid in list(self.acked_ids) if mid in self.sent]

    def _run(self) -> None:
        for n in range(60_000):  # below 65,535: paho message ids do not wrap
            if self.stop.is_set() or not self.client.is_connected():
                return
            info = self.client.publish(messages_topic(self.did), json.dumps({"temp": float(n)}), qos=1)
            self.sent[info.mid] = float(n)
            while len(self.sent) - len(self.acked_ids) > 40 and not self.stop.is_set():
                time.sleep(0.001)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.client.loop_stop()


def stored_rows(url: str) -> dict[str, set[float]]:
    """The stored ``temp`` values of each device, read from the database by the test itself."""

    async def read() -> dict[str, set[float]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(t.messages.c.sdid, t.messages.c.data))).all()
        finally:
            await engine.dispose()
        found: dict[str, set[float]] = {}
        for sdid, data in rows:
            found.setdefault(sdid, set()).add((data if isinstance(data, dict) else json.loads(data))["temp"])
        return found

    return asyncio.run(read())


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_stopped_server_loses_no_acknowledged_publish(tmp_path: Path, stop: signal.Signals) -> None:
    database = scratch_database_url() if TEST_DATABASE_URL else ""
    env = {
        "THINGCLOUD_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "THINGCLOUD_RATE_LIMITS": "off",
        "THINGCLOUD_DATABASE_URL": database,
    }
    port = free_port()
    server = ServeProcess(tmp_path / "data", **env, THINGCLOUD_MQTT_PORT=str(port))
    try:
        server.wait_ready()
        devices = provision(server.url, server.stdout, 4)
        publishers = [Publisher(port, did, token) for did, token in devices]
        deadline = time.monotonic() + 60
        while sum(len(p.acked) for p in publishers) < 400:
            assert time.monotonic() < deadline, "publishes not acknowledged"
            time.sleep(0.01)
        time.sleep(0.2)
        server.proc.send_signal(stop)
        # SIGTERM: a clean stop (what was received is stored and acknowledged first).
        assert server.proc.wait(timeout=60) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
        for publisher in publishers:
            publisher.close()
        stored = stored_rows(
            database or f"sqlite+aiosqlite:///{(tmp_path / 'data' / 'thingcloud.db').as_posix()}"
        )
        for publisher in publishers:
            assert publisher.acked
            missing = set(publisher.acked) - stored.get(publisher.did, set())
            assert not missing, f"{len(missing)} acknowledged publishes of {publisher.did} lost"
    finally:
        server.kill()


# --- two nodes over NATS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mqtt_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, int, int]]:
    if not TEST_DATABASE_URL:
        pytest.skip("two nodes need PostgreSQL: two processes on one SQLite file is not a supported mode")
    if not reachable(4222):
        pytest.skip(f"no NATS server at {NATS_URL}")
    root = tmp_path_factory.mktemp("mqtt-cluster")
    password = "cluster-admin-password-1"
    env = {
        "THINGCLOUD_DATABASE_URL": scratch_database_url(),
        "THINGCLOUD_NATS_URL": NATS_URL,
        "THINGCLOUD_NATS_SUBJECT_PREFIX": f"tcmqtt-{uuid.uuid4().hex[:12]}",
        "THINGCLOUD_SECRET_KEY": "cluster-secret-key-shared-by-both-nodes",
        "THINGCLOUD_ADMIN_PASSWORD": password,
        "THINGCLOUD_RATE_LIMITS": "off",
    }
    port_a, port_b = free_port(), free_port()
    a = ServeProcess(root / "a", **env, THINGCLOUD_MQTT_PORT=str(port_a))
    try:
        a.wait_ready()
        b = ServeProcess(root / "b", **env, THINGCLOUD_MQTT_PORT=str(port_b))
        try:
            b.wait_ready()
            prefix = env["THINGCLOUD_NATS_SUBJECT_PREFIX"]
            cluster = Cluster(a, b, prefix, {}, password, console_client_id(a.stdout), env)
            cluster.headers = {"Authorization": f"Bearer {cluster.user_token()}"}
            yield cluster, port_a, port_b
            assert a.terminate() == 0, a.stderr
            assert b.terminate() == 0, b.stderr
        finally:
            b.kill()
    finally:
        a.kill()


def test_action_posted_on_b_reaches_the_mqtt_device_on_a(mqtt_cluster: tuple[Cluster, int, int]) -> None:
    cluster, port_a, port_b = mqtt_cluster
    dtid = cluster.device_type(LAMP_MANIFEST)
    did = cluster.device(dtid)
    token = cluster.device_token(did)
    with Device(port_a, did, token) as device:
        body = {"ddid": did, "data": {"actions": [{"name": "setOn", "parameters": {}}]}}
        response = httpx.post(f"{cluster.b.url}/v1.1/actions", headers=cluster.headers, json=body)
        assert response.status_code == 200, response.text
        assert device.next() == (actions_topic(did), [{"name": "setOn", "parameters": {}}])
        # A connection on node B takes the device over from node A.
        with Device(port_b, did, token) as moved:
            assert device.gone.wait(10)
            response = httpx.post(f"{cluster.a.url}/v1.1/actions", headers=cluster.headers, json=body)
            assert response.status_code == 200, response.text
            assert moved.next()[0] == actions_topic(did)
