"""Rules engine benchmark: N enabled rules over N devices, about 1 % of messages firing a rule.

    .venv/bin/python bench/rules.py                                  # SQLite, 1,000 rules (~6 min)
    .venv/bin/python bench/rules.py --quick                          # small scale (~1.5 min)
    .venv/bin/python bench/rules.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench

What it does (issue 8, "Engine performance"), so the figures in BENCHMARKS.md can be reproduced:
1. starts `thingcloud serve` pinned to core 1 (bench/ingest.py's start_server; rate limits off, MQTT
   on a free port, the per-rule firing limit raised) on a fresh database; wrk and this process run
   on core 0;
2. sets up through the public API: the administrator's token, a device type (numeric ``temp``,
   action ``setOn``), N devices with their device tokens, and N rules — rule i reads device i
   (``temp > 99``) and sends ``setOn`` to device i+1 — so each message is a candidate for exactly one
   rule (the engine's index by source device, thingcloud/areas/rules/engine.py); messages carry
   ``temp`` uniform in [0, 100), so about 1 % fire. Every device is connected over MQTT (the bench's
   asyncio client from bench/mqtt.py) and subscribed to its actions topic;
3. rates: for each --rates target, wrk (one thread, --connections, open loop paced by the clock,
   device tokens in turn, same request as bench/ingest.py but with ``temp``) sends messages for
   --duration s while the engine's feed backlog (feed head − the ``rules.engine`` checkpoint) is
   sampled every second; then the time for the backlog to drain. The engine "kept up" with a rate if
   its backlog stayed under two seconds' worth of messages, did not grow during the run, and drained
   within a second after it. For every firing:
   triggering message's commit (its ``cts``) → the action's commit (stored), and → the action's
   arrival at the MQTT device (delivered): p50/p99/max;
4. ingest throughput, exactly bench/ingest.py's load (wrk, 64 connections, as fast as it goes, 2 s
   warm-up, --ingest-duration s per run), with the engine and with THINGCLOUD_RULES_ENGINE=false,
   alternating, --runs times each (a fresh server process per run, same database, MQTT clients
   disconnected); the medians, their ratio, server CPU per 1,000 messages, and how long the engine
   took afterwards to drain what the run left behind.
The engine's checkpoint (/metrics) moves at most once a second while entries flow
(THINGCLOUD_FEED_CHECKPOINT_INTERVAL), so a backlog under about one second's worth of messages means
"up to date". Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import (
    PYTHON,
    cpu_seconds,
    ensure_wrk,
    free_port,
    reset_postgres,
    run_wrk,
    start_server,
    stop,
    wait_up,
    wrk_script,
)
from mqtt import Client, py_spy

PASSWORD = "bench-admin-password"
MANIFEST = {"fields": [{"name": "temp", "valueClass": "Double"}], "actions": [{"name": "setOn"}]}
CONSUMER = "rules.engine"

MESSAGES_LUA = """
local devices = read_devices("%(devices)s")
math.randomseed(1)
local i = 0
request = function()
  i = i + 1
  local d = devices[(i %% #devices) + 1]
  local body = string.format('{"sdid":"%%s","type":"message","data":{"temp":%%.3f}}',
    d[1], math.random() * 100)
  return wrk.format("POST", "/v1.1/messages",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. d[2]}, body)
end
"""


class Server:
    """One `thingcloud serve` on core 1, over the bench's data dir and database."""

    def __init__(self, data_dir: Path, database_url: str, mqtt_port: int, engine: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("THINGCLOUD_")}
        env.update(
            THINGCLOUD_DATA_DIR=str(data_dir),
            THINGCLOUD_DATABASE_URL=database_url,
            THINGCLOUD_ADMIN_PASSWORD=PASSWORD,
            THINGCLOUD_RATE_LIMITS="off",
            THINGCLOUD_MQTT_PORT=str(mqtt_port),
            THINGCLOUD_LOG_LEVEL="WARNING",
            THINGCLOUD_RULE_MAX_FIRINGS_PER_MINUTE="100000",
            THINGCLOUD_RULES_ENGINE="true" if engine else "false",
        )
        self.log = data_dir / f"serve-{self.port}.log"
        self.proc = start_server(
            [PYTHON, "-m", "thingcloud", "serve", "--port", str(self.port)], env, self.log
        )
        wait_up(f"{self.url}/readyz", timeout=120)

    def stop(self) -> None:
        stop(self.proc)

    def checkpoint(self) -> int:
        found = re.search(
            r'thingcloud_feed_checkpoint\{consumer="rules.engine"\} ([0-9.e+]+)',
            httpx.get(f"{self.url}/metrics", timeout=10).text,
        )
        return int(float(found.group(1))) if found else 0


def console_client_id(data_dir: Path) -> str:
    found = re.search(r"client_id ([0-9a-f]{32})", (data_dir / "first-start.txt").read_text())
    assert found
    return found.group(1)


async def setup(url: str, data_dir: Path, devices: int) -> list[tuple[str, str]]:
    """The administrator's fleet and rules; returns [(did, device token)]."""
    form = {
        "grant_type": "password",
        "client_id": console_client_id(data_dir),
        "username": "admin@thingcloud.local",
        "password": PASSWORD,
    }
    async with httpx.AsyncClient(base_url=url + "/v1.1", timeout=60) as c:
        token = (await c.post(url + "/token", data=form)).json()["access_token"]
        c.headers["Authorization"] = f"Bearer {token}"

        async def ok(request: Any) -> Any:
            r = await request
            assert r.status_code == 200, r.text
            return r.json()["data"]

        me = (await ok(c.get("/users/self")))["id"]
        unique = f"com.bench.s{time.time_ns()}"
        dt = await ok(c.post("/devicetypes", json={"name": "Bench sensor", "uniqueName": unique}))
        await ok(c.post(f"/devicetypes/{dt['id']}/manifests", json=MANIFEST))
        gate = asyncio.Semaphore(16)

        async def device(i: int) -> tuple[str, str]:
            async with gate:
                did = (await ok(c.post("/devices", json={"dtid": dt["id"], "name": f"Sensor {i:05d}"})))["id"]
                return did, (await ok(c.put(f"/devices/{did}/tokens")))["accessToken"]

        fleet = list(await asyncio.gather(*(device(i) for i in range(devices))))

        async def rule(i: int) -> None:
            did, target = fleet[i][0], fleet[(i + 1) % len(fleet)][0]
            body = {
                "if": {"and": [{"sdid": did, "field": "temp", "operator": ">", "operand": {"value": 99}}]},
                "then": [{"ddid": target, "action": "setOn"}],
            }
            async with gate:
                await ok(c.post(f"/rules?userId={me}", json={"name": f"Rule {i}", "rule": body}))

        await asyncio.gather(*(rule(i) for i in range(devices)))
    return fleet


class Db:
    """Read-only queries on the server's database (SQLite file or PostgreSQL), on one event loop."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = create_async_engine(url)

    def run(self, sql: str, **params: Any) -> list[Any]:
        async def go() -> list[Any]:
            async with self.engine.connect() as conn:
                return list((await conn.execute(text(sql), params)).all())

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()

    def feed_head(self) -> int:
        return int(self.run("SELECT COALESCE(MAX(seq), 0) FROM feed")[0][0] or 0)

    def firings(self, since_ms: int) -> list[tuple[str, int, int]]:
        """(ddid, triggering message's cts, action's cts) of every action fired since ``since_ms``."""
        rows = self.run(
            "SELECT key, detail FROM rule_firings WHERE fired_on >= :t AND outcome = 'fired'", t=since_ms
        )
        seqs, mids = [], []
        for key, detail in rows:
            detail = json.loads(detail) if isinstance(detail, str) else detail
            if key.startswith("seq:") and detail:
                for action in detail.get("actions", []):
                    if action.get("mid"):
                        seqs.append(int(key[4:]))
                        mids.append(action["mid"])
        out = []
        for i in range(0, len(seqs), 500):
            message_cts = dict(
                self.run(
                    "SELECT f.seq, m.cts FROM feed f JOIN messages m ON m.mid = f.ref "
                    f"WHERE f.seq IN ({','.join(str(s) for s in seqs[i : i + 500])})"
                )
            )
            names = ",".join(f":m{j}" for j in range(len(mids[i : i + 500])))
            actions = {
                mid: (ddid, cts)
                for mid, ddid, cts in self.run(
                    f"SELECT mid, ddid, cts FROM actions WHERE mid IN ({names})",
                    **{f"m{j}": m for j, m in enumerate(mids[i : i + 500])},
                )
            }
            for seq, mid in zip(seqs[i : i + 500], mids[i : i + 500], strict=True):
                if seq in message_cts and mid in actions:
                    out.append((actions[mid][0], int(message_cts[seq]), int(actions[mid][1])))
        return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))])


def drain(server: Server, db: Db, limit: float = 120) -> float:
    """Seconds until the engine's checkpoint reaches the feed head as it is now (limit: give up)."""
    head, started = db.feed_head(), time.monotonic()
    while server.checkpoint() < head and time.monotonic() - started < limit:
        time.sleep(0.05)
    return time.monotonic() - started


def rate_run(
    args: argparse.Namespace,
    server: Server,
    db: Db,
    clients: list[Client],
    devices: Path,
    rate: float,
) -> dict[str, float]:
    """wrk at ``rate`` for --duration s; the engine's backlog each second; firing latencies."""
    script = wrk_script(
        Path(devices.parent / f"rate-{rate:g}.lua"), MESSAGES_LUA % {"devices": devices}, rate
    )
    for c in clients:
        c.received = []
    begin = int(time.time() * 1000)
    result: dict[str, float] = {}
    load = threading.Thread(
        target=lambda: result.update(
            run_wrk(ensure_wrk(), server.url, script, int(args.duration), args.connections)
        )
    )
    spy = None
    if args.profile:  # py-spy samples the server during each rate's run
        command = [py_spy(), "record", "-p", str(server.proc.pid), "-d", str(max(1, int(args.duration) - 1))]
        command += ["-r", "200", "-f", "raw", "-o", f"{args.profile}-{rate:g}.raw", "--nonblocking"]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load.start()
    backlog: list[int] = []
    while load.is_alive():
        time.sleep(1.0)
        backlog.append(max(0, db.feed_head() - server.checkpoint()))
    load.join()
    if spy:
        spy.wait()
    drained = drain(server, db)
    time.sleep(1.0)  # the last MQTT deliveries
    fired = db.firings(begin)
    stored = [float(action - message) for _, message, action in fired]
    # Each device gets its actions in commit order: the k-th arrival at a device is its k-th action.
    delivered: list[float] = []
    arrivals = {c.did: sorted(c.received) for c in clients}
    by_device: dict[str, list[int]] = {}
    for ddid, message, _ in sorted(fired, key=lambda f: f[2]):
        by_device.setdefault(ddid, []).append(message)
    missing = 0
    for ddid, messages in by_device.items():
        got = arrivals.get(ddid, [])
        missing += max(0, len(messages) - len(got))
        delivered += [at - m for at, m in zip(got, messages, strict=False)]
    half = len(backlog) // 2
    grew = (
        bool(backlog)
        and half > 0
        and statistics.fmean(backlog[half:]) > 2 * statistics.fmean(backlog[:half]) + rate
    )
    return {
        "rate": rate,
        "achieved": result["rps"],
        "post_p99": result["p99_ms"],
        "backlog_max": max(backlog, default=0),
        "backlog_end": backlog[-1] if backlog else 0,
        "drain_s": drained,
        # kept up: never more than ~2 s behind (the checkpoint moves once a second), not growing, and
        # caught up within a second of the last message
        "kept_up": float(not grew and drained < 1.0 and max(backlog, default=0) <= 2 * result["rps"]),
        "firings": len(fired),
        "stored_p50": pct(stored, 50),
        "stored_p99": pct(stored, 99),
        "stored_max": max(stored, default=float("nan")),
        "delivered_p50": pct(delivered, 50),
        "delivered_p99": pct(delivered, 99),
        "delivered_max": max(delivered, default=float("nan")),
        "missing": missing,
    }


def throughput_run(
    args: argparse.Namespace, data_dir: Path, db: Db, devices: Path, engine: bool
) -> dict[str, float]:
    """bench/ingest.py's load on a fresh server process (with or without the engine)."""
    server = Server(data_dir, args.database_url, free_port(), engine)
    try:
        script = wrk_script(data_dir / "max.lua", MESSAGES_LUA % {"devices": devices})
        wrk = ensure_wrk()
        run_wrk(wrk, server.url, script, 2, 64)  # warm-up
        if engine:
            drain(server, db)
        cpu = cpu_seconds(server.proc.pid)
        result = run_wrk(wrk, server.url, script, args.ingest_duration, 64)
        result["cpu_ms_per_1k"] = (cpu_seconds(server.proc.pid) - cpu) * 1e6 / max(1.0, result["requests"])
        result["drain_s"] = drain(server, db) if engine else 0.0
    finally:
        server.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000, help="devices, and rules (one per device)")
    parser.add_argument("--rates", default="500,1000,2000,3000", help="target message rates, comma-separated")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for the paced rates")
    parser.add_argument("--ingest-duration", type=int, default=10, help="seconds per ingest throughput run")
    parser.add_argument(
        "--runs", type=int, default=3, help="ingest throughput runs with and without the engine"
    )
    parser.add_argument(
        "--database-url", default="", help="PostgreSQL URL (its schema is wiped); default SQLite"
    )
    parser.add_argument("--profile", default="", help="py-spy raw profiles of the server, PREFIX-<rate>.raw")
    parser.add_argument(
        "--quick", action="store_true", help="small scale: 100 devices, rates 100,500 for 10 s, 1 run of 5 s"
    )
    args = parser.parse_args()
    if args.quick:
        args.devices, args.rates, args.duration, args.ingest_duration, args.runs = 100, "100,500", 10, 5, 1

    work = Path(tempfile.mkdtemp(prefix="bench-rules-"))
    data_dir = work / "data"
    data_dir.mkdir()
    database_url = args.database_url or f"sqlite+aiosqlite:///{data_dir / 'thingcloud.db'}"
    if args.database_url:
        reset_postgres(args.database_url)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})  # this process (MQTT clients) and wrk on core 0; the server on 1
    mqtt_port = free_port()
    server = Server(data_dir, args.database_url, mqtt_port, engine=True)
    print(f"setting up {args.devices} devices and rules ...", file=sys.stderr)
    fleet = asyncio.run(setup(server.url, data_dir, args.devices))
    devices = work / "devices.txt"
    devices.write_text("".join(f"{did} {token}\n" for did, token in fleet))
    db = Db(database_url)

    # MQTT clients on their own event loop in a thread, so that this thread can block on wrk.
    loop = asyncio.new_event_loop()
    clients = [Client(did, token) for did, token in fleet]

    async def connect() -> None:
        for c in clients:
            await c.connect(mqtt_port)
            await c.subscribe(f"/v1.1/actions/{c.did}")
            c.start_reading()

    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(connect(), loop).result()
    rows = []
    try:
        warm = wrk_script(work / "warm.lua", MESSAGES_LUA % {"devices": devices}, 200)
        run_wrk(ensure_wrk(), server.url, warm, 3, args.connections)
        drain(server, db)
        for rate in [float(r) for r in args.rates.split(",") if r]:
            print(f"rate {rate:g} msg/s ...", file=sys.stderr)
            rows.append(rate_run(args, server, db, clients, devices, rate))
    finally:
        for c in clients:
            loop.call_soon_threadsafe(c.writer.close)
        server.stop()
    throughput: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.runs):
        for engine in (True, False):
            print(f"ingest throughput, engine {'on' if engine else 'off'} ...", file=sys.stderr)
            throughput[engine].append(throughput_run(args, data_dir, db, devices, engine))
    db.close()

    print(
        f"\n{args.devices} rules over {args.devices} devices, ~1 % of messages fire; "
        f"{'PostgreSQL' if args.database_url else 'SQLite'}; wrk {args.connections} connections, "
        f"{args.duration:g} s per rate; commit = the triggering message's commit (cts)\n"
    )
    header = [
        "target msg/s",
        "achieved",
        "POST p99 ms",
        "engine backlog max (entries / s)",
        "drain after (s)",
    ]
    header += ["kept up"]
    header += [
        "firings",
        "commit→action stored p50/p99/max ms",
        "commit→MQTT device p50/p99/max ms",
        "missing",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for r in rows:
        cells = [
            f"{r['rate']:.0f}",
            f"{r['achieved']:.0f}",
            f"{r['post_p99']:.1f}",
            f"{r['backlog_max']:.0f} / {r['backlog_max'] / max(1.0, r['achieved']):.1f}",
            f"{r['drain_s']:.2f}",
            "yes" if r["kept_up"] else "no",
            f"{r['firings']:.0f}",
            f"{r['stored_p50']:.0f} / {r['stored_p99']:.0f} / {r['stored_max']:.0f}",
            f"{r['delivered_p50']:.0f} / {r['delivered_p99']:.0f} / {r['delivered_max']:.0f}",
            f"{r['missing']:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")
    kept = [r["achieved"] for r in rows if r["kept_up"]]
    print(
        f"\nhighest rate kept up with: {max(kept):.0f} msg/s" if kept else "\nthe engine kept up with no rate"
    )

    if not args.runs:
        print(f"(work directory: {work})", file=sys.stderr)
        return

    def med(engine: bool, key: str) -> float:
        return statistics.median(r[key] for r in throughput[engine])

    on, off = med(True, "rps"), med(False, "rps")
    print(
        f"\ningest throughput (bench/ingest.py's load: wrk, 64 connections, {args.ingest_duration} s, "
        f"median of {args.runs})\n"
    )
    print("| engine | msg/s | runs | p50 ms | p99 ms | server CPU ms / 1k msg | engine drain after (s) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for engine in (True, False):
        runs = " / ".join(f"{r['rps']:.0f}" for r in throughput[engine])
        drained = f"{med(engine, 'drain_s'):.1f}" if engine else "—"
        print(
            f"| {'on' if engine else 'off'} | {med(engine, 'rps'):.0f} | {runs} "
            f"| {med(engine, 'p50_ms'):.1f} | {med(engine, 'p99_ms'):.1f} "
            f"| {med(engine, 'cpu_ms_per_1k'):.0f} | {drained} |"
        )
    print(f"\nwith the engine: {(on / off - 1) * 100:+.1f} % msg/s (goal: no more than 10 % lower)")
    print(f"(work directory: {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
