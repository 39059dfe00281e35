"""Ingest benchmark: POST /v1.1/messages with device tokens, 64 connections, rate limits on.

    .venv/bin/python bench/ingest.py                       # SQLite (a fresh file under a temp dir)
    .venv/bin/python bench/ingest.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench

What it does, so anyone can reproduce the figures in BENCHMARKS.md on one machine:
1. starts `thingcloud serve` pinned to one core (taskset -c 1) on a fresh database;
2. sets up through the public API: a user, an application (password grant), a device type whose
   manifest has 5 numeric fields, N devices and their device tokens;
3. runs wrk pinned to the other core (taskset -c 0), 1 thread, 64 connections, each request one
   message of 5 numeric fields from the next device token in turn; DURATION seconds, RUNS times;
4. runs the same wrk against a bare ASGI "ceiling" app (parse the JSON, answer a mid) on the same
   server software (uvicorn, httptools, uvloop), pinned the same way;
5. samples the server's RSS during the load, and its CPU time per 1,000 messages (from /proc; less
   affected than msg/s by other load on the machine, though not immune to it: on a busy machine,
   alternate the two builds and compare medians); prints a Markdown table with the median of the runs.
Needs `wrk` (Debian package `wrk`; installed with apt-get if missing and running as root).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

MANIFEST = {
    "fields": [{"name": f"f{i}", "valueClass": "Double", "unit": "x"} for i in range(5)],
    "actions": [{"name": "setOn"}],
}

LUA = textwrap.dedent(
    """
    local devices = {}
    for line in io.lines("%(devices)s") do
      local did, token = line:match("([^ ]+) ([^ ]+)")
      devices[#devices + 1] = {did, token}
    end
    local i = 0
    request = function()
      i = i + 1
      local d = devices[(i %% #devices) + 1]
      local body = string.format(
        '{"sdid":"%%s","type":"message","data":{"f0":%%d,"f1":%%d.5,"f2":%%d,"f3":%%d,"f4":%%d}}',
        d[1], i %% 100, i %% 37, i %% 11, i %% 1000, i)
      return wrk.format("POST", "/v1.1/messages",
        {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. d[2]}, body)
    end
    done = function(summary, latency, requests)
      io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests,
        summary.duration, latency:percentile(50), latency:percentile(99),
        summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write,
        summary.errors.timeout))
    end
    """
)

CEILING_APP = textwrap.dedent(
    """
    import orjson, uuid
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        orjson.loads(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body",
                    "body": b'{"data":{"mid":"' + uuid.uuid4().hex.encode() + b'"}}'})
    """
)


# Building blocks for the wrk scripts of the other benchmarks (notifications, rules, mqtt): a wall
# clock in microseconds (LuaJIT's ffi: wrk's Lua has no sub-second clock), an open-loop pacer, and
# the same RESULT line as above. A script is LUA_CLOCK + (LUA_PACE) + its own request() + LUA_DONE.
LUA_CLOCK = textwrap.dedent(
    """
    local ffi = require("ffi")
    ffi.cdef[[
      typedef struct { long tv_sec; long tv_usec; } tc_timeval;
      int gettimeofday(tc_timeval *tv, void *tz);
    ]]
    local tv = ffi.new("tc_timeval")
    function now_us()
      ffi.C.gettimeofday(tv, nil)
      return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
    end
    function read_devices(path)
      local out = {}
      for line in io.lines(path) do
        local did, token = line:match("([^ ]+) ?([^ ]*)")
        out[#out + 1] = {did, token}
      end
      return out
    end
    """
)

# Open loop at RATE requests/s over all connections of the (single) thread: each request is due at
# start + n / RATE; a connection waits for its slot, so the rate holds while responses are faster
# than CONNECTIONS / RATE. If the server falls behind, the achieved rate (printed) shows it.
LUA_PACE = textwrap.dedent(
    """
    local pace_rate = RATE
    local pace_start, pace_n = nil, 0
    delay = function()
      local now = now_us()
      if pace_start == nil then pace_start = now end
      local due = pace_start + pace_n * 1000000 / pace_rate
      pace_n = pace_n + 1
      if due <= now then return 0 end
      return math.floor((due - now) / 1000)
    end
    """
)

LUA_DONE = textwrap.dedent(
    """
    done = function(summary, latency, requests)
      io.write(string.format("RESULT %d %d %d %d %d %d %d\\n", summary.requests,
        summary.duration, latency:percentile(50), latency:percentile(99),
        summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write,
        summary.errors.timeout))
    end
    """
)


def wrk_script(path: Path, request_lua: str, rate: float | None = None) -> Path:
    """Write a wrk script: the clock, the pacer at ``rate`` req/s (None: as fast as it goes), the
    caller's Lua (which defines ``request``) and the RESULT line that ``run_wrk`` parses."""
    pace = LUA_PACE.replace("RATE", repr(float(rate))) if rate else ""
    path.write_text(LUA_CLOCK + pace + textwrap.dedent(request_lua) + LUA_DONE)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server at {url} did not come up")


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by rank; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.2)


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
        path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk is needed: apt-get install wrk")
    return path


def setup_cloud(base: str, data_dir: Path, env: dict[str, str], devices: int) -> Path:
    """A user, an application, a device type with 5 numeric fields, devices and their tokens."""
    thingcloud = [PYTHON, "-m", "thingcloud"]
    email, password = "bench@example.com", "bench-password-1"
    subprocess.run(
        [*thingcloud, "users", "create", "--email", email, "--password", password],
        env=env,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [
            *thingcloud,
            "apps",
            "create",
            "--name",
            "bench",
            "--owner",
            email,
            "--redirect-uri",
            "http://127.0.0.1/cb",
            "--password-grant",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    app = json.loads(out)
    token = httpx.post(
        f"{base}/token",
        data={"grant_type": "password", "username": email, "password": password},
        auth=(app["client_id"], app["client_secret"]),
    ).json()["access_token"]
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    dt = client.post(
        "/v1.1/devicetypes",
        json={"name": "Bench sensor", "uniqueName": f"com.example.bench{int(time.time())}"},
    )
    dt.raise_for_status()
    dtid = dt.json()["data"]["id"]
    client.post(f"/v1.1/devicetypes/{dtid}/manifests", json=MANIFEST).raise_for_status()
    lines = []
    for i in range(devices):
        device = client.post("/v1.1/devices", json={"dtid": dtid, "name": f"bench device {i:04d}"})
        device.raise_for_status()
        did = device.json()["data"]["id"]
        tok = client.put(f"/v1.1/devices/{did}/tokens", headers={"Content-Type": "text/plain"})
        tok.raise_for_status()
        lines.append(f"{did} {tok.json()['data']['accessToken']}")
    path = data_dir / "devices.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(wrk: str, url: str, script: Path, duration: int, connections: int) -> dict[str, float]:
    cmd = [
        "taskset",
        "-c",
        "0",
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not match:
        raise SystemExit(f"could not parse wrk output:\n{out}")
    requests, duration_us, p50, p99, status_errors, socket_errors, timeouts = map(int, match.groups())
    return {
        "requests": requests,
        "rps": requests / (duration_us / 1e6),
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "non_2xx": status_errors,
        "socket_errors": socket_errors + timeouts,
    }


def start_server(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", "1", *cmd], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def reset_postgres(url: str) -> None:
    """Wipe a PostgreSQL bench database (its public schema) so the server migrates a fresh one."""
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def reset() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await engine.dispose()

    asyncio.run(reset())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--skip-ceiling", action="store_true")
    args = parser.parse_args()
    wrk = ensure_wrk()
    data_dir = Path(tempfile.mkdtemp(prefix="tc-bench-"))
    port = free_port()
    env = {
        **os.environ,
        "THINGCLOUD_DATA_DIR": str(data_dir),
        "THINGCLOUD_DATABASE_URL": args.database_url,
        "THINGCLOUD_RATE_LIMITS": "default",
        "THINGCLOUD_ADMIN_PASSWORD": "bench-admin-password",
    }
    if args.database_url.startswith("postgresql"):
        reset_postgres(args.database_url)
    base = f"http://127.0.0.1:{port}"
    server = start_server(
        [PYTHON, "-m", "thingcloud", "serve", "--port", str(port)], env, data_dir / "server.log"
    )
    results: dict[str, list[dict[str, float]]] = {"thingcloud": [], "ceiling": []}
    peak_rss = 0
    try:
        wait_up(f"{base}/healthz")
        devices = setup_cloud(base, data_dir, env, args.devices)
        script = data_dir / "ingest.lua"
        script.write_text(LUA % {"devices": devices})
        run_wrk(wrk, base, script, 2, args.connections)  # warm-up
        for _ in range(args.runs):
            sampler = RssSampler(server.pid)
            sampler.start()
            cpu_before = cpu_seconds(server.pid)
            run = run_wrk(wrk, base, script, args.duration, args.connections)
            run["cpu_ms_per_1k"] = (cpu_seconds(server.pid) - cpu_before) * 1e6 / max(run["requests"], 1)
            results["thingcloud"].append(run)
            sampler.running = False
            sampler.join()
            peak_rss = max(peak_rss, sampler.peak)
    finally:
        stop(server)
    if not args.skip_ceiling:
        ceiling_file = data_dir / "ceiling_app.py"
        ceiling_file.write_text(CEILING_APP)
        cport = free_port()
        ceiling = start_server(
            [
                PYTHON,
                "-m",
                "uvicorn",
                "--app-dir",
                str(data_dir),
                "ceiling_app:app",
                "--port",
                str(cport),
                "--no-access-log",
                "--log-level",
                "warning",
                "--http",
                "httptools",
                "--loop",
                "uvloop",
            ],
            env,
            data_dir / "ceiling.log",
        )
        try:
            time.sleep(1.5)
            cscript = data_dir / "ceiling.lua"
            cscript.write_text(LUA % {"devices": devices})
            for _ in range(args.runs):
                results["ceiling"].append(
                    run_wrk(wrk, f"http://127.0.0.1:{cport}", cscript, args.duration, args.connections)
                )
        finally:
            stop(ceiling)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name]) if results[name] else float("nan")

    backend = "PostgreSQL" if args.database_url.startswith("postgresql") else "SQLite"
    tc_rps, ceil_rps = median("thingcloud", "rps"), median("ceiling", "rps")
    print(
        json.dumps(
            {"backend": backend, "cores": os.cpu_count(), "runs": results, "peak_rss_kb": peak_rss}, indent=1
        )
    )
    print()
    header = ["backend", f"msg/s (median of {args.runs})", "p50 ms", "p99 ms", "non-2xx"]
    header += ["server CPU ms / 1k msg", "ceiling req/s", "ratio", "peak RSS MB"]
    row = [backend, f"{tc_rps:,.0f}", f"{median('thingcloud', 'p50_ms'):.1f}"]
    row += [f"{median('thingcloud', 'p99_ms'):.1f}", str(sum(r["non_2xx"] for r in results["thingcloud"]))]
    row += [
        f"{median('thingcloud', 'cpu_ms_per_1k'):.0f}",
        f"{ceil_rps:,.0f}",
        f"{tc_rps / ceil_rps:.0%}",
        f"{peak_rss / 1024:.0f}",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("| " + " | ".join(row) + " |")
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
