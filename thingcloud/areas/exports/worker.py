"""The export worker: the archive of one export is written by a child process at low CPU priority.

Reading a million messages, building their JSON or CSV and gzipping the result costs seconds of CPU.
Inside the server process it would share the event loop (and the GIL) with ingest, which it measurably
slowed by more than half on one core. In a child process at the niceness ``export_niceness`` (19 by
default), the kernel gives it only what ingest leaves: the full core when the server is idle, and
about 1.5 % of it (CFS weight 15 against 1,024) when ingest saturates the core — live traffic first,
exports in its gaps. At niceness 10 (weight 110) ingest lost 17 % of its throughput while exports
ran (BENCHMARKS.md), against a goal of at most 10 %. The child opens its own connections to the same
database and reports the archive's md5, size and message count as one JSON line on stdout. If the
job is cancelled (shutdown, lost lease) the child is killed with it; if the server dies, the kernel
closes the child's stdin and the child exits at once; the retried job starts the archive over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from thingcloud.areas.exports.archive import Archive, Plan, Source, build
from thingcloud.db import Database
from thingcloud.runtime import Runtime
from thingcloud.settings import Settings

STDERR_TAIL = 2000


async def make_archive(rt: Runtime, export_id: str, plan: Plan, directory: Path) -> Archive:
    """Run the worker for one export and wait for its archive."""
    spec = {
        "database_url": rt.settings.resolved_database_url,
        "niceness": rt.settings.export_niceness,
        "data_dir": str(rt.settings.data_dir),
        "export_id": export_id,
        "directory": str(directory),
        "plan": {**asdict(plan), "sources": [asdict(s) for s in plan.sources]},
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "thingcloud.areas.exports.worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        # The spec as one line; stdin then stays open: its end tells the worker this process is gone.
        proc.stdin.write(json.dumps(spec).encode() + b"\n")
        await proc.stdin.drain()
        out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
        await proc.wait()
    except BaseException:  # cancelled: the attempt is over, and so is its worker
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    finally:
        proc.stdin.close()
    if proc.returncode != 0:
        raise RuntimeError(f"export worker exited with {proc.returncode}: {err.decode()[-STDERR_TAIL:]}")
    made = json.loads(out)
    return Archive(Path(made["path"]), made["md5"], made["size"], made["total"])


def _source(raw: dict[str, Any]) -> Source:
    only = None if raw["sdtids"] is None else tuple(raw["sdtids"])
    return Source(raw["kind"], raw["id"], only, tuple(raw["exclude"]))


async def _work(spec: dict[str, Any]) -> Archive:
    settings = Settings(database_url=spec["database_url"], data_dir=Path(spec["data_dir"]))
    db = Database(settings)
    raw = spec["plan"]
    plan = Plan(**{**raw, "sources": tuple(_source(s) for s in raw["sources"])})
    try:
        return await build(db, spec["export_id"], plan, Path(spec["directory"]))
    finally:
        await db.engine.dispose()


def _exit_with_parent() -> None:
    """Block on stdin; its end means the server died (or gave up on this attempt): stop at once, so
    a retried attempt never shares the work directory with this one."""
    while os.read(0, 4096):  # the raw descriptor: a buffered read would hold a lock at shutdown
        pass
    os._exit(3)


def main() -> None:
    spec = json.loads(sys.stdin.buffer.readline())
    os.nice(int(spec.get("niceness", 19)))
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    made = asyncio.run(_work(spec))
    print(
        json.dumps({"path": str(made.path), "md5": made.md5, "size": made.size, "total": made.total}),
        flush=True,
    )


if __name__ == "__main__":
    main()
