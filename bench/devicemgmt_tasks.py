"""Device-management task benchmark: one task for N devices connected over MQTT, to full completion.

    .venv/bin/python bench/devicemgmt_tasks.py                        # 10,000 devices, SQLite
    .venv/bin/python bench/devicemgmt_tasks.py --devices 1000         # a modest run on a busy machine
    .venv/bin/python bench/devicemgmt_tasks.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench

What it does, so anyone can reproduce the figures in BENCHMARKS.md on one machine:
1. starts `thingcloud serve` pinned to one core (taskset -c 1) on a fresh database, rate limits off,
   MQTT on a free port; this process (the device side) pins itself to the other core;
2. sets up through the public API: the first-start administrator's device type with the default DM
   manifest and device properties enabled, --devices devices and their tokens;
3. connects every device over MQTT (raw asyncio sockets, the endpoint's own packet encoder) and
   subscribes it to /v1.1/devicemgmt/<did>/tasks; each device answers every task it gets on
   /v1.1/devicemgmt/<did>/results with SUCCEEDED at once (QoS 1); then waits for the server to be
   idle again (the connections' own work done);
4. POSTs one W task (deviceProperties.device.timezone) naming all the devices and polls
   GET /devicemgmt/tasks/{tid} until COMPLETE: the time to the last device receiving the task, the
   time to COMPLETE, the status counts (all must have succeeded), the server's RSS before and at peak.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest import PYTHON, RssSampler, cpu_seconds, free_port, rss_kb, start_server, stop, wait_up
from mqtt import read_packet, setup

from thingcloud.channels.mqtt import packets


class ManagedDevice:
    """One device connection: takes tasks, answers each one SUCCEEDED."""

    def __init__(self, did: str, token: str) -> None:
        self.did, self.token = did, token
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.received: float | None = None  # when the (first) task arrived
        self.packet_id = 0
        self.task: asyncio.Task[None] | None = None

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(packets.connect(self.did[:23], self.did, self.token, 0))
        kind, body = await read_packet(self.reader)
        if kind != packets.CONNACK or body[1] != 0:
            raise SystemExit(f"CONNACK refused for {self.did}: {body!r}")
        name = f"/v1.1/devicemgmt/{self.did}/tasks".encode()
        sub = struct.pack("!HH", 1, len(name)) + name + b"\x01"
        self.writer.write(bytes((0x82, len(sub))) + sub)
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        results = f"/v1.1/devicemgmt/{self.did}/results"
        while True:
            try:
                kind, body = await read_packet(self.reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if kind != packets.PUBLISH:
                continue
            (length,) = struct.unpack("!H", body[:2])
            message = json.loads(body[2 + length :])
            if message.get("cancel"):
                continue
            if self.received is None:
                self.received = time.monotonic()
            self.packet_id = self.packet_id % 65535 + 1
            answer = json.dumps({"tid": message["tid"], "status": "SUCCEEDED"}).encode()
            self.writer.write(packets.publish_qos1(results, answer, self.packet_id))

    def close(self) -> None:
        self.writer.close()
        if self.task is not None:
            self.task.cancel()


async def run(
    base: str, token: str, dtid: str, devices: list[tuple[str, str]], mqtt_port: int, pid: int
) -> dict[str, float]:
    clients = [ManagedDevice(did, tok) for did, tok in devices]
    gate = asyncio.Semaphore(200)

    async def connect(client: ManagedDevice) -> None:
        async with gate:
            await client.connect(mqtt_port)

    began = time.monotonic()
    await asyncio.gather(*(connect(c) for c in clients))
    connected = time.monotonic() - began
    # The connections' own work (presence, system properties, the look for pending tasks) settles
    # first, so that the figures are the task's: the server idle (< 5 % of a core) 3 s in a row.
    settle_began, quiet = time.monotonic(), 0
    while time.monotonic() - settle_began < 300 and quiet < 3:
        before = cpu_seconds(pid)
        await asyncio.sleep(1.0)
        quiet = quiet + 1 if cpu_seconds(pid) - before < 0.05 else 0
    settled = time.monotonic() - settle_began
    rss_before = rss_kb(pid)
    sampler = RssSampler(pid)
    sampler.start()
    headers = {"Authorization": f"Bearer {token}"}
    body = {
        "dtid": dtid,
        "dids": [did for did, _ in devices],
        "taskType": "W",
        "property": "deviceProperties.device.timezone",
        "taskParameters": {"value": "Europe/Paris", "expiresAfter": 3600},
    }
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as api:
        started = time.monotonic()
        created = await api.post("/v1.1/devicemgmt/tasks", json=body)
        created.raise_for_status()
        tid = created.json()["data"]["id"]
        accepted = time.monotonic() - started
        while True:
            task = (await api.get(f"/v1.1/devicemgmt/tasks/{tid}")).json()["data"]
            if task["status"] == "COMPLETE":
                break
            await asyncio.sleep(0.5)
        completed = time.monotonic() - started
    sampler.running = False
    arrivals = [c.received for c in clients if c.received is not None]
    for c in clients:
        c.close()
    counts = task["statusCounts"]
    if counts["numSucceeded"] != len(devices) or len(arrivals) != len(devices):
        raise SystemExit(f"wrong counts: {counts}, {len(arrivals)} devices got the task")
    return {
        "devices": len(devices),
        "connect_s": connected,
        "settle_s": settled,
        "accepted_s": accepted,
        "delivered_s": max(arrivals) - started,
        "complete_s": completed,
        "succeeded": counts["numSucceeded"],
        "rss_before_mb": rss_before / 1024,
        "rss_peak_mb": sampler.peak / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--devices", type=int, default=10000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.devices + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.devices + 1000), hard))
    data_dir = Path(tempfile.mkdtemp(prefix="tc-bench-dm-"))
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
    try:
        wait_up(f"{base}/healthz")
        time.sleep(0.5)
        setup_began = time.monotonic()
        token, devices = setup(base, log.read_text(), password, args.devices)
        headers = {"Authorization": f"Bearer {token}"}
        dtid = httpx.get(f"{base}/v1.1/devices/{devices[0][0]}", headers=headers).json()["data"]["dtid"]
        enabled = httpx.put(
            f"{base}/v1.1/devicemgmt/devicetypes/{dtid}",
            headers=headers,
            json={"devicePropertiesEnabled": True},
        )
        enabled.raise_for_status()
        print(f"{args.devices} devices set up in {time.monotonic() - setup_began:.0f} s", flush=True)
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {0})
        result = asyncio.run(run(base, token, dtid, devices, mqtt_port, server.pid))
    finally:
        stop(server)
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"\n| device-management task, {result['devices']:.0f} MQTT devices ({database}) | |")
    print("|---|---|")
    connected, settled = result["connect_s"], result["settle_s"]
    print(
        f"| devices connected and subscribed | {connected:.1f} s (server idle again {settled:.0f} s later) |"
    )
    print(f"| POST /devicemgmt/tasks answered | {result['accepted_s']:.2f} s |")
    print(f"| last device got the task | {result['delivered_s']:.1f} s after the POST |")
    print(f"| task COMPLETE | {result['complete_s']:.1f} s after the POST |")
    print(f"| status counts | {result['succeeded']:.0f} succeeded of {result['devices']:.0f} |")
    print(f"| server RSS | {result['rss_before_mb']:.0f} MB before, {result['rss_peak_mb']:.0f} MB peak |")


if __name__ == "__main__":
    main()
