"""Export benchmark: time and peak server memory of a message export, and what it costs ingest.

    .venv/bin/python bench/export.py                        # SQLite, 1,000,000 messages
    .venv/bin/python bench/export.py --messages 50000       # a quick check
    .venv/bin/python bench/export.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench

What it does, so anyone can reproduce the figures in BENCHMARKS.md on one machine:
1. starts `thingcloud serve` pinned to one core (taskset -c 1) on a fresh database, rate limits off;
2. sets up through the public API (bench/ingest.py's setup): a user, an application, a device type
   with 5 numeric fields and DEVICES devices;
3. loads MESSAGES messages spread over 30 days and the devices through `POST /v1.1/messages/import`
   (the import extension: the ingest path's normalization and group commit), and reports its rate;
4. exports one device's messages, then every message of the user (one archive of MESSAGES
   messages), each time measuring request → Success and the RSS of the server and its export worker
   process every 0.1 s: the peak of the small and the large export should be the same (memory flat
   in the export's size);
   the archive is downloaded and its message count checked;
5. unless --skip-ingest: wrk (pinned to the other core, as bench/ingest.py) sends single messages for
   DURATION seconds with no export running, then again while the large export runs back to back
   (so one is always running), and reports the slowdown.
Prints a JSON summary and a Markdown table. Needs `wrk` for step 5.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # the sibling benchmark's setup, so both measure the same cloud
    LUA,
    PYTHON,
    RssSampler,
    ensure_wrk,
    free_port,
    reset_postgres,
    rss_kb,
    run_wrk,
    setup_cloud,
    start_server,
    stop,
    wait_up,
)

DAY = 86_400_000
BENCH_USER = ("bench@example.com", "bench-password-1")  # as bench/ingest.py's setup_cloud creates it
IMPORT_FILE_ROWS = 200_000  # rows per uploaded file


def tree_rss_kb(pid: int) -> int:
    """RSS of the server and its children (the export worker process)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return rss_kb(pid) + sum(tree_rss_kb(int(child)) for child in children)


class FastSampler(RssSampler):
    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, tree_rss_kb(self.pid))
            time.sleep(0.1)


def user_token(base: str, log: Path) -> str:
    """A token of setup_cloud's user, through the first-party console app (first-start text)."""
    found = re.search(r"Console app +client_id ([0-9a-f]{32})", log.read_text())
    if not found:
        raise SystemExit(f"no console client_id in {log}")
    form = {"grant_type": "password", "client_id": found.group(1)}
    form.update(username=BENCH_USER[0], password=BENCH_USER[1])
    response = httpx.post(f"{base}/token", data=form)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def load_messages(client: httpx.Client, dids: list[str], total: int, start: int) -> float:
    """``total`` messages over 30 days, round-robin over the devices, imported; returns msg/s."""
    per_device = total // len(dids)
    step = max(1, (30 * DAY) // max(per_device, 1))
    began = time.perf_counter()
    pending = []
    for did in dids:
        for offset in range(0, per_device, IMPORT_FILE_ROWS):
            rows = min(IMPORT_FILE_ROWS, per_device - offset)
            body = b"".join(
                b'{"ts":%d,"data":{"f0":%d,"f1":%d.5,"f2":%d,"f3":%d,"f4":%d}}\n'
                % (start + (offset + i) * step, i % 100, i % 37, i % 11, i % 1000, i)
                for i in range(rows)
            )
            response = client.post(
                "/v1.1/messages/import",
                params={"sdid": did},
                headers={"Content-Type": "application/x-ndjson"},
                content=body,
            )
            response.raise_for_status()
            pending.append(response.json()["data"]["importId"])
    for import_id in pending:
        while True:
            status = client.get(f"/v1.1/messages/import/{import_id}").json()["data"]
            if status["status"] == "Success":
                break
            if status["status"] == "Failure":
                raise SystemExit(f"import failed: {status}")
            time.sleep(0.5)
    return per_device * len(dids) / (time.perf_counter() - began)


def run_export(client: httpx.Client, pid: int, body: dict[str, Any]) -> dict[str, Any]:
    before = rss_kb(pid)
    sampler = FastSampler(pid)
    sampler.start()
    began = time.perf_counter()
    export_id = client.post("/v1.1/messages/export", json=body).json()["data"]["exportId"]
    while True:
        status = client.get(f"/v1.1/messages/export/{export_id}/status").json()
        if status["status"] not in ("Received", "InProgress"):
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - began
    sampler.running = False
    sampler.join()
    if status["status"] != "Success":
        raise SystemExit(f"export failed: {status}")
    result = client.get(f"/v1.1/messages/export/{export_id}/result")
    result.raise_for_status()
    assert int(result.headers["x-sami-total-messages"]) == status["totalMessages"]
    return {
        "messages": status["totalMessages"],
        "seconds": round(seconds, 2),
        "msg_per_s": round(status["totalMessages"] / seconds),
        "archive_bytes": status["fileSize"],
        "rss_before_kb": before,
        "rss_peak_kb": sampler.peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk ingest run")
    parser.add_argument("--skip-ingest", action="store_true", help="no wrk runs (step 5)")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="tc-bench-export-"))
    port = free_port()
    env = {
        **os.environ,
        "THINGCLOUD_DATA_DIR": str(data_dir),
        "THINGCLOUD_DATABASE_URL": args.database_url,
        "THINGCLOUD_RATE_LIMITS": "off",
        "THINGCLOUD_ADMIN_PASSWORD": "bench-admin-password",
        "THINGCLOUD_IMPORT_MAX_BYTES": str(1 << 31),
    }
    if args.database_url.startswith("postgresql"):
        reset_postgres(args.database_url)
    base = f"http://127.0.0.1:{port}"
    server = start_server(
        [PYTHON, "-m", "thingcloud", "serve", "--port", str(port)], env, data_dir / "server.log"
    )
    summary: dict[str, Any] = {
        "backend": "PostgreSQL" if args.database_url.startswith("postgresql") else "SQLite",
        "cores": os.cpu_count(),
        "messages": args.messages,
        "devices": args.devices,
    }
    try:
        wait_up(f"{base}/healthz")
        devices_file = setup_cloud(base, data_dir, env, args.devices)
        dids = [line.split()[0] for line in devices_file.read_text().split("\n") if line]
        token = user_token(base, data_dir / "server.log")
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=300)
        uid = client.get("/v1.1/users/self").json()["data"]["id"]
        start = int(time.time() * 1000) - 30 * DAY
        summary["import_msg_per_s"] = round(load_messages(client, dids, args.messages, start))
        window = {"startDate": start, "endDate": start + 31 * DAY - 1}
        summary["export_one_device"] = run_export(client, server.pid, {"sdids": dids[0], **window})
        summary["export_all"] = run_export(client, server.pid, {"uids": uid, **window})
        if not args.skip_ingest:
            wrk = ensure_wrk()
            script = data_dir / "ingest.lua"
            tokens = data_dir / "devices.txt"
            script.write_text(LUA % {"devices": tokens})
            run_wrk(wrk, base, script, 2, 64)  # warm-up
            alone = run_wrk(wrk, base, script, args.duration, 64)
            busy = threading.Event()
            busy.set()
            exports: list[dict[str, Any]] = []

            def export_meanwhile() -> None:  # back to back, so an export runs during all of wrk's run
                while busy.is_set():
                    exports.append(run_export(client, server.pid, {"uids": uid, **window}))

            exporting = threading.Thread(target=export_meanwhile, daemon=True)
            exporting.start()
            during = run_wrk(wrk, base, script, args.duration, 64)
            busy.clear()
            exporting.join()
            summary["ingest"] = {
                "alone_rps": round(alone["rps"]),
                "during_export_rps": round(during["rps"]),
                "slowdown_pct": round(100 * (1 - during["rps"] / alone["rps"]), 1),
                "exports_during_run": len(exports),
            }
    finally:
        stop(server)
    print(json.dumps(summary, indent=1))
    big, small = summary["export_all"], summary["export_one_device"]
    print(f"\n| {summary['backend']} | messages | seconds | msg/s | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name, row in (("one device", small), ("all devices", big)):
        mib = row["rss_peak_kb"] / 1024
        print(f"| export, {name} | {row['messages']} | {row['seconds']} | {row['msg_per_s']} | {mib:.0f} |")
    if "ingest" in summary:
        ingest = summary["ingest"]
        print(
            f"| ingest alone / during export (req/s) | {ingest['alone_rps']} / {ingest['during_export_rps']} "
            f"| slowdown {ingest['slowdown_pct']} % | | |"
        )


if __name__ == "__main__":
    main()
