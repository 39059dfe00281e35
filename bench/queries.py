"""Query benchmark: message queries and analytics over a bulk-loaded store (10 million messages).

    .venv/bin/python bench/queries.py                                  # SQLite, 1,000 x 10,000
    .venv/bin/python bench/queries.py --devices 100 --per-device 10000 # a smaller check
    .venv/bin/python bench/queries.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/tc_bench

What it does, so anyone can reproduce the figures in BENCHMARKS.md on one machine:
1. starts `thingcloud serve` (migrations) on a fresh database, pinned to core 1 as bench/ingest.py
   does, and sets up through the public API a user, an application, a device type (numeric ``temp``
   and ``hum``, boolean ``state``) and DEVICES devices plus one "analytics" device; stops it;
2. bulk-loads what ingest would have written, in this process: PER_DEVICE messages per device at one
   a minute, and ANALYTICS_DAYS days at one a minute (31 days: 44,640) on the analytics device — the
   message rows (ingest's own compiled INSERT; SQLite: one transaction per chunk of devices with
   executemany; PostgreSQL: COPY through asyncpg into the monthly partitions), each device's status
   and last-value snapshots (ingest's upserts), and the hour/day rollups
   (``rollup_maintenance.rebuild_device``, the recomputation the rollup consumer runs). Not written:
   dedup keys and feed entries, which no query reads (the rollup consumer's checkpoint then already
   covers everything). Then ANALYZE (PostgreSQL: VACUUM ANALYZE);
3. starts the server again (pinned to core 1; this client on core 0) and measures, RUNS times,
   REQUESTS sequential requests each on one keep-alive connection (after a warm-up):
   GET /messages (one random device, one random day, count=100); GET /messages/last (one device);
   a filter query over the analytics device's 31 days (count=100, a ~1 % selective filter);
   aggregates over the analytics device's 31 days; the histogram by day over the same 31 days;
4. prints JSON and a Markdown table: the median over the runs of each p50/p99, and peak server RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import PYTHON, RssSampler, free_port, percentile, start_server, stop, wait_up

MINUTE = 60_000
DAY = 86_400_000
MANIFEST = {
    "fields": [
        {"name": "temp", "valueClass": "Double", "unit": "Cel"},
        {"name": "hum", "valueClass": "Integer", "unit": "%"},
        {"name": "state", "valueClass": "Boolean"},
    ],
    "actions": [{"name": "setOn"}],
}
NUMERIC = ["temp", "hum"]
APP_FLAGS = ["--redirect-uri", "http://127.0.0.1/cb", "--password-grant"]
FILTER = "+hum:>=99 +temp:>20"  # ~1 % of messages: a page of 100 needs ~10,000 of them scanned


def data_of(j: int) -> dict[str, Any]:
    return {"temp": round(20 + 10 * math.sin(j / 100), 2), "hum": j % 100, "state": j % 2 == 0}


def setup_cloud(base: str, env: dict[str, str], devices: int) -> dict[str, Any]:
    """A user, an application, the device type and devices, through the CLI and the public API."""
    thingcloud = [PYTHON, "-m", "thingcloud"]
    email, password = "bench@example.com", "bench-password-1"
    subprocess.run(
        [*thingcloud, "users", "create", "--email", email, "--password", password],
        env=env,
        check=True,
        capture_output=True,
    )
    created = subprocess.run(
        [*thingcloud, "apps", "create", "--name", "bench", "--owner", email, *APP_FLAGS],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    app = json.loads(created.stdout)
    token = httpx.post(
        f"{base}/token",
        data={"grant_type": "password", "username": email, "password": password},
        auth=(app["client_id"], app["client_secret"]),
    ).json()["access_token"]
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    uid = client.get("/v1.1/users/self").json()["data"]["id"]
    dt = client.post(
        "/v1.1/devicetypes", json={"name": "Bench sensor", "uniqueName": f"com.example.q{int(time.time())}"}
    )
    dt.raise_for_status()
    dtid = dt.json()["data"]["id"]
    client.post(f"/v1.1/devicetypes/{dtid}/manifests", json=MANIFEST).raise_for_status()
    dids = []
    for i in range(devices + 1):
        device = client.post("/v1.1/devices", json={"dtid": dtid, "name": f"bench device {i:04d}"})
        device.raise_for_status()
        dids.append(device.json()["data"]["id"])
    return {"token": token, "uid": uid, "dtid": dtid, "dids": dids[:-1], "analytics": dids[-1]}


def series(did: str, dtid: str, uid: str, end: int, count: int, stagger: int) -> list[dict[str, Any]]:
    first = end - count * MINUTE + stagger
    return [
        {
            "sdid": did,
            "ts": first + j * MINUTE,
            "mid": uuid.uuid4().hex,
            "sdtid": dtid,
            "uid": uid,
            "cts": first + j * MINUTE + 150,
            "mv": 1,
            "data": data_of(j),
        }
        for j in range(count)
    ]


async def load(cloud: dict[str, Any], per_device: int, analytics_days: int, end: int) -> None:
    from sqlalchemy import insert, text

    from thingcloud import tables as t
    from thingcloud.areas.devices import status
    from thingcloud.areas.messages import rollup_maintenance
    from thingcloud.areas.messages.batchsql import CompiledStatement, flatten
    from thingcloud.areas.messages.writer import create_partition, month_start, next_month
    from thingcloud.runtime import Runtime
    from thingcloud.settings import Settings

    rt = Runtime.build(Settings())
    plan = [(did, per_device, n % 60 * 1000) for n, did in enumerate(cloud["dids"])]
    plan.append((cloud["analytics"], analytics_days * 1440, 0))
    dtid, uid = cloud["dtid"], cloud["uid"]
    started = time.monotonic()
    loaded = 0
    if rt.db.is_sqlite:
        statement = CompiledStatement(insert(t.messages), rt.db.engine.dialect, ["data"])
        conn = sqlite3.connect(rt.db.engine.url.database or "", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MB: the indexes of a 10M-row table
        for chunk in range(0, len(plan), 20):
            conn.execute("BEGIN")
            for did, count, stagger in plan[chunk : chunk + 20]:
                conn.executemany(statement.sql, statement.rows(series(did, dtid, uid, end, count, stagger)))
                loaded += count
            conn.execute("COMMIT")
            print(f"  {loaded:,} messages, {time.monotonic() - started:.0f} s", file=sys.stderr)
        conn.close()
    else:
        month = month_start(end - (analytics_days + 1) * DAY - per_device * MINUTE)
        while month <= end:
            await create_partition(rt, "messages", month)
            month = next_month(month)
        columns = [c.name for c in t.messages.columns]
        async with rt.db.engine.connect() as sa_conn:
            pg = (await sa_conn.get_raw_connection()).driver_connection
            assert pg is not None
            for did, count, stagger in plan:
                rows = series(did, dtid, uid, end, count, stagger)
                records = [
                    tuple(orjson.dumps(r[c]).decode() if c == "data" else r[c] for c in columns) for r in rows
                ]
                await pg.copy_records_to_table("messages", records=records, columns=columns)
                loaded += count
                if loaded % 1_000_000 < count:
                    print(f"  {loaded:,} messages, {time.monotonic() - started:.0f} s", file=sys.stderr)
            await sa_conn.commit()
    print(f"messages loaded: {loaded:,} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    # Status and snapshots: what ingest leaves after each device's newest message.
    now = int(time.time() * 1000)
    async with rt.db.write() as conn_:
        for did, count, stagger in plan:
            last_ts = end - MINUTE + stagger
            leaves = {(did, path): (value, last_ts) for path, value in flatten(data_of(count - 1))}
            await conn_.execute(status.snapshot_upsert(rt.db), status.snapshot_rows(leaves))
            await conn_.execute(
                status.activity_upsert(rt.db), status.activity_rows(now, {did: (last_ts, None)})
            )
    started = time.monotonic()
    semaphore = asyncio.Semaphore(1 if rt.db.is_sqlite else 2)

    async def rebuild(did: str, count: int, stagger: int) -> None:
        async with semaphore:
            first = end - count * MINUTE + stagger
            await rollup_maintenance.rebuild_device(rt, did, first, end + stagger, NUMERIC)

    await asyncio.gather(*(rebuild(*p) for p in plan))
    print(f"rollups built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    async with rt.db.engine.connect() as sa_conn:
        if rt.db.is_sqlite:
            await sa_conn.execute(text("ANALYZE"))
        else:
            await sa_conn.execution_options(isolation_level="AUTOCOMMIT")
            await sa_conn.execute(text("VACUUM ANALYZE"))
    await rt.db.close()


def measure(
    base: str, cloud: dict[str, Any], end: int, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    rng = random.Random(len(cloud["dids"]))
    headers = {"Authorization": f"Bearer {cloud['token']}"}
    month_start = end - args.analytics_days * DAY
    days = max(1, args.per_device * MINUTE // DAY - 1)

    def one_day() -> tuple[str, dict[str, Any]]:
        start = end - rng.randint(1, days) * DAY
        did = rng.choice(cloud["dids"])
        return "/v1.1/messages", {"sdid": did, "startDate": start, "endDate": start + DAY, "count": 100}

    analytics = {"sdid": cloud["analytics"], "startDate": month_start, "endDate": end}
    queries = {
        "messages (1 device, 1 day)": one_day,
        "messages/last": lambda: ("/v1.1/messages/last", {"sdids": rng.choice(cloud["dids"]), "count": 10}),
        "filter (1 device, 31 days)": lambda: (
            "/v1.1/messages",
            {**analytics, "filter": FILTER, "count": 100},
        ),
        "aggregates (31 days, 44,640 points)": lambda: (
            "/v1.1/messages/analytics/aggregates",
            {**analytics, "field": "temp"},
        ),
        "histogram by day (31 days)": lambda: (
            "/v1.1/messages/analytics/histogram",
            {**analytics, "field": "temp", "interval": "day"},
        ),
    }
    out: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for name, make in queries.items():
            timings: list[float] = []
            for n in range(args.requests + args.warmup):
                path, params = make()
                began = time.perf_counter()
                response = client.get(path, params=params)
                took = (time.perf_counter() - began) * 1000
                if response.status_code != 200:
                    raise SystemExit(f"{name}: {response.status_code} {response.text[:300]}")
                if n == 0 and name.startswith(("aggregates", "filter")):
                    print(f"  {name}: {response.text[:200]}", file=sys.stderr)
                if n >= args.warmup:
                    timings.append(took)
            out[name] = {"p50_ms": percentile(timings, 0.5), "p99_ms": percentile(timings, 0.99)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--per-device", type=int, default=10_000)
    parser.add_argument("--analytics-days", type=int, default=31)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per query and run")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (SQLite file, logs)")
    parser.add_argument(
        "--phase",
        choices=("all", "load", "measure"),
        default="all",
        help="load: set up and bulk-load into --data-dir, then stop; measure: measure what a load "
        "phase left in --data-dir (the long load can run while the machine is busy)",
    )
    parser.add_argument("--data-dir", default="", help="directory for the SQLite file and logs")
    args = parser.parse_args()
    if args.phase != "all" and not args.data_dir:
        parser.error("--phase load/measure needs --data-dir")
    if args.data_dir:
        data_dir = Path(args.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        args.keep = True
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="tc-qbench-"))
    env = {
        **os.environ,
        "THINGCLOUD_DATA_DIR": str(data_dir),
        "THINGCLOUD_DATABASE_URL": args.database_url,
        "THINGCLOUD_RATE_LIMITS": "off",
        "THINGCLOUD_ADMIN_PASSWORD": "bench-admin-password",
    }
    os.environ.update(env)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = [PYTHON, "-m", "thingcloud", "serve", "--port", str(port)]
    state = data_dir / "loaded.json"
    if args.phase == "measure":
        loaded = json.loads(state.read_text())
        cloud, end = loaded["cloud"], loaded["end"]
    else:
        cloud, end = prepare(args, env, data_dir, base, serve)
        state.write_text(json.dumps({"cloud": cloud, "end": end}))
        if args.phase == "load":
            print(f"loaded into {data_dir}; now: --phase measure --data-dir {data_dir}")
            return
    measure_all(args, env, data_dir, base, serve, cloud, end)


def prepare(
    args: argparse.Namespace, env: dict[str, str], data_dir: Path, base: str, serve: list[str]
) -> tuple[dict[str, Any], int]:
    """Steps 1 and 2: a fresh database, set up through the API, then bulk-loaded."""
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
    server = start_server(serve, env, data_dir / "setup.log")
    try:
        wait_up(f"{base}/healthz")
        cloud = setup_cloud(base, env, args.devices)
    finally:
        stop(server)
    end = int(time.time() * 1000) // MINUTE * MINUTE - 10 * MINUTE
    asyncio.run(load(cloud, args.per_device, args.analytics_days, end))
    return cloud, end


def measure_all(
    args: argparse.Namespace,
    env: dict[str, str],
    data_dir: Path,
    base: str,
    serve: list[str],
    cloud: dict[str, Any],
    end: int,
) -> None:
    """Steps 3 and 4: the server on what was loaded, RUNS measurements, the table."""
    os.sched_setaffinity(0, {0})
    server = start_server(serve, env, data_dir / "server.log")
    runs: list[dict[str, dict[str, float]]] = []
    sampler = RssSampler(server.pid)
    try:
        wait_up(f"{base}/healthz")
        sampler.start()
        for _ in range(args.runs):
            runs.append(measure(base, cloud, end, args))
    finally:
        sampler.running = False
        stop(server)
    backend = "PostgreSQL" if args.database_url.startswith("postgresql") else "SQLite"
    total = args.devices * args.per_device + args.analytics_days * 1440
    print(
        json.dumps(
            {"backend": backend, "messages": total, "runs": runs, "peak_rss_kb": sampler.peak}, indent=1
        )
    )
    print()
    print(
        f"{backend}, {total:,} messages ({args.devices:,} devices x {args.per_device:,}"
        f" + 1 x {args.analytics_days} days)"
    )
    print(f"| query | p50 ms (median of {args.runs}) | p99 ms |")
    print("|---|---|---|")
    for name in runs[0]:
        p50 = statistics.median(r[name]["p50_ms"] for r in runs)
        p99 = statistics.median(r[name]["p99_ms"] for r in runs)
        print(f"| {name} | {p50:.1f} | {p99:.1f} |")
    print(f"| server peak RSS | {sampler.peak / 1024:.0f} MB | |")
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
