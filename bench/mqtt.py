"""MQTT benchmark: QoS 1 ingest, actions to MQTT subscribers, memory per idle connection.

    .venv/bin/python bench/mqtt.py                      # SQLite (a fresh file under a temp dir)
    .venv/bin/python bench/mqtt.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/mqtt.py --devices 20 --idle 200 --duration 3 --action-rate 50   # quick check
    .venv/bin/python bench/mqtt.py --phases actions --action-duration 30       # the actions phase alone

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
5. actions: every device subscribes to /v1.1/actions/<did>; wrk (one thread, 64 connections, pinned
   to core 0 with this process, open loop paced by the clock: bench/ingest.py's wrk_script) POSTs
   /v1.1/actions at --action-rate per second for --action-duration seconds (after a 2 s warm-up),
   round robin over the devices, each action carrying its send time (wall clock, µs) as the ``sent``
   parameter; the subscribers take arrival − sent of every PUBLISH: p50/p99/max, next to wrk's own
   POST latency (so a slow POST and a slow delivery can be told apart), the rate achieved and the
   server's CPU time per action (background work included: meaningful at load).
   --profile FILE samples the server with py-spy (raw format) during this phase;
6. memory: --idle further idle connections (keep-alive 0); the server's RSS before and after, divided
   by the number of connections.
Prints a Markdown table. The MQTT load generator is plain asyncio on raw sockets (a paho thread per
device would measure paho), using the endpoint's own packet encoder. --phases picks the phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest import (
    MANIFEST,
    PYTHON,
    cpu_seconds,
    ensure_wrk,
    free_port,
    reset_postgres,
    rss_kb,
    run_wrk,
    start_server,
    stop,
    wait_up,
    wrk_script,
)

from thingcloud.channels.mqtt import packets

# setOn carries its send time (µs since the epoch) so the subscriber can time each delivery.
ACTION_MANIFEST = {
    **MANIFEST,
    "actions": [{"name": "setOn", "parameters": [{"name": "sent", "valueClass": "Double"}]}],
}
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
        self.arrivals: list[float] = []  # ms from an action's ``sent`` parameter to its PUBLISH here
        self.received: list[float] = []  # arrival (wall clock, ms) of every PUBLISH (bench/rules.py)
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
                arrived_us = time.time() * 1e6
                self.received.append(arrived_us / 1e3)
                (length,) = struct.unpack("!H", body[:2])
                for action in json.loads(body[2 + length :]):
                    sent = action.get("parameters", {}).get("sent")
                    if sent:
                        self.arrivals.append((arrived_us - float(sent)) / 1e3)

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


ACTIONS_LUA = """
local devices = read_devices("%(devices)s")
local i = 0
request = function()
  i = i + 1
  local did = devices[(i %% #devices) + 1][1]
  local body = string.format(
    '{"ddid":"%%s","type":"action","data":{"actions":[{"name":"setOn","parameters":{"sent":%%d}}]}}',
    did, now_us())
  return wrk.format("POST", "/v1.1/actions",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(token)s"}, body)
end
"""


async def actions_run(
    clients: list[Client],
    base: str,
    token: str,
    rate: float,
    duration: float,
    data_dir: Path,
    server_pid: int,
    profile: str = "",
) -> dict[str, float]:
    """wrk (pinned to core 0 like this process) POSTs actions at ``rate``/s round robin over the
    devices, each carrying its send time (wall clock, µs) as the ``sent`` parameter; the subscribers
    (this process's asyncio clients) take arrival − sent from each PUBLISH on the actions topic."""
    for c in clients:
        await c.subscribe(f"/v1.1/actions/{c.did}")
    devices = data_dir / "action-devices.txt"
    devices.write_text("".join(f"{c.did}\n" for c in clients))
    script = wrk_script(data_dir / "actions.lua", ACTIONS_LUA % {"devices": devices, "token": token}, rate)
    wrk = ensure_wrk()
    await asyncio.to_thread(run_wrk, wrk, base, script, 2, 64)  # warm-up
    await asyncio.sleep(1.0)
    for c in clients:
        c.arrivals = []
    spy = None
    if profile:  # py-spy samples the server during the measured run
        seconds = str(max(1, int(duration) - 1))
        command = [py_spy(), "record", "-p", str(server_pid), "-d", seconds, "-r", "200", "-f", "raw"]
        spy = subprocess.Popen(  # noqa: ASYNC220 (started once, before the load)
            [*command, "-o", profile, "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    cpu = cpu_seconds(server_pid)
    result = await asyncio.to_thread(run_wrk, wrk, base, script, int(duration), 64)
    cpu = cpu_seconds(server_pid) - cpu
    if spy:
        await asyncio.to_thread(spy.wait)
    await asyncio.sleep(2.0)  # the last deliveries
    if not result["requests"]:
        print("warning: wrk completed no POST /actions (the server stalled?); see the server log")
    latencies = [x for c in clients for x in c.arrivals]
    accepted = int(result["requests"]) - int(result["non_2xx"])
    return {
        "sent_s": result["rps"],
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "received": len(latencies),
        "missed": max(0, accepted - len(latencies)),
        "errors": result["non_2xx"] + result["socket_errors"],
        "post_p50_ms": result["p50_ms"],
        "post_p99_ms": result["p99_ms"],
        # the server's CPU per action: what its one core allows (1000 / this = actions/s at 100 %)
        "cpu_ms_per_action": cpu * 1e3 / max(1.0, result["requests"]),
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
            (await api.post(f"/v1.1/devicetypes/{dtid}/manifests", json=ACTION_MANIFEST)).raise_for_status()
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


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(PYTHON).parent))
    if not found:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return found


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
    parser.add_argument(
        "--action-duration", type=float, default=0, help="seconds of the actions phase (default --duration)"
    )
    parser.add_argument(
        "--phases", default="ingest,actions,idle,bare", help="which phases to run (comma-separated)"
    )
    parser.add_argument("--profile", default="", help="py-spy raw profile of the server in the actions phase")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of rest between phases")
    parser.add_argument("--idle", type=int, default=10000, help="idle connections for the memory figure")
    parser.add_argument("--bare", default="127.0.0.1:1883", help="bare broker HOST:PORT ('' to skip)")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    if "idle" not in phases:
        args.idle = 0
    if "bare" not in phases:
        args.bare = ""

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
        reset_postgres(args.database_url)
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

        Result = dict[str, float] | None

        async def measured() -> tuple[Result, Result, Result]:
            clients = [Client(did, tok) for did, tok in devices[: args.devices]]
            ingest = actions = idle = None
            if "ingest" in phases:
                ingest = await ingest_run(clients, mqtt_port, args.duration, args.window, bare=False)
                await asyncio.sleep(args.settle)  # background consumers of the ingested messages catch up
            else:
                for c in clients:
                    await c.connect(mqtt_port)
                    c.start_reading()
            if "actions" in phases:
                actions = await actions_run(
                    clients,
                    base,
                    token,
                    args.action_rate,
                    args.action_duration or args.duration,
                    data_dir,
                    server.pid,
                    args.profile,
                )
            for c in clients:
                c.writer.close()
            await asyncio.sleep(1.0)
            if "idle" in phases:
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
    if ingest:
        print(
            f"| ThingCloud QoS 1 ingest | {ingest['msg_s']:.0f} msg/s (PUBACK p50 {ingest['p50_ms']:.1f} ms, "
            f"p99 {ingest['p99_ms']:.1f} ms) |"
        )
    if bare and ingest:
        print(
            f"| bare broker ({args.bare}) QoS 1 | {bare['msg_s']:.0f} msg/s (p50 {bare['p50_ms']:.1f} ms, "
            f"p99 {bare['p99_ms']:.1f} ms); ThingCloud at {100 * ingest['msg_s'] / bare['msg_s']:.0f} % |"
        )
    if actions:
        print(
            f"| POST /actions → MQTT subscriber, {args.action_rate:.0f}/s asked (wrk) | "
            f"{actions['sent_s']:.0f} actions/s sent, delivery (POST sent → PUBLISH received) p50 "
            f"{actions['p50_ms']:.1f} ms, p99 {actions['p99_ms']:.1f} ms, max {actions['max_ms']:.0f} ms; "
            f"POST answered p50 {actions['post_p50_ms']:.1f} ms, p99 {actions['post_p99_ms']:.1f} ms; "
            f"{actions['received']:.0f} received, {actions['missed']:.0f} missed, "
            f"{actions['errors']:.0f} HTTP errors; "
            f"server CPU {actions['cpu_ms_per_action']:.2f} ms per action |"
        )
    if idle:
        print(
            f"| idle connections | {idle['connections']:.0f}: RSS {idle['rss_before_mb']:.0f} → "
            f"{idle['rss_after_mb']:.0f} MB, {idle['kb_per_connection']:.1f} KB per connection |"
        )
    print(f"\nserver log: {log}")


if __name__ == "__main__":
    main()
