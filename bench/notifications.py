"""Notification benchmark: N active subscriptions, messages at R msg/s with batching, then actions.

    .venv/bin/python bench/notifications.py                  # SQLite, full size (~13 min)
    .venv/bin/python bench/notifications.py --quick          # the same at small scale (~1.5 min)
    .venv/bin/python bench/notifications.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench

What it does (issue 9, "Performance"):
1. starts `thingcloud serve` pinned to core 1 (bench/ingest.py's start_server) on a fresh database
   with THINGCLOUD_ALLOW_INSECURE_CALLBACKS=1, rate limits off, the given batch window; everything
   else (the callback receiver, wrk, this process) runs on core 0;
2. starts the callback receiver in its own process (this file with --receive): a bare asyncio HTTP
   server that answers every POST at once with 200 and appends "arrival-ms body" to a file; this
   process reads that file to validate each subscription's nonce and to time the notifications.
   (The receiver used to be a uvicorn app inside this process, starved by the load generator: every
   delivery of the first full run timed out at it.)
3. creates a user, an application, a device type, N devices and one `sdid` subscription per device
   (every message then matches exactly one subscription), plus M devices with one `ddid` action
   subscription each, and validates them all;
4. phase "messages": wrk (one thread, pinned to core 0, open loop paced by the clock) POSTs R msg/s
   spread over the N devices for DURATION s, each message's `ts` its send time. Every --report-every
   seconds a row: notifications received, their lag (arrival − endDate, i.e. after the newest message
   they cover) p50/p99/max, the subscription consumer's feed backlog (entries not yet matched; its
   checkpoint moves at most once a second, so up to about R entries means "up to date"), and the
   delivery jobs that are due but not done (overdue by > 1 s) with the oldest one's age. A
   backlog that keeps growing shows in the last two columns; at the end, the rows of the first and
   the second half are compared;
5. phase "actions": A actions/s (this process, httpx, open loop) spread over the M devices;
   p50/p99/max from the 200 of POST /actions (the commit) to the callback's arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import (
    PYTHON,
    ensure_wrk,
    free_port,
    percentile,
    reset_postgres,
    run_wrk,
    start_server,
    stop,
    wait_up,
    wrk_script,
)

MANIFEST = {"fields": [{"name": "v", "valueClass": "Double"}], "actions": [{"name": "setOn"}]}
OVERDUE_MS = 1000

MESSAGES_LUA = """
local devices = read_devices("%(devices)s")
local i = 0
request = function()
  i = i + 1
  local body = string.format('{"sdid":"%%s","ts":%%d,"type":"message","data":{"v":%%d}}',
    devices[(i %% #devices) + 1][1], math.floor(now_us() / 1000), i)
  return wrk.format("POST", "/v1.1/messages",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(token)s"}, body)
end
"""


# --- the callback receiver (its own process) --------------------------------------------------------


def receive(port: int, out_path: str) -> None:
    """Answer every POST with 200 at once; append "<arrival ms> <body on one line>" to ``out_path``."""

    out = open(out_path, "ab", buffering=0)  # noqa: SIM115 (the process's lifetime)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                arrived = time.time() * 1000
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
                out.write(b"%.1f %s\n" % (arrived, body.replace(b"\n", b" ")))
                await writer.drain()
                if b"connection: close" in head.lower():
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class Arrivals:
    """Reads the receiver's file as it grows: [(arrival ms, notification or confirmation)]."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> list[tuple[float, dict[str, Any]]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            at, _, body = line.partition(b" ")
            out.append((float(at), json.loads(body)))
        return out


# --- setup --------------------------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [PYTHON, "-m", "thingcloud", *args], env=env, check=True, capture_output=True, text=True
    ).stdout


async def setup(
    base: str, env: dict[str, str], callback: str, arrivals: Arrivals, devices: int, actions: int
) -> tuple[str, list[str], list[str]]:
    """User, app, device type, devices, subscriptions; every confirmation's nonce validated."""
    email, password = "bench@example.com", "bench-password-1"
    cli(env, "users", "create", "--email", email, "--password", password)
    app = json.loads(
        cli(
            env,
            *("apps", "create", "--name", "bench", "--owner", email),
            *("--redirect-uri", "http://127.0.0.1/cb", "--password-grant"),
        )
    )
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        token = (
            await c.post(
                "/token",
                data={"grant_type": "password", "username": email, "password": password},
                auth=(app["client_id"], app["client_secret"]),
            )
        ).json()["access_token"]
        c.headers["Authorization"] = f"Bearer {token}"
        dt = await c.post(
            "/v1.1/devicetypes", json={"name": "Bench", "uniqueName": f"com.example.n{time.time_ns()}"}
        )
        dt.raise_for_status()
        dtid = dt.json()["data"]["id"]
        (await c.post(f"/v1.1/devicetypes/{dtid}/manifests", json=MANIFEST)).raise_for_status()
        limit = asyncio.Semaphore(16)

        async def one(i: int, kind: str) -> str:
            async with limit:
                d = await c.post("/v1.1/devices", json={"dtid": dtid, "name": f"bench device {i:05d}"})
                d.raise_for_status()
                did = d.json()["data"]["id"]
                body: dict[str, Any] = {"messageType": kind, "uid": d.json()["data"]["uid"]}
                body["callbackUrl"] = callback
                body["sdid" if kind == "message" else "ddid"] = did
                (await c.post("/v1.1/subscriptions", json=body)).raise_for_status()
                return str(did)

        message_dids = await asyncio.gather(*(one(i, "message") for i in range(devices)))
        action_dids = await asyncio.gather(*(one(devices + i, "action") for i in range(actions)))

        validated, deadline = 0, time.monotonic() + 300
        while validated < devices + actions:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {validated} of {devices + actions} subscriptions validated")
            for _, body in arrivals.read():
                if "nonce" in body:
                    r = await c.post(
                        f"/v1.1/subscriptions/{body['subscriptionId']}/validate",
                        json={"aid": body["aid"], "nonce": body["nonce"]},
                    )
                    r.raise_for_status()
                    validated += 1
            await asyncio.sleep(0.2)
    return token, list(message_dids), list(action_dids)


# --- what the server says about its backlog ------------------------------------------------------------


class Backlog:
    """The subscription consumer's feed backlog (feed head − its checkpoint) and the overdue
    delivery jobs, read from the server's database (read-only) and /metrics."""

    def __init__(self, base: str, database_url: str) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        self.base = base
        self.loop = asyncio.new_event_loop()  # the engine's connections live on this loop
        self.engine = create_async_engine(database_url)

    def sample(self) -> dict[str, float]:
        return self.loop.run_until_complete(self._sample())

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()

    async def _sample(self) -> dict[str, float]:
        from sqlalchemy import text

        now = time.time() * 1000
        async with httpx.AsyncClient(timeout=10) as client:
            metrics = (await client.get(f"{self.base}/metrics")).text
        found = re.search(r'thingcloud_feed_checkpoint\{consumer="subscriptions"\} ([0-9.e+]+)', metrics)
        checkpoint = float(found.group(1)) if found else 0.0
        async with self.engine.connect() as conn:
            head = (await conn.execute(text("SELECT COALESCE(MAX(seq), 0) FROM feed"))).scalar() or 0
            overdue, oldest = (
                await conn.execute(
                    text(
                        "SELECT COUNT(*), MIN(run_at) FROM jobs WHERE kind = 'subscriptions.deliver' "
                        "AND status IN ('queued', 'failed', 'running') AND run_at < :due"
                    ),
                    {"due": now - OVERDUE_MS},
                )
            ).one()
            retried = (
                await conn.execute(
                    text("SELECT COUNT(*) FROM jobs WHERE kind = 'subscriptions.deliver' AND attempts > 1")
                )
            ).scalar()
            suspended = (
                await conn.execute(text("SELECT COUNT(*) FROM subscriptions WHERE status = 'SUSPENDED'"))
            ).scalar()
        return {
            "feed_backlog": max(0.0, float(head) - checkpoint),
            "overdue": float(overdue or 0),
            "oldest_overdue_s": (now - float(oldest)) / 1000 if oldest else 0.0,
            "retried": float(retried or 0),
            "suspended": float(suspended or 0),
        }


# --- the phases ------------------------------------------------------------------------------------------


def messages_phase(
    args: argparse.Namespace,
    base: str,
    token: str,
    dids: list[str],
    arrivals: Arrivals,
    backlog: Backlog,
    data_dir: Path,
) -> None:
    print(
        f"\nmessages: {args.rate:g} msg/s (wrk, open loop) over {len(dids)} subscriptions for "
        f"{args.duration:g} s, batch window {args.batch_seconds:g} s; expected ≈ "
        f"{len(dids) / args.batch_seconds:.1f} notifications/s once every subscription has had its first"
    )
    devices = data_dir / "message-devices.txt"
    devices.write_text("".join(f"{d}\n" for d in dids))
    script = wrk_script(
        data_dir / "messages.lua", MESSAGES_LUA % {"devices": devices, "token": token}, args.rate
    )
    result: dict[str, float] = {}

    def load() -> None:
        result.update(run_wrk(ensure_wrk(), base, script, int(args.duration), args.connections))

    wrk = threading.Thread(target=load)
    start = time.monotonic()
    wrk.start()
    header = "| t (s) | notifications | lag p50 (ms) | lag p99 (ms) | lag max (ms) | feed backlog (entries) "
    header += "| overdue deliveries | oldest overdue (s) | retried | suspended |"
    print(header)
    print("|" + "---|" * 10)
    rows: list[dict[str, float]] = []
    arrivals.read()
    end = args.duration + args.batch_seconds + 5
    while (elapsed := time.monotonic() - start) < end or wrk.is_alive():
        time.sleep(max(0.0, args.report_every * (len(rows) + 1) - elapsed))
        window = [(at, n) for at, n in arrivals.read() if n.get("type") == "message"]
        lags = [at - n["endDate"] for at, n in window]
        row = {"t": time.monotonic() - start, "n": len(window), **backlog.sample()}
        row |= {"p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99), "max": max(lags, default=0)}
        rows.append(row)
        print(
            f"| {row['t']:.0f} | {row['n']:.0f} | {row['p50']:.0f} | {row['p99']:.0f} | {row['max']:.0f} "
            f"| {row['feed_backlog']:.0f} | {row['overdue']:.0f} | {row['oldest_overdue_s']:.1f} "
            f"| {row['retried']:.0f} | {row['suspended']:.0f} |",
            flush=True,
        )
    wrk.join()
    print(
        f"\nwrk: {result['requests']:.0f} messages, {result['rps']:.0f} msg/s achieved "
        f"(asked {args.rate:g}), POST p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"{result['non_2xx']:.0f} non-2xx, {result['socket_errors']:.0f} socket errors"
    )
    loaded = [r for r in rows if args.batch_seconds < r["t"] <= args.duration]
    if len(loaded) >= 4:
        half = len(loaded) // 2
        first, second = loaded[:half], loaded[half:]

        def mean(rs: list[dict[str, float]], key: str) -> float:  # over the rows that have a value
            values = [r[key] for r in rs if r[key] == r[key]]
            return statistics.fmean(values) if values else float("nan")

        print(
            "under load, first half → second half (means of the rows): "
            f"notifications/row {mean(first, 'n'):.0f} → {mean(second, 'n'):.0f}, "
            f"lag p99 {mean(first, 'p99'):.0f} → {mean(second, 'p99'):.0f} ms, "
            f"feed backlog {mean(first, 'feed_backlog'):.0f} → {mean(second, 'feed_backlog'):.0f}, "
            f"overdue deliveries {mean(first, 'overdue'):.0f} → {mean(second, 'overdue'):.0f}"
        )
        grows = mean(second, "overdue") > mean(first, "overdue") + 10 or mean(second, "feed_backlog") > max(
            2 * mean(first, "feed_backlog"), args.rate
        )
        print(f"backlog growing: {'YES' if grows else 'no'}")


async def actions_phase(
    args: argparse.Namespace, base: str, token: str, dids: list[str], arrivals: Arrivals
) -> None:
    if not dids:
        return
    print(
        f"\nactions: {args.action_rate:g} actions/s (httpx, open loop) over {len(dids)} subscriptions "
        f"for {args.action_duration:g} s"
    )
    committed: dict[tuple[str, int], float] = {}
    sent_at: dict[tuple[str, int], float] = {}
    last_ts = 0
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as c:

        async def send(i: int) -> None:
            nonlocal last_ts, errors
            ts = max(int(time.time() * 1000), last_ts + 1)  # unique: (ddid, startDate) names the action
            last_ts = ts
            ddid = dids[i % len(dids)]
            body = {"ddid": ddid, "ts": ts, "data": {"actions": [{"name": "setOn", "parameters": {}}]}}
            sent_at[(ddid, ts)] = time.time() * 1000
            r = await c.post("/v1.1/actions", json=body)
            if r.status_code == 200:
                committed[(ddid, ts)] = time.time() * 1000
            else:
                errors += 1

        arrivals.read()
        tasks: set[asyncio.Task[None]] = set()
        start, i = time.monotonic(), 0
        while (elapsed := time.monotonic() - start) < args.action_duration:
            while i < int(elapsed * args.action_rate):
                task = asyncio.create_task(send(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(0.002)
        achieved = i / (time.monotonic() - start)
        if tasks:
            await asyncio.gather(*tasks)
    expected = len(committed)
    latencies: list[float] = []
    from_send: list[float] = []
    deadline = time.monotonic() + 30
    while len(latencies) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        for at, n in arrivals.read():
            key = (n.get("subscriptionQuery", {}).get("ddid"), n.get("startDate"))
            if n.get("type") == "action" and key in committed:
                latencies.append(at - committed[key])
                from_send.append(at - sent_at[key])
    print(
        f"{i} sent ({achieved:.0f}/s), {expected} committed, {errors} errors, {len(latencies)} notified "
        f"({expected - len(latencies)} missing after 30 s)"
    )
    if latencies:
        print(
            f"commit (POST 200) → callback: p50 {statistics.median(latencies):.0f} ms, "
            f"p99 {percentile(latencies, 0.99):.0f} ms, max {max(latencies):.0f} ms "
            f"(goal p99 ≤ 1000 ms: {'met' if percentile(latencies, 0.99) <= 1000 else 'MISSED'}); "
            f"from the POST's send: p99 {percentile(from_send, 0.99):.0f} ms"
        )


def run(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tc-notif-bench-"))
    port, receiver_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    database_url = args.database_url or f"sqlite+aiosqlite:///{data_dir / 'thingcloud.db'}"
    env = {
        **os.environ,
        "THINGCLOUD_DATA_DIR": str(data_dir),
        "THINGCLOUD_DATABASE_URL": args.database_url,
        "THINGCLOUD_RATE_LIMITS": "off",
        "THINGCLOUD_ADMIN_PASSWORD": "bench-admin-password",
        "THINGCLOUD_ALLOW_INSECURE_CALLBACKS": "1",
        "THINGCLOUD_NOTIFICATION_BATCH_SECONDS": str(args.batch_seconds),
        "THINGCLOUD_MQTT_ENABLED": "false",
        "THINGCLOUD_LOG_LEVEL": "WARNING",
    }
    if args.job_concurrency:
        env["THINGCLOUD_JOB_CONCURRENCY"] = str(args.job_concurrency)
    if args.database_url.startswith("postgresql"):
        reset_postgres(args.database_url)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})  # this process, the receiver and wrk on core 0; the server on 1
    received = data_dir / "received.txt"
    receiver = subprocess.Popen(
        ["taskset", "-c", "0", PYTHON, __file__, "--receive", str(receiver_port), str(received)]
    )
    server = start_server(
        [PYTHON, "-m", "thingcloud", "serve", "--port", str(port)], env, data_dir / "server.log"
    )
    try:
        wait_up(f"{base}/readyz")
        arrivals = Arrivals(received)
        callback = f"http://127.0.0.1:{receiver_port}/cb"
        token, message_dids, action_dids = asyncio.run(
            setup(base, env, callback, arrivals, args.subscriptions, args.action_subscriptions)
        )
        print(
            f"setup: {len(message_dids)} message and {len(action_dids)} action subscriptions active "
            f"({'PostgreSQL' if args.database_url else 'SQLite'}, job concurrency "
            f"{args.job_concurrency or 'default'})"
        )
        backlog = Backlog(base, database_url)
        if args.duration > 0:
            messages_phase(args, base, token, message_dids, arrivals, backlog, data_dir)
        asyncio.run(actions_phase(args, base, token, action_dids, arrivals))
        print(f"\nat the end: {json.dumps(backlog.sample())}")
        backlog.close()
    finally:
        stop(server)
        receiver.terminate()
        receiver.wait(timeout=10)
        print(f"server log: {data_dir / 'server.log'}")
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--receive":
        receive(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url", default="", help="PostgreSQL URL (its schema is wiped); default SQLite"
    )
    parser.add_argument(
        "--subscriptions", type=int, default=1000, help="message subscriptions (one device each)"
    )
    parser.add_argument("--rate", type=float, default=1000, help="messages per second")
    parser.add_argument("--duration", type=float, default=600, help="seconds of message load")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for the messages")
    parser.add_argument("--batch-seconds", type=float, default=30)
    parser.add_argument("--report-every", type=float, default=10, help="seconds between rows")
    parser.add_argument("--action-subscriptions", type=int, default=100)
    parser.add_argument("--action-rate", type=float, default=100, help="actions per second")
    parser.add_argument("--action-duration", type=float, default=60)
    parser.add_argument(
        "--job-concurrency", type=int, default=0, help="THINGCLOUD_JOB_CONCURRENCY (default: the server's)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (database, server log)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small scale (~1.5 min): 50 subscriptions, 100 msg/s for 40 s, 5 s batches, "
        "20 actions/s for 15 s",
    )
    args = parser.parse_args()
    if args.quick:
        args.subscriptions, args.rate, args.duration, args.batch_seconds = 50, 100, 40, 5
        args.action_subscriptions, args.action_rate, args.action_duration, args.report_every = 10, 20, 15, 5
    run(args)


if __name__ == "__main__":
    main()
