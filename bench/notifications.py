"""Notification benchmark: N active subscriptions, messages at R msg/s with batching, then actions.

    .venv/bin/python bench/notifications.py                                  # SQLite, full size
    .venv/bin/python bench/notifications.py --subscriptions 20 --rate 50 --duration 20 \\
        --action-subscriptions 5 --action-rate 10 --action-duration 10 --batch-seconds 5   # a quick check
    .venv/bin/python bench/notifications.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench

What it does:
1. starts `thingcloud serve` on a fresh database with THINGCLOUD_ALLOW_INSECURE_CALLBACKS=1, rate
   limits off and the given batch window / job concurrency;
2. starts a callback receiver (uvicorn, 127.0.0.1, in this process) that validates every
   subscription's nonce as soon as the confirmation arrives and records each notification's arrival;
3. creates a user, an application, a device type, N devices and one `sdid` subscription per device
   (every message then matches exactly one subscription), plus M devices with one `ddid` action
   subscription each;
4. phase "messages": R msg/s spread over the N devices for DURATION s; every 10 s it prints the
   notifications received, their delivery lag (arrival − endDate, where endDate is the newest
   message's client ts = its send time) p50/p99/max, and the server's queued delivery jobs — a
   backlog that keeps growing shows as a rising lag and queue;
5. phase "actions": A actions/s spread over the M devices; prints p50/p99/max from the 200 of
   POST /actions (the commit) to the callback's arrival.
The load generator is this Python process (httpx, asyncio); at full rate run it on its own core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PYTHON = sys.executable
MANIFEST = {"fields": [{"name": "v", "valueClass": "Double"}], "actions": [{"name": "setOn"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


class Receiver:
    """Validates confirmations at once and records (arrival ms, notification) for the rest."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.port = free_port()
        self.notifications: list[tuple[int, dict[str, Any]]] = []
        self.validated = 0
        self.client = httpx.AsyncClient(base_url=api, timeout=30)
        app = Starlette(routes=[Route("/cb", self.handle, methods=["POST"])])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        )

    async def handle(self, request: Request) -> Response:
        now = int(time.time() * 1000)
        body = json.loads(await request.body())
        if "nonce" in body:
            asyncio.get_running_loop().create_task(self.validate(body))
        else:
            self.notifications.append((now, body))
        return Response("ok")

    async def validate(self, body: dict[str, Any]) -> None:
        response = await self.client.post(
            f"/v1.1/subscriptions/{body['subscriptionId']}/validate",
            json={"aid": body["aid"], "nonce": body["nonce"]},
        )
        response.raise_for_status()
        self.validated += 1


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [PYTHON, "-m", "thingcloud", *args], env=env, check=True, capture_output=True, text=True
    ).stdout


async def setup(base: str, env: dict[str, str], receiver: Receiver, devices: int, actions: int) -> Any:
    email, password = "bench@example.com", "bench-password-1"
    cli(env, "users", "create", "--email", email, "--password", password)
    app = json.loads(
        cli(
            env,
            "apps",
            "create",
            "--name",
            "bench",
            "--owner",
            email,
            "--redirect-uri",
            "http://127.0.0.1/cb",
            "--password-grant",
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
            "/v1.1/devicetypes", json={"name": "Bench", "uniqueName": f"com.example.n{int(time.time())}"}
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
                body: dict[str, Any] = {
                    "messageType": kind,
                    "uid": d.json()["data"]["uid"],
                    "callbackUrl": f"http://127.0.0.1:{receiver.port}/cb",
                }
                body["sdid" if kind == "message" else "ddid"] = did
                s = await c.post("/v1.1/subscriptions", json=body)
                s.raise_for_status()
                return str(did)

        message_dids = await asyncio.gather(*(one(i, "message") for i in range(devices)))
        action_dids = await asyncio.gather(*(one(devices + i, "action") for i in range(actions)))
    deadline = time.monotonic() + 120
    while receiver.validated < devices + actions:
        assert time.monotonic() < deadline, f"only {receiver.validated} subscriptions validated"
        await asyncio.sleep(0.2)
    return token, list(message_dids), list(action_dids)


async def queued_deliveries(c: httpx.AsyncClient) -> str:
    text = (await c.get("/metrics")).text
    found = re.findall(
        r'thingcloud_jobs_queue_depth\{kind="subscriptions.deliver",status="(\w+)"\} ([0-9.e+]+)', text
    )
    return ", ".join(f"{status}={float(v):.0f}" for status, v in found) or "none"


async def drive(c: httpx.AsyncClient, rate: float, duration: float, send: Any) -> int:
    """Call ``send(i)`` ``rate`` times a second for ``duration`` seconds (open loop)."""
    tasks: set[asyncio.Task[Any]] = set()
    start, i = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < duration:
        due = int(elapsed * rate)
        while i < due:
            task = asyncio.create_task(send(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(0.005)
    if tasks:
        await asyncio.gather(*tasks)
    return i


async def run(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tc-notif-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "THINGCLOUD_DATA_DIR": str(data_dir),
        "THINGCLOUD_DATABASE_URL": args.database_url,
        "THINGCLOUD_RATE_LIMITS": "off",
        "THINGCLOUD_ADMIN_PASSWORD": "bench-admin-password",
        "THINGCLOUD_ALLOW_INSECURE_CALLBACKS": "1",
        "THINGCLOUD_NOTIFICATION_BATCH_SECONDS": str(args.batch_seconds),
        "THINGCLOUD_JOB_CONCURRENCY": str(args.job_concurrency),
        "THINGCLOUD_LOG_LEVEL": "WARNING",
    }
    if args.database_url.startswith("postgresql"):
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(args.database_url)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await engine.dispose()
    log = (data_dir / "server.log").open("wb")
    server = subprocess.Popen(  # noqa: ASYNC220 (started once, before any load)
        [PYTHON, "-m", "thingcloud", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    receiver = Receiver(base)
    serving = asyncio.create_task(receiver.server.serve())
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            for _ in range(600):
                try:
                    if (await c.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            token, message_dids, action_dids = await setup(
                base, env, receiver, args.subscriptions, args.action_subscriptions
            )
            c.headers["Authorization"] = f"Bearer {token}"
            print(f"setup: {len(message_dids)} message and {len(action_dids)} action subscriptions active")
            await messages_phase(args, c, receiver, message_dids)
            await actions_phase(args, c, receiver, action_dids)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        receiver.server.should_exit = True
        await serving
        await receiver.client.aclose()
        print(f"server log: {data_dir / 'server.log'}")


async def messages_phase(
    args: argparse.Namespace, c: httpx.AsyncClient, receiver: Receiver, dids: list[str]
) -> None:
    print(
        f"\nmessages: {args.rate:g} msg/s over {len(dids)} subscriptions for {args.duration:g} s, "
        f"batch window {args.batch_seconds:g} s"
    )
    print("| t (s) | sent | notifications | lag p50 (ms) | lag p99 (ms) | lag max (ms) | delivery jobs |")
    print("|---|---|---|---|---|---|---|")
    sent = 0
    errors = 0
    last_ts = 0

    async def send(i: int) -> None:
        nonlocal sent, errors, last_ts
        ts = max(int(time.time() * 1000), last_ts + 1)  # unique, so endDate identifies a send
        last_ts = ts
        r = await c.post("/v1.1/messages", json={"sdid": dids[i % len(dids)], "ts": ts, "data": {"v": i}})
        sent += 1
        errors += r.status_code != 200

    start = time.monotonic()
    seen = len(receiver.notifications)
    driver = asyncio.create_task(drive(c, args.rate, args.duration, send))
    while not driver.done() or time.monotonic() - start < args.duration + args.batch_seconds + 5:
        await asyncio.sleep(10)
        window = receiver.notifications[seen:]
        seen = len(receiver.notifications)
        lags = [float(at - n["endDate"]) for at, n in window if n["type"] == "message"]
        print(
            f"| {time.monotonic() - start:.0f} | {sent} | {len(window)} | {percentile(lags, 0.5):.0f} | "
            f"{percentile(lags, 0.99):.0f} | {max(lags, default=float('nan')):.0f} | "
            f"{await queued_deliveries(c)} |"
        )
    await driver
    print(f"sent {sent} messages ({errors} errors)")


async def actions_phase(
    args: argparse.Namespace, c: httpx.AsyncClient, receiver: Receiver, dids: list[str]
) -> None:
    if not dids:
        return
    print(
        f"\nactions: {args.action_rate:g} actions/s over {len(dids)} subscriptions "
        f"for {args.action_duration:g} s"
    )
    committed: dict[tuple[str, int], float] = {}
    last_ts = 0

    async def send(i: int) -> None:
        nonlocal last_ts
        ts = max(int(time.time() * 1000), last_ts + 1)
        last_ts = ts
        ddid = dids[i % len(dids)]
        r = await c.post(
            "/v1.1/actions",
            json={"ddid": ddid, "ts": ts, "data": {"actions": [{"name": "setOn", "parameters": {}}]}},
        )
        if r.status_code == 200:
            committed[(ddid, ts)] = time.time() * 1000

    seen = len(receiver.notifications)
    await drive(c, args.action_rate, args.action_duration, send)
    await asyncio.sleep(5)
    latencies = [
        at - committed[(n["subscriptionQuery"]["ddid"], n["startDate"])]
        for at, n in receiver.notifications[seen:]
        if n["type"] == "action" and (n["subscriptionQuery"].get("ddid"), n["startDate"]) in committed
    ]
    print(f"{len(committed)} actions committed, {len(latencies)} notified")
    if latencies:
        print(
            f"commit → callback: p50 {statistics.median(latencies):.0f} ms, "
            f"p99 {percentile(latencies, 0.99):.0f} ms, "
            f"max {max(latencies):.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument(
        "--subscriptions", type=int, default=1000, help="message subscriptions (one device each)"
    )
    parser.add_argument("--rate", type=float, default=1000, help="messages per second")
    parser.add_argument("--duration", type=float, default=600, help="seconds of message load")
    parser.add_argument("--batch-seconds", type=float, default=30)
    parser.add_argument("--action-subscriptions", type=int, default=100)
    parser.add_argument("--action-rate", type=float, default=100, help="actions per second")
    parser.add_argument("--action-duration", type=float, default=60)
    parser.add_argument("--job-concurrency", type=int, default=32, help="THINGCLOUD_JOB_CONCURRENCY")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
