"""Device-management property queries: ``GET /devicemgmt/devices/properties`` with a ``filter`` over a
fleet of 10,000 devices of one device type (issue #10 goal: p50 ≤ 50 ms).

    .venv/bin/python bench/devicemgmt_properties.py                       # SQLite, 10,000 devices
    .venv/bin/python bench/devicemgmt_properties.py --devices 2000 --requests 50
    .venv/bin/python bench/devicemgmt_properties.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/tc_bench

What it does, so anyone can reproduce the figures in BENCHMARKS.md on one machine:
1. starts `thingcloud serve` (migrations) on a fresh database and sets up, through the CLI and the
   public API, a user who creates an organization, an application of that organization, a device
   type of the organization, its DM manifest (server properties ``enabled``, ``level``, ``name``,
   ``site.building``; the default device properties) and ``devicePropertiesEnabled``; stops it;
2. bulk-loads in this process what the API would have written for DEVICES devices: the device rows,
   four server properties and four reported device properties each (``dm_properties`` rows built with
   the service's own row function), and a status row (a third of them connected); then ANALYZE;
3. starts the server again (pinned to core 1, this client on core 0) and measures, RUNS times,
   REQUESTS sequential requests per query on one keep-alive connection after a warm-up, with the
   organization administrator's token: a 1 % filter (``serverProperties.level=<n>``, a full page of
   100), a two-term filter across server and device properties (~2.5 %), a 50 % filter
   (``serverProperties.enabled=true``: page 100 of 5,000, counted), a system-property filter
   (``systemProperties.availability=online``), the unfiltered list at a random offset, and one
   device's ``GET /devicemgmt/devices/{did}/properties``;
4. prints JSON and a Markdown table: the median over the runs of each p50/p99, and peak server RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export import reset_postgres
from ingest import PYTHON, RssSampler, free_port, percentile, start_server, stop, wait_up

MANIFEST = {
    "serverProperties": {
        "enabled": {"type": "Boolean"},
        "level": {"type": "Integer"},
        "name": {"type": "String"},
        "site": {"building": {"type": "String"}},
    }
}
TIMEZONES = ["UTC", "Europe/Paris", "America/Los_Angeles", "Asia/Tokyo", "Africa/Lagos"]
FIRMWARE = [f"1.0.{n}" for n in range(20)]


def setup_cloud(base: str, env: dict[str, str]) -> dict[str, Any]:
    """The organization, its application, administrator token and device type, through the CLI and API."""
    thingcloud = [PYTHON, "-m", "thingcloud"]
    email, password = "dmbench@example.com", "bench-password-1"

    def cli(*command: str) -> str:
        return subprocess.run(
            [*thingcloud, *command], env=env, check=True, capture_output=True, text=True
        ).stdout

    cli("users", "create", "--email", email, "--password", password)

    def app(*extra: str) -> dict[str, Any]:
        flags = ["--redirect-uri", "http://127.0.0.1/cb", "--password-grant", *extra]
        created: dict[str, Any] = json.loads(cli("apps", "create", "--name", "dm", "--owner", email, *flags))
        return created

    def token(created: dict[str, Any]) -> str:
        form = {"grant_type": "password", "username": email, "password": password}
        response = httpx.post(
            f"{base}/token", data=form, auth=(created["client_id"], created["client_secret"])
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    personal = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token(app())}"}, timeout=30)
    oid = personal.post("/v1.1/organizations", json={"name": "Bench fleet"}).json()["data"]["id"]
    admin_token = token(app("--organization", oid))
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30)
    uid = client.get("/v1.1/users/self").json()["data"]["id"]
    dt = client.post(
        "/v1.1/devicetypes",
        json={"name": "Bench lamp", "uniqueName": f"com.example.dm{uuid.uuid4().hex[:12]}", "oid": oid},
    )
    dt.raise_for_status()
    dtid = dt.json()["data"]["id"]
    client.put(f"/v1.1/devicemgmt/devicetypes/{dtid}/manifest", json=MANIFEST).raise_for_status()
    client.put(
        f"/v1.1/devicemgmt/devicetypes/{dtid}", json={"devicePropertiesEnabled": True}
    ).raise_for_status()
    return {"token": admin_token, "uid": uid, "dtid": dtid}


async def load(cloud: dict[str, Any], devices: int) -> list[str]:
    """Devices, their properties and status rows, written directly in chunks."""
    from sqlalchemy import insert, text

    from thingcloud import tables as t
    from thingcloud.areas.devicemgmt.properties import property_row
    from thingcloud.runtime import Runtime
    from thingcloud.settings import Settings

    rt = Runtime.build(Settings())
    dtid, uid = cloud["dtid"], cloud["uid"]
    now = int(time.time() * 1000)
    rng = random.Random(devices)
    dids = [uuid.uuid4().hex for _ in range(devices)]
    started = time.monotonic()
    for chunk in range(0, devices, 1000):
        part = dids[chunk : chunk + 1000]
        device_rows, property_rows, status_rows = [], [], []
        for n, did in enumerate(part, start=chunk):
            device_rows.append(
                {
                    "id": did,
                    "uid": uid,
                    "dtid": dtid,
                    "name": f"bench lamp {n:05d}",
                    "manifest_version_policy": "LATEST",
                    "need_provider_auth": False,
                    "cloud_authorization": "NO_AUTHORIZATION",
                    "created_on": now,
                    "modified_on": now,
                }
            )
            server = {
                "enabled": n % 2 == 0,
                "level": n % 100,
                "name": f"lamp {n}",
                "site.building": f"B{n % 10}",
            }
            device = {
                "device.timezone": TIMEZONES[n % len(TIMEZONES)],
                "device.firmwareVersion": FIRMWARE[rng.randrange(len(FIRMWARE))],
                "device.manufacturer": "Acme",
                "device.model": f"L{n % 3}",
            }
            for path, value in server.items():
                property_rows.append(property_row(did, dtid, f"serverProperties.{path}", value, now))
            for path, value in device.items():
                property_rows.append(property_row(did, dtid, f"deviceProperties.{path}", value, now - 1000))
            connected = n % 3 == 0
            status_rows.append(
                {
                    "did": did,
                    "availability": "online" if connected else "offline",
                    "connected": connected,
                    "last_time_online": now,
                    "last_seen_on": now,
                    "modified_on": now,
                }
            )
        async with rt.db.write() as conn:
            await conn.execute(insert(t.devices), device_rows)
            await conn.execute(insert(t.dm_properties), property_rows)
            await conn.execute(insert(t.device_status), status_rows)
    print(f"{devices:,} devices loaded in {time.monotonic() - started:.0f} s", file=sys.stderr)
    async with rt.db.engine.connect() as conn:
        if rt.db.is_sqlite:
            await conn.execute(text("ANALYZE"))
        else:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE"))
    await rt.db.close()
    return dids


def measure(
    base: str, cloud: dict[str, Any], dids: list[str], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    rng = random.Random(len(dids))
    dtid = cloud["dtid"]
    query = "/v1.1/devicemgmt/devices/properties"

    def filtered(expr: str) -> tuple[str, dict[str, Any]]:
        return query, {"dtid": dtid, "filter": expr}

    queries = {
        "filter 1 % (level=n, 100 of 10,000)": lambda: filtered(
            f"serverProperties.level={rng.randrange(100)}"
        ),
        "filter 2 terms (server + device, ~2.5 %)": lambda: filtered(
            f"serverProperties.enabled=true,deviceProperties.device.firmwareVersion={rng.choice(FIRMWARE)}"
        ),
        "filter 50 % (enabled=true, page 100 of 5,000)": lambda: filtered("serverProperties.enabled=true"),
        "filter system (availability=online, 1/3)": lambda: filtered("systemProperties.availability=online"),
        "no filter (random offset)": lambda: (
            query,
            {"dtid": dtid, "offset": rng.randrange(len(dids) - 100)},
        ),
        "one device's properties": lambda: (f"/v1.1/devicemgmt/devices/{rng.choice(dids)}/properties", {}),
    }
    headers = {"Authorization": f"Bearer {cloud['token']}"}
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
                if n == 0:
                    body = response.json()
                    print(f"  {name}: total={body.get('total')} count={body.get('count')}", file=sys.stderr)
                if n >= args.warmup:
                    timings.append(took)
            out[name] = {"p50_ms": percentile(timings, 0.5), "p99_ms": percentile(timings, 0.99)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per query and run")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (SQLite file, logs)")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="tc-dmbench-"))
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
    if args.database_url.startswith("postgresql"):
        reset_postgres(args.database_url)
    server = start_server(serve, env, data_dir / "setup.log")
    try:
        wait_up(f"{base}/healthz")
        cloud = setup_cloud(base, env)
    finally:
        stop(server)
    dids = asyncio.run(load(cloud, args.devices))

    os.sched_setaffinity(0, {0})
    server = start_server(serve, env, data_dir / "server.log")
    sampler = RssSampler(server.pid)
    runs: list[dict[str, dict[str, float]]] = []
    try:
        wait_up(f"{base}/healthz")
        sampler.start()
        for _ in range(args.runs):
            runs.append(measure(base, cloud, dids, args))
    finally:
        sampler.running = False
        stop(server)
    backend = "PostgreSQL" if args.database_url.startswith("postgresql") else "SQLite"
    print(
        json.dumps(
            {"backend": backend, "devices": args.devices, "runs": runs, "peak_rss_kb": sampler.peak}, indent=1
        )
    )
    print()
    print(f"{backend}, {args.devices:,} devices of one type, 8 properties each")
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
