"""Live channels benchmark (issue 6): device channel ingest, /live end-to-end latency, idle memory.

    .venv/bin/python bench/live.py ingest                 # /websocket ingest with ack, 1,000 devices
    .venv/bin/python bench/live.py e2e                    # POST /messages → /live frame, 1,000 msg/s
    .venv/bin/python bench/live.py e2e --two-nodes --database-url postgresql+asyncpg://…/tc_livebench
    .venv/bin/python bench/live.py memory                 # RSS per idle /live socket, 10,000 sockets
    (each accepts --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/<db>; default SQLite)

What it does, so anyone can reproduce the figures in BENCHMARKS.md on one machine:
1. starts `thingcloud serve` pinned to the server cores (taskset -c 1) on a fresh database (the
   PostgreSQL schema is wiped; SQLite is a new file in a temp dir), rate limits `default`; with
   `--two-nodes` two nodes on the same PostgreSQL database and the NATS server at --nats-url (a subject
   prefix of this run); this process (the load generator and the WebSocket clients) runs pinned to
   the client cores (taskset -c 0);
2. sets up through the CLI and the public API: a user, a password-grant application, a device type
   with 5 numeric fields, the devices and their device tokens;
3. runs one scenario:
   * `ingest`: the devices registered (each with its own token) over --sockets `/v1.1/websocket?ack=true`
     sockets; each socket keeps --window messages in flight (the next one is sent when an ack comes);
     for --duration seconds after a warm-up: acked msg/s, p50/p99 ack latency (send → ack), errors;
   * `e2e`: one `/v1.1/live` socket (the user's token, all its devices) on node A; POST /v1.1/messages
     with the device tokens at a fixed --rate (open loop, --connections keep-alive HTTP connections)
     on node A, or on node B with --two-nodes; per message the time from its scheduled send (and from
     the actual write) to its frame on the socket: p50/p99/max, frames missing;
   * `memory`: the server's RSS before and after opening --connections idle sockets (`/v1.1/live` with a
     device token, or unregistered `/v1.1/websocket` with --kind websocket), per connection, the server
     sending its ping frame every --ping-interval s meanwhile; the clients offer permessage-deflate
     (as browsers do) unless --compression none; then RSS after they closed and after a second round
     (a growing figure means something stays behind). The open-file limit is raised (setrlimit,
     inherited by the server) to fit them.
4. prints a JSON record and a Markdown row.
Clients and server share the machine: run it on a quiet one (other load shifts the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import MANIFEST, free_port, reset_postgres, rss_kb, wait_up  # bench/ingest.py

PYTHON = sys.executable
EMAIL, PASSWORD = "bench@example.com", "bench-password-1"


# --- servers ----------------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def raise_fd_limit(needed: int) -> int:
    """Soft open-file limit up to the hard one (or to ``needed`` as root); inherited by the servers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed and os.geteuid() == 0:
        hard = needed
    target = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, needed))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start_node(name: str, env: dict[str, str], root: Path, cpus: str) -> Node:
    port = free_port()
    data_dir = root / name
    data_dir.mkdir()
    log = root / f"{name}.log"
    # SQLite (a single node) lives in node a's data dir; the CLI of setup() uses that one too.
    node_env = {**env, "THINGCLOUD_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, PYTHON, "-m", "thingcloud", "serve", "--port", str(port)],
        env=node_env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    node = Node(name, port, proc, log)
    try:
        wait_up(f"{node.url}/healthz")
    except SystemExit:
        node.stop()
        raise SystemExit(
            f"node {name} did not come up; the end of its log:\n{log.read_text()[-3000:]}"
        ) from None
    return node


@dataclass
class Cloud:
    """The servers of a run and what setup made on them."""

    nodes: list[Node]
    env: dict[str, str]
    root: Path
    token: str = ""
    uid: str = ""
    devices: list[tuple[str, str]] = field(default_factory=list)  # (did, device token)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def start_cloud(args: argparse.Namespace, nodes: int, extra_env: dict[str, str] | None = None) -> Cloud:
    root = Path(tempfile.mkdtemp(prefix="tc-bench-live-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("THINGCLOUD_")},
        "THINGCLOUD_DATABASE_URL": args.database_url,
        "THINGCLOUD_RATE_LIMITS": "default",
        "THINGCLOUD_ADMIN_PASSWORD": "bench-admin-password",
        "THINGCLOUD_SECRET_KEY": "bench-secret-key-shared-by-every-node",
        "THINGCLOUD_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    if nodes > 1:
        env["THINGCLOUD_NATS_URL"] = args.nats_url
        env["THINGCLOUD_NATS_SUBJECT_PREFIX"] = f"bench-{uuid.uuid4().hex[:12]}"
    if args.database_url.startswith("postgresql"):
        reset_postgres(args.database_url)
    cloud = Cloud([], env, root)
    try:
        for name in ["a", "b"][:nodes]:
            cloud.nodes.append(start_node(name, env, root, args.server_cpus))
    except BaseException:
        cloud.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cloud


# --- setup through the CLI and the API ----------------------------------------------------------------


def cli(cloud: Cloud, *args: str) -> str:
    env = {**cloud.env, "THINGCLOUD_DATA_DIR": str(cloud.root / "a")}
    done = subprocess.run(
        [PYTHON, "-m", "thingcloud", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"thingcloud {' '.join(args[:2])} failed:\n{done.stderr}")
    return done.stdout


async def setup(cloud: Cloud, devices: int) -> None:
    """A user, an application, a device type, ``devices`` devices and their tokens (8 calls at once;
    a 429 waits for the limit's reset: the user's REST limit is 3,000 calls a minute)."""
    cli(cloud, "users", "create", "--email", EMAIL, "--password", PASSWORD)
    app = json.loads(
        cli(
            cloud,
            *("apps", "create", "--name", "bench", "--owner", EMAIL),
            *("--redirect-uri", "http://127.0.0.1/cb", "--password-grant"),
        )
    )
    base = cloud.nodes[0].url
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        form = {"grant_type": "password", "username": EMAIL, "password": PASSWORD}
        granted = await client.post("/token", data=form, auth=(app["client_id"], app["client_secret"]))
        granted.raise_for_status()
        cloud.token = granted.json()["access_token"]
        client.headers["Authorization"] = f"Bearer {cloud.token}"

        async def call(method: str, url: str, **kw: Any) -> dict[str, Any]:
            while True:
                response = await client.request(method, url, **kw)
                if response.status_code != 429:
                    response.raise_for_status()
                    body: dict[str, Any] = response.json()
                    return body
                await asyncio.sleep(2)

        cloud.uid = (await call("GET", "/v1.1/users/self"))["data"]["id"]
        body = {"name": "Bench sensor", "uniqueName": f"com.example.bench{uuid.uuid4().hex}"}
        dtid = (await call("POST", "/v1.1/devicetypes", json=body))["data"]["id"]
        await call("POST", f"/v1.1/devicetypes/{dtid}/manifests", json=MANIFEST)
        gate = asyncio.Semaphore(8)

        async def device(i: int) -> tuple[str, str]:
            async with gate:
                made = await call("POST", "/v1.1/devices", json={"dtid": dtid, "name": f"bench {i:05d}"})
                did = made["data"]["id"]
                tok = await call("PUT", f"/v1.1/devices/{did}/tokens")
                return did, tok["data"]["accessToken"]

        cloud.devices = list(await asyncio.gather(*(device(i) for i in range(devices))))


# --- figures ------------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(values, 50) * 1000, 2),
        "p99_ms": round(pct(values, 99) * 1000, 2),
        "max_ms": round(max(values, default=float("nan")) * 1000, 2),
    }


def message(i: int, did: str, **extra: Any) -> dict[str, Any]:
    data = {"f0": i % 100, "f1": i % 37 + 0.5, "f2": i % 11, "f3": i % 1000, "f4": i}
    return {"sdid": did, "type": "message", "data": data, **extra}


# --- ingest over /websocket with ack --------------------------------------------------------------------


async def ingest_scenario(cloud: Cloud, args: argparse.Namespace) -> dict[str, Any]:
    node = cloud.nodes[0]
    groups = [cloud.devices[i :: args.sockets] for i in range(args.sockets)]
    groups = [g for g in groups if g]
    latencies: list[float] = []
    counts = {"acked": 0, "errors": 0}
    errors: dict[str, int] = {}
    window: dict[str, float] = {"start": float("inf"), "end": float("inf")}
    ready = asyncio.Barrier(len(groups) + 1)
    stop = asyncio.Event()

    async def socket(group: list[tuple[str, str]]) -> None:
        async with connect(f"{node.ws}/v1.1/websocket?ack=true", open_timeout=60, max_queue=None) as ws:
            for did, token in group:
                await ws.send(
                    orjson.dumps({"type": "register", "sdid": did, "Authorization": f"bearer {token}"})
                )
                frame = orjson.loads(await ws.recv())
                if frame.get("data", {}).get("code") != 200:
                    raise SystemExit(f"register refused: {frame}")
            await ready.wait()
            slots = asyncio.Semaphore(args.window)
            drained = asyncio.Event()
            sent: dict[int, float] = {}
            seq = itertools.count()

            async def receive() -> None:
                async for raw in ws:
                    frame = orjson.loads(raw)
                    cid = (frame.get("data") or frame.get("error") or {}).get("cid")
                    if cid is None:
                        continue  # a ping
                    started = sent.pop(cid)
                    now = time.perf_counter()
                    if window["start"] <= started < window["end"]:
                        if "error" in frame:
                            counts["errors"] += 1
                            text = frame["error"].get("message", "?")
                            errors[text] = errors.get(text, 0) + 1
                        else:
                            counts["acked"] += 1
                            latencies.append(now - started)
                    slots.release()
                    if stop.is_set() and not sent:
                        drained.set()

            reader = asyncio.ensure_future(receive())
            try:
                for did, _ in itertools.cycle(group):
                    await slots.acquire()
                    if stop.is_set():
                        break
                    cid = next(seq)
                    sent[cid] = time.perf_counter()
                    await ws.send(orjson.dumps(message(cid, did, cid=cid)))
                if sent:  # the last acks
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(drained.wait(), 10)
            finally:
                reader.cancel()

    tasks = [asyncio.ensure_future(socket(g)) for g in groups]
    waiting = asyncio.ensure_future(ready.wait())
    done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiting not in done:
        for task in tasks:
            if task.done() and task.exception():
                raise task.exception()  # type: ignore[misc]
    await waiting
    await asyncio.sleep(args.warmup)
    window["start"] = time.perf_counter()
    await asyncio.sleep(args.duration)
    window["end"] = time.perf_counter()
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = window["end"] - window["start"]
    return {
        "scenario": "ingest",
        "devices": len(cloud.devices),
        "sockets": len(groups),
        "window": args.window,
        "msg_per_s": round(counts["acked"] / elapsed, 1),
        **ms(latencies),
        "errors": counts["errors"],
        "error_messages": errors,
    }


# --- POST /messages → /live ----------------------------------------------------------------------------


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client: the load generator's own cost stays small and known."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, token: str, body: bytes) -> int:
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = 0
        for line in header.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def e2e_scenario(cloud: Cloud, args: argparse.Namespace) -> dict[str, Any]:
    watch, post_to = cloud.nodes[0], cloud.nodes[-1]
    query = urlencode({"Authorization": f"bearer {cloud.token}", "uid": cloud.uid})
    total = int(args.rate * (args.warmup + args.duration))
    warm = int(args.rate * args.warmup)
    scheduled: dict[int, float] = {}
    written: dict[int, float] = {}
    from_schedule: list[float] = []
    from_write: list[float] = []
    http: list[float] = []
    failures: dict[int, int] = {}
    seen: set[int] = set()
    duplicates = 0
    async with connect(f"{watch.ws}/v1.1/live?{query}", open_timeout=60, max_queue=None) as live:
        all_seen = asyncio.Event()

        async def receive() -> None:
            nonlocal duplicates
            async for raw in live:
                now = time.perf_counter()
                frame = orjson.loads(raw)
                if "data" not in frame:
                    continue  # ping
                i = int(frame["data"]["f4"])
                if i in seen:
                    duplicates += 1
                    continue
                seen.add(i)
                if i >= warm and i in scheduled:
                    from_schedule.append(now - scheduled[i])
                    from_write.append(now - written[i])
                if len(seen) >= total:
                    all_seen.set()

        reader = asyncio.ensure_future(receive())
        connections = [HttpConnection(post_to.port) for _ in range(args.connections)]
        await asyncio.gather(*(c.open() for c in connections))
        slots = itertools.count()
        start = time.perf_counter() + 0.2
        bodies = [
            (orjson.dumps(message(i, did)), token)
            for i, (did, token) in zip(range(total), itertools.cycle(cloud.devices), strict=False)
        ]

        async def sender(conn: HttpConnection) -> None:
            while (i := next(slots)) < total:
                at = start + i / args.rate
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                scheduled[i] = at
                written[i] = time.perf_counter()
                body, token = bodies[i]
                status = await conn.post("/v1.1/messages", token, body)
                if i >= warm:
                    http.append(time.perf_counter() - written[i])
                if status != 200:
                    failures[status] = failures.get(status, 0) + 1
                    seen.add(i)  # not stored: no frame to wait for

        await asyncio.gather(*(sender(c) for c in connections))
        sent_for = time.perf_counter() - start
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await all_seen.wait()
        reader.cancel()
        for c in connections:
            c.close()
    return {
        "scenario": "e2e",
        "nodes": len(cloud.nodes),
        "rate_target": args.rate,
        "rate_sent": round(total / sent_for, 1),
        "messages": total - warm,
        "frames_missing": total - len(seen),
        "duplicates": duplicates,
        "non_200": failures,
        "from_schedule": ms(from_schedule),
        "from_write": ms(from_write),
        "post_response": ms(http),
    }


# --- memory per idle connection -------------------------------------------------------------------------


async def memory_scenario(cloud: Cloud, args: argparse.Namespace) -> dict[str, Any]:
    node = cloud.nodes[0]
    pid = node.proc.pid
    token = cloud.devices[0][1]
    if args.kind == "live":
        url = f"{node.ws}/v1.1/live?" + urlencode({"Authorization": f"bearer {token}"})
    else:
        url = f"{node.ws}/v1.1/websocket"
    compression = "deflate" if args.compression == "deflate" else None
    gate = asyncio.Semaphore(50)

    async def open_one() -> ClientConnection | None:
        async with gate:
            try:
                return await connect(url, open_timeout=60, compression=compression, max_queue=4)
            except (OSError, TimeoutError, ConnectionClosed) as exc:
                print(f"connect failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return None

    async def open_many(n: int) -> list[ClientConnection]:
        opened = await asyncio.gather(*(open_one() for _ in range(n)))
        return [ws for ws in opened if ws is not None]

    async def close_all(sockets: list[ClientConnection]) -> None:
        async def close(ws: ClientConnection) -> None:
            async with gate:
                await ws.close()

        await asyncio.gather(*(close(ws) for ws in sockets))

    async def settled_rss() -> int:
        await asyncio.sleep(args.settle)
        return int(statistics.median([rss_kb(pid) for _ in range(5)]))

    await close_all(await open_many(min(500, args.connections)))  # warm-up: first-use allocations
    before = await settled_rss()
    started = time.perf_counter()
    sockets = await open_many(args.connections)
    opened_in = time.perf_counter() - started
    during = await settled_rss()
    still_open = sum(1 for ws in sockets if ws.close_code is None)
    await close_all(sockets)
    after = await settled_rss()
    # Once more: freed memory is kept by the allocator for reuse, so a second round of as many
    # sockets should not raise RSS much further (if it does, something stays behind per socket).
    again = await open_many(args.connections)
    second = await settled_rss()
    await close_all(again)
    per = (during - before) / max(1, len(sockets))
    return {
        "scenario": "memory",
        "kind": args.kind,
        "compression": args.compression,
        "connections": len(sockets),
        "still_open": still_open,
        "open_seconds": round(opened_in, 1),
        "rss_before_mb": round(before / 1024, 1),
        "rss_open_mb": round(during / 1024, 1),
        "rss_after_close_mb": round(after / 1024, 1),
        "rss_second_round_mb": round(second / 1024, 1),
        "kb_per_connection": round(per, 1),
    }


# --- main ---------------------------------------------------------------------------------------------


def row(result: dict[str, Any], backend: str) -> tuple[list[str], list[str]]:
    if result["scenario"] == "ingest":
        header = ["backend", "devices", "sockets × window", "msg/s", "p50 ack ms", "p99 ack ms", "errors"]
        values = [backend, str(result["devices"]), f"{result['sockets']} × {result['window']}"]
        values += [f"{result['msg_per_s']:,.0f}", str(result["p50_ms"]), str(result["p99_ms"])]
        return header, [*values, str(result["errors"])]
    if result["scenario"] == "e2e":
        header = ["backend", "nodes", "msg/s sent", "p50 ms", "p99 ms", "max ms", "p99 from write ms"]
        header.append("missing")
        s, w = result["from_schedule"], result["from_write"]
        values = [backend, str(result["nodes"]), f"{result['rate_sent']:,.0f}", str(s["p50_ms"])]
        values += [str(s["p99_ms"]), str(s["max_ms"]), str(w["p99_ms"]), str(result["frames_missing"])]
        return header, values
    header = ["backend", "endpoint", "connections", "RSS before MB", "RSS open MB", "KB/connection"]
    values = [backend, f"/v1.1/{result['kind']} ({result['compression']})", str(result["connections"])]
    values += [str(result["rss_before_mb"]), str(result["rss_open_mb"]), str(result["kb_per_connection"])]
    return header, values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=["ingest", "e2e", "memory"])
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--devices", type=int, default=None, help="devices (ingest 1000, e2e 100, memory 1)")
    parser.add_argument("--sockets", type=int, default=50, help="ingest: device sockets")
    parser.add_argument("--window", type=int, default=8, help="ingest: messages in flight per socket")
    parser.add_argument("--rate", type=float, default=1000, help="e2e: POSTs per second")
    parser.add_argument(
        "--connections", type=int, default=None, help="e2e: HTTP connections (32); memory: sockets (10000)"
    )
    parser.add_argument(
        "--two-nodes", action="store_true", help="e2e: POST on node B, /live on node A (NATS)"
    )
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--kind", choices=["live", "websocket"], default="live", help="memory: endpoint")
    parser.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="memory: the client offers permessage-deflate (as browsers do) or not",
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2, help="seconds before measuring")
    parser.add_argument(
        "--ping-interval", type=float, default=1.0, help="memory: server's ping interval (s) meanwhile"
    )
    parser.add_argument("--settle", type=float, default=3, help="memory: seconds before each RSS sample")
    parser.add_argument("--server-cpus", default="1", help="taskset CPU list of the server(s)")
    parser.add_argument("--client-cpus", default="0", help="CPU list of this process (the clients)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    args = parser.parse_args()
    if args.two_nodes and not args.database_url.startswith("postgresql"):
        parser.error("--two-nodes needs --database-url postgresql+asyncpg://…")
    if args.devices is None:
        args.devices = {"ingest": 1000, "e2e": 100, "memory": 1}[args.scenario]
    if args.connections is None:
        args.connections = 10_000 if args.scenario == "memory" else 32
    limit = raise_fd_limit(args.connections + 1000 if args.scenario == "memory" else 4096)
    if args.scenario == "memory" and limit < args.connections + 100:
        raise SystemExit(f"open-file limit {limit} is too low for {args.connections} sockets (ulimit -n)")
    cpus = {int(c) for c in args.client_cpus.split(",")}
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)
    extra = {"THINGCLOUD_WEBSOCKET_REGISTER_TIMEOUT": "3600"} if args.kind == "websocket" else {}
    if args.scenario == "memory":
        # Idle sockets still get the {"type":"ping"} frames: let them flow while RSS is sampled (the
        # first frame on a socket also allocates its compression state, if deflate was negotiated).
        extra["THINGCLOUD_CHANNEL_PING_INTERVAL"] = str(args.ping_interval)
    cloud = start_cloud(args, 2 if args.two_nodes else 1, extra)
    try:
        asyncio.run(setup(cloud, args.devices))
        scenario = {"ingest": ingest_scenario, "e2e": e2e_scenario, "memory": memory_scenario}[args.scenario]
        result = asyncio.run(scenario(cloud, args))
    finally:
        cloud.stop()
        if not args.keep:
            shutil.rmtree(cloud.root, ignore_errors=True)
        else:
            print(f"logs in {cloud.root}", file=sys.stderr)
    backend = "PostgreSQL" if args.database_url.startswith("postgresql") else "SQLite"
    result = {"backend": backend, "cores": os.cpu_count(), "open_file_limit": limit, **result}
    print(json.dumps(result, indent=1))
    print()
    header, values = row(result, backend)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("| " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
