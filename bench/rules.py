"""Rules engine benchmark: N enabled rules over N devices, about 1 % of messages firing a rule.

    .venv/bin/python bench/rules.py                                  # SQLite, 1,000 rules/devices
    .venv/bin/python bench/rules.py --devices 50 --rates 50,100 --duration 5   # a quick check
    .venv/bin/python bench/rules.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench

What it does, so the figures in BENCHMARKS.md can be reproduced on one machine:
1. starts `thingcloud serve` (rate limits off, MQTT off) on a fresh database (a temp SQLite file, or
   the given PostgreSQL database, whose schema is wiped first);
2. sets up through the public API: the administrator's token, a device type (one numeric field
   ``temp``, one action ``setOn``), N devices with their device tokens, and N rules — rule i reads
   device i (``temp > 99``) and sends ``setOn`` to device i+1 — so each message is a candidate for
   exactly one rule; messages carry ``temp`` uniform in [0, 100), so about 1 % fire;
3. for each target rate (``--rates``), sends messages at that rate for DURATION seconds from an
   asyncio client (device tokens in turn, CONNECTIONS connections), then measures how long the engine
   takes to reach the end of the feed (its checkpoint, from /metrics): the engine "kept up" at a rate
   if that backlog drains within a second of the last message;
4. reads from the database, for every firing, the time from the triggering message's commit (its
   ``cts``) to the action's commit, and prints p50/p99/max per rate;
5. measures the ingest throughput (as many messages as CONNECTIONS connections can send, DURATION
   seconds) with the engine, then restarts the server with THINGCLOUD_RULES_ENGINE=false and measures
   it again.
The load generator is Python: on a small machine it may itself be the limit — the achieved rate is
printed next to the target. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parent.parent
THINGCLOUD = str(Path(sys.executable).parent / "thingcloud")
PASSWORD = "bench-admin-password"
MANIFEST = {"fields": [{"name": "temp", "valueClass": "Double"}], "actions": [{"name": "setOn"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path, database_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("THINGCLOUD_")}
        clean.update(
            THINGCLOUD_DATA_DIR=str(data_dir),
            THINGCLOUD_DATABASE_URL=database_url,
            THINGCLOUD_ADMIN_PASSWORD=PASSWORD,
            THINGCLOUD_RATE_LIMITS="off",
            THINGCLOUD_MQTT_ENABLED="false",
            THINGCLOUD_LOG_LEVEL="WARNING",
            THINGCLOUD_RULE_MAX_FIRINGS_PER_MINUTE="100000",
            **env,
        )
        self.out = open(data_dir.parent / f"serve-{self.port}.out", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [THINGCLOUD, "serve", "--port", str(self.port)],
            env=clean,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("server did not start; see " + self.out.name)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.out.close()

    def checkpoint(self) -> int:
        found = re.search(
            r'thingcloud_feed_checkpoint\{consumer="rules.engine"\} ([0-9.e+]+)',
            httpx.get(f"{self.url}/metrics").text,
        )
        return int(float(found.group(1))) if found else 0


def console_client_id(data_dir: Path) -> str:
    found = re.search(r"client_id ([0-9a-f]{32})", (data_dir / "first-start.txt").read_text())
    assert found
    return found.group(1)


def setup(server: Server, data_dir: Path, devices: int) -> list[tuple[str, str]]:
    """The administrator's fleet and rules; returns [(did, device token)]."""
    form = {
        "grant_type": "password",
        "client_id": console_client_id(data_dir),
        "username": "admin@thingcloud.local",
        "password": PASSWORD,
    }
    token = httpx.post(f"{server.url}/token", data=form).json()["access_token"]
    with httpx.Client(
        base_url=server.url + "/v1.1", headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as c:

        def ok(r: httpx.Response) -> Any:
            assert r.status_code == 200, r.text
            return r.json()["data"]

        me = ok(c.get("/users/self"))["id"]
        dt = ok(
            c.post(
                "/devicetypes", json={"name": "Bench sensor", "uniqueName": f"com.bench.s{time.time_ns()}"}
            )
        )
        ok(c.post(f"/devicetypes/{dt['id']}/manifests", json=MANIFEST))
        fleet = []
        for i in range(devices):
            did = ok(c.post("/devices", json={"dtid": dt["id"], "name": f"Sensor {i:05d}"}))["id"]
            fleet.append((did, ok(c.put(f"/devices/{did}/tokens"))["accessToken"]))
        for i, (did, _) in enumerate(fleet):
            target = fleet[(i + 1) % len(fleet)][0]
            rule = {
                "if": {"and": [{"sdid": did, "field": "temp", "operator": ">", "operand": {"value": 99}}]},
                "then": [{"ddid": target, "action": "setOn"}],
            }
            ok(c.post(f"/rules?userId={me}", json={"name": f"Rule {i}", "rule": rule}))
    return fleet


async def send(
    url: str, fleet: list[tuple[str, str]], rate: float | None, seconds: float, connections: int
) -> tuple[int, float]:
    """Messages at ``rate`` per second (None: as fast as possible); returns (sent, elapsed)."""
    sent = 0
    stop = time.monotonic() + seconds
    started = time.monotonic()
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker(n: int) -> None:
            nonlocal sent
            i = n
            while (now := time.monotonic()) < stop:
                if rate is not None:
                    due = started + sent / rate
                    if due > now:
                        await asyncio.sleep(due - now)
                        continue
                did, token = fleet[i % len(fleet)]
                i += connections
                sent += 1
                body = {"sdid": did, "data": {"temp": rng.random() * 100}}
                r = await client.post(
                    "/v1.1/messages", json=body, headers={"Authorization": f"Bearer {token}"}
                )
                if r.status_code != 200:
                    raise SystemExit(f"ingest failed: {r.status_code} {r.text}")

        await asyncio.gather(*(worker(n) for n in range(connections)))
    return sent, time.monotonic() - started


class Db:
    """Read-only queries on the server's database (SQLite file or PostgreSQL), through SQLAlchemy async."""

    def __init__(self, url: str) -> None:
        self.url = url

    def run(self, work: Any) -> Any:
        async def go() -> Any:
            engine = create_async_engine(self.url)
            try:
                async with engine.connect() as conn:
                    return await work(conn)
            finally:
                await engine.dispose()

        return asyncio.run(go())

    def feed_head(self) -> int:
        async def work(conn: Any) -> int:
            return int((await conn.execute(text("SELECT COALESCE(MAX(seq), 0) FROM feed"))).scalar() or 0)

        result: int = self.run(work)
        return result

    def latencies(self, since_ms: int) -> list[int]:
        """Commit of the triggering message → commit of the action, in ms, for firings since ``since_ms``."""

        async def work(conn: Any) -> list[int]:
            sql = "SELECT key, detail FROM rule_firings WHERE fired_on >= :t AND outcome = 'fired'"
            rows = (await conn.execute(text(sql), {"t": since_ms})).all()
            out = []
            for key, detail in rows:
                detail = json.loads(detail) if isinstance(detail, str) else detail
                if not key.startswith("seq:") or not detail:
                    continue
                message_cts = (
                    await conn.execute(
                        text("SELECT m.cts FROM feed f JOIN messages m ON m.mid = f.ref WHERE f.seq = :s"),
                        {"s": int(key[4:])},
                    )
                ).scalar()
                for action in detail.get("actions", []):
                    action_cts = (
                        await conn.execute(
                            text("SELECT cts FROM actions WHERE mid = :m"), {"m": action.get("mid")}
                        )
                    ).scalar()
                    if message_cts is not None and action_cts is not None:
                        out.append(int(action_cts) - int(message_cts))
            return out

        result: list[int] = self.run(work)
        return result


def percentile(values: list[int], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000, help="devices, and rules (one per device)")
    parser.add_argument("--rates", default="250,500,1000,1500", help="target message rates, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--database-url", default="", help="PostgreSQL URL (its schema is wiped); default SQLite"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-rules-"))
    data_dir = work / "data"
    if args.database_url:
        wipe = Db(args.database_url)

        async def drop(conn: Any) -> None:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
            await conn.commit()

        wipe.run(drop)
        db = Db(args.database_url)
    else:
        db = Db(f"sqlite+aiosqlite:///{data_dir / 'thingcloud.db'}")
    server = Server(data_dir, args.database_url)
    print(f"setting up {args.devices} devices and rules ...", file=sys.stderr)
    fleet = setup(server, data_dir, args.devices)
    rows = []
    for rate in [float(r) for r in args.rates.split(",") if r]:
        begin = int(time.time() * 1000)
        sent, elapsed = asyncio.run(send(server.url, fleet, rate, args.duration, args.connections))
        head, done = db.feed_head(), time.monotonic()
        while server.checkpoint() < head and time.monotonic() - done < 120:
            time.sleep(0.05)
        backlog = time.monotonic() - done
        lat = db.latencies(begin)
        rows.append(
            (
                rate,
                sent / elapsed,
                backlog,
                len(lat),
                percentile(lat, 50),
                percentile(lat, 99),
                max(lat, default=0),
            )
        )
    with_engine, elapsed = asyncio.run(send(server.url, fleet, None, args.duration, args.connections))
    server.stop()
    server = Server(data_dir, args.database_url, THINGCLOUD_RULES_ENGINE="false")
    without, elapsed2 = asyncio.run(send(server.url, fleet, None, args.duration, args.connections))
    server.stop()

    print(
        f"\n{args.devices} rules over {args.devices} devices, ~1 % of messages fire; database: "
        f"{'PostgreSQL' if args.database_url else 'SQLite'}; {args.connections} connections\n"
    )
    header = [
        "target msg/s",
        "achieved msg/s",
        "engine backlog after the run (s)",
        "kept up",
        "firings",
        "p50 commit→action (ms)",
        "p99 (ms)",
        "max (ms)",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for rate, achieved, backlog, n, p50, p99, worst in rows:
        kept = "yes" if backlog < 1 else "no"
        cells = [
            f"{rate:.0f}",
            f"{achieved:.0f}",
            f"{backlog:.2f}",
            kept,
            str(n),
            f"{p50:.0f}",
            f"{p99:.0f}",
            str(worst),
        ]
        print("| " + " | ".join(cells) + " |")
    a, b = with_engine / elapsed, without / elapsed2
    print(
        f"\nIngest, as fast as {args.connections} connections go: {a:.0f} msg/s with the engine, "
        f"{b:.0f} msg/s without ({(a / b - 1) * 100:+.1f} %)."
    )
    print(f"(work directory: {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
