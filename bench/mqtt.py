"""MQTT benchmark: QoS 1 ingest, actions to MQTT subscribers, memory per idle connection.

    .venv/bin/python bench/mqtt.py                      # SQLite (a fresh file under a temp dir)
    .venv/bin/python bench/mqtt.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/mqtt.py --devices 20 --idle 200 --duration 3 --action-rate 50   # quick check

What it does, so anyone can reproduce the figures in BENCHMARKS.md on one machine:
1. starts `thingcloud serve` pinned to one core (taskset -c 1) on a fresh database, rate limits off,
   MQTT on a free port; this process (the load generator) pins itself to the other core;
2. sets up through the public API: a user, an application (password grant), a device type whose
   manifest has 5 numeric fields, max(--devices, --idle) devices and their device tokens;
3. ingest: --devices MQTT connections (username = device id, password = token), each keeping
   --window QoS 1 PUBLISHes of 5 numeric fields in flight on /v1.1/messages/<did>, for --duration
   seconds after a warm-up: PUBACKs/s and the PUBLISH → PUBACK latency (p50, p99);
4. the same load against a bare broker with no ThingCloud logic (--bare HOST:PORT, default the
   Mosquitto at 127.0.0.1:1883; e.g. `amqtt` started by hand; `--bare ''` skips it);
5. actions: every device subscribes to /v1.1/actions/<did>; POST /v1.1/actions at --action-rate per
   second (round robin over the devices, one in flight per device) for --duration seconds: the
   latency from the POST being sent to the action arriving on MQTT (p50, p99);
6. memory: --idle further idle connections (keep-alive 0); the server's RSS before and after, divided
   by the number of connections.
Prints a Markdown table. The load generator is plain asyncio on raw sockets (a paho thread per
device would measure paho), using the endpoint's own packet encoder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest import MANIFEST, PYTHON, free_port, rss_kb, start_server, stop, wait_up

from thingcloud.channels.mqtt import packets

PAYLOAD = b'{"f0":1,"f1":2.5,"f2":3,"f3":4,"f4":%d}'


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """A packet from the broker: (type, body)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first >> 4, await reader.readexactly(length)


class Client:
    """One device connection of the load generator."""

    def __init__(self, did: str, token: str) -> None:
        self.did, self.token = did, token
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.sent: dict[int, float] = {}  # packet id → send time
        self.latencies: list[float] = []
        self.acked = 0
        self.window = asyncio.Semaphore(1)
        self.actions: asyncio.Queue[float] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def connect(self, port: int, keepalive: int = 600) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(packets.connect(self.did[:23], self.did, self.token, keepalive))
        kind, body = await read_packet(self.reader)
        if kind != packets.CONNACK or body[1] != 0:
            raise SystemExit(f"CONNACK refused for {self.did}: {body!r}")

    async def subscribe(self, topic: str) -> None:
        name = topic.encode()
        body = struct.pack("!HH", 1, len(name)) + name + b"\x00"
        self.writer.write(bytes((0x82, len(body))) + body)

    def start_reading(self) -> None:
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            try:
                kind, body = await read_packet(self.reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # closed at the end of a phase
            now = time.perf_counter()
            if kind == packets.PUBACK:
                started = self.sent.pop(struct.unpack("!H", body)[0], None)
                if started is not None:
                    self.latencies.append(now - started)
                    self.acked += 1
                    self.window.release()
            elif kind == packets.PUBLISH:
                self.actions.put_nowait(now)

    async def publish_loop(self, topic: str, window: int, stop_at: float) -> None:
        self.window = asyncio.Semaphore(window)
        packet_id = 0
        while time.perf_counter() < stop_at:
            await self.window.acquire()
            packet_id = packet_id % 65535 + 1
            self.sent[packet_id] = time.perf_counter()
            self.writer.write(packets.publish_qos1(topic, PAYLOAD % packet_id, packet_id))
            await self.writer.drain()

    def reset(self) -> None:
        self.latencies, self.acked = [], 0


async def ingest_run(
    clients: list[Client], port: int, duration: float, window: int, bare: bool
) -> dict[str, float]:
    for c in clients:
        await c.connect(port)
        c.start_reading()
    topic = "/v1.1/messages/{}"
    warm = time.perf_counter() + 1.0
    await asyncio.gather(*(c.publish_loop(topic.format(c.did), window, warm) for c in clients))
    await asyncio.sleep(0.5)
    for c in clients:
        c.reset()
    started = time.perf_counter()
    await asyncio.gather(*(c.publish_loop(topic.format(c.did), window, started + duration) for c in clients))
    elapsed = time.perf_counter() - started
    await asyncio.sleep(1.0)  # the last PUBACKs
    latencies = [x for c in clients for x in c.latencies]
    acked = sum(c.acked for c in clients)
    if bare:
        for c in clients:
            c.writer.close()
            if c.task:
                c.task.cancel()
    return {
        "msg_s": acked / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
    }


async def actions_run(
    clients: list[Client], base: str, token: str, rate: float, duration: float
) -> dict[str, float]:
    for c in clients:
        await c.subscribe(f"/v1.1/actions/{c.did}")
    await asyncio.sleep(0.5)
    latencies: list[float] = []
    posted: list[float] = []  # POST answered (committed): the REST part of the latency
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {token}"}
    errors = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as http:

        async def one(c: Client) -> None:
            nonlocal errors
            while not c.actions.empty():
                c.actions.get_nowait()
            sent = time.perf_counter()
            body = {"ddid": c.did, "data": {"actions": [{"name": "setOn", "parameters": {}}]}}
            response = await http.post("/v1.1/actions", json=body)
            posted.append(time.perf_counter() - sent)
            if response.status_code != 200:
                errors += 1
                return
            try:
                arrived = await asyncio.wait_for(c.actions.get(), 10)
            except TimeoutError:
                errors += 1
                return
            latencies.append(arrived - sent)

        busy: dict[str, asyncio.Task[None]] = {}
        pending: set[asyncio.Task[None]] = set()
        started = time.perf_counter()
        n = 0
        while time.perf_counter() - started < duration:
            due = started + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            c = clients[n % len(clients)]
            n += 1
            if c.did in busy and not busy[c.did].done():
                errors += 1  # this device's previous action has not arrived yet: counted as missed
                continue
            task = asyncio.ensure_future(one(c))
            busy[c.did] = task
            pending.add(task)
            task.add_done_callback(pending.discard)
        elapsed = time.perf_counter() - started
        if pending:
            await asyncio.wait(pending)
    return {
        "sent_s": n / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
        "missed": errors,
        "post_p99_ms": pct(posted, 0.99) * 1e3,
    }


async def idle_run(devices: list[tuple[str, str]], port: int, pid: int) -> dict[str, float]:
    before = rss_kb(pid)
    clients = [Client(did, token) for did, token in devices]
    for i in range(0, len(clients), 200):
        await asyncio.gather(*(c.connect(port, keepalive=0) for c in clients[i : i + 200]))
    await asyncio.sleep(3.0)
    after = rss_kb(pid)
    for c in clients:
        c.writer.close()
    return {
        "connections": len(clients),
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "kb_per_connection": (after - before) / max(1, len(clients)),
    }


def setup(base: str, stdout: str, password: str, count: int) -> tuple[str, list[tuple[str, str]]]:
    """A user token (the first-start administrator, through the console app) and ``count`` devices of
    a new type with their tokens."""

    client_id = re.search(r"^ +Console app +client_id ([0-9a-f]{32})$", stdout, re.M)
    if client_id is None:
        raise SystemExit(f"no console client id in the server output:\n{stdout}")
    form = {
        "grant_type": "password",
        "client_id": client_id.group(1),
        "username": "admin@thingcloud.local",
        "password": password,
    }
    token = httpx.post(f"{base}/token", data=form).json()["access_token"]

    async def make() -> list[tuple[str, str]]:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as api:
            dt = await api.post(
                "/v1.1/devicetypes", json={"name": "Bench", "uniqueName": f"com.example.b{time.time_ns()}"}
            )
            dt.raise_for_status()
            dtid = dt.json()["data"]["id"]
            (await api.post(f"/v1.1/devicetypes/{dtid}/manifests", json=MANIFEST)).raise_for_status()
            gate = asyncio.Semaphore(16)

            async def device(i: int) -> tuple[str, str]:
                async with gate:
                    made = await api.post(
                        "/v1.1/devices", json={"dtid": dtid, "name": f"bench device {i:05d}"}
                    )
                    made.raise_for_status()
                    did = made.json()["data"]["id"]
                    issued = await api.put(f"/v1.1/devices/{did}/tokens")
                    issued.raise_for_status()
                    return did, issued.json()["data"]["accessToken"]

            return list(await asyncio.gather(*(device(i) for i in range(count))))

    return token, asyncio.run(make())


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--devices", type=int, default=1000, help="connected devices for ingest and actions")
    parser.add_argument("--window", type=int, default=4, help="QoS 1 publishes in flight per device")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured phase")
    parser.add_argument("--action-rate", type=float, default=1000.0, help="POST /actions per second")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of rest between phases")
    parser.add_argument("--idle", type=int, default=10000, help="idle connections for the memory figure")
    parser.add_argument("--bare", default="127.0.0.1:1883", help="bare broker HOST:PORT ('' to skip)")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.devices + args.idle + 1000
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))  # inherited by the server
    data_dir = Path(tempfile.mkdtemp(prefix="tc-bench-mqtt-"))
    port, mqtt_port = free_port(), free_port()
    password = "bench-admin-password"
    env = {
        **os.environ,
        "THINGCLOUD_DATA_DIR": str(data_dir),
        "THINGCLOUD_DATABASE_URL": args.database_url,
        "THINGCLOUD_RATE_LIMITS": "off",
        "THINGCLOUD_ADMIN_PASSWORD": password,
        "THINGCLOUD_MQTT_PORT": str(mqtt_port),
    }
    if args.database_url.startswith("postgresql"):
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        async def reset() -> None:
            engine = create_async_engine(args.database_url)
            async with engine.begin() as conn:
                await conn.execute(text("DROP SCHEMA public CASCADE"))
                await conn.execute(text("CREATE SCHEMA public"))
            await engine.dispose()

        asyncio.run(reset())
    base = f"http://127.0.0.1:{port}"
    log = data_dir / "server.log"
    server = start_server([PYTHON, "-m", "thingcloud", "serve", "--port", str(port)], env, log)
    print(f"server pid {server.pid} (py-spy record -p {server.pid} to profile it)", flush=True)
    try:
        wait_up(f"{base}/healthz")
        time.sleep(0.5)
        token, devices = setup(base, log.read_text(), password, max(args.devices, args.idle))
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {0})

        async def measured() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
            clients = [Client(did, tok) for did, tok in devices[: args.devices]]
            ingest = await ingest_run(clients, mqtt_port, args.duration, args.window, bare=False)
            await asyncio.sleep(args.settle)  # background consumers of the ingested messages catch up
            actions = await actions_run(clients, base, token, args.action_rate, args.duration)
            for c in clients:
                c.writer.close()
            await asyncio.sleep(1.0)
            idle = await idle_run(devices[: args.idle], mqtt_port, server.pid)
            return ingest, actions, idle

        ingest, actions, idle = asyncio.run(measured())
    finally:
        stop(server)
    bare = None
    if args.bare:
        host, _, bare_port = args.bare.rpartition(":")
        if reachable(host, int(bare_port)):
            clients = [Client(did, tok) for did, tok in devices[: args.devices]]
            bare = asyncio.run(ingest_run(clients, int(bare_port), args.duration, args.window, bare=True))
        else:
            print(f"(no bare broker at {args.bare}: skipped)")
    print(
        f"\nMQTT, {args.devices} devices, window {args.window}, {args.duration:.0f} s per phase, "
        f"{'PostgreSQL' if args.database_url else 'SQLite'}\n"
    )
    print("| measure | value |\n|---|---|")
    print(
        f"| ThingCloud QoS 1 ingest | {ingest['msg_s']:.0f} msg/s (PUBACK p50 {ingest['p50_ms']:.1f} ms, "
        f"p99 {ingest['p99_ms']:.1f} ms) |"
    )
    if bare:
        print(
            f"| bare broker ({args.bare}) QoS 1 | {bare['msg_s']:.0f} msg/s (p50 {bare['p50_ms']:.1f} ms, "
            f"p99 {bare['p99_ms']:.1f} ms); ThingCloud at {100 * ingest['msg_s'] / bare['msg_s']:.0f} % |"
        )
    print(
        f"| POST /actions → MQTT subscriber | {actions['sent_s']:.0f} actions/s sent, p50 "
        f"{actions['p50_ms']:.1f} ms, p99 {actions['p99_ms']:.1f} ms (POST answered: p99 "
        f"{actions['post_p99_ms']:.1f} ms), {actions['missed']:.0f} missed |"
    )
    print(
        f"| idle connections | {idle['connections']:.0f}: RSS {idle['rss_before_mb']:.0f} → "
        f"{idle['rss_after_mb']:.0f} MB, {idle['kb_per_connection']:.1f} KB per connection |"
    )
    print(f"\nserver log: {log}")


if __name__ == "__main__":
    main()
