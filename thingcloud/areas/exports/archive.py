"""Writing an export archive (S58): stored messages streamed from the database, chunk by chunk, into
one file per source (``<uid|sdid>-<ts of first message>.json|csv``), then packed into a ``.tgz``.

Memory stays flat whatever the export's size: messages are read in keyset-paged chunks on
``(ts, mid)`` (each chunk a short read of its own, so no long transaction holds the SQLite WAL or a
PostgreSQL snapshot), each chunk is appended to the source's file on disk, and the tar/gzip pass
streams those files into the archive. ``data`` is read as the stored JSON text and spliced into each
line unparsed (``orjson.Fragment``), which is most of the speed. This runs in the low-priority
export worker process (``worker.py``), not in the server.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Text, and_, cast, or_, select

from thingcloud import tables as t
from thingcloud.db import Database

CHUNK_ROWS = 5000
CSV_COLUMNS = ("mid", "sdid", "sdtid", "uid", "ts", "cts", "mv", "data")
SIZE_WIDTH = 20  # room kept for the "size" of a JSON file, written once its messages are counted


@dataclass(frozen=True)
class Source:
    """One file of the archive: the messages of a user (optionally of some device types) or of a device."""

    kind: str  # "uid" | "sdid"
    id: str
    sdtids: tuple[str, ...] | None = None
    """A user's messages of these device types only (None: of every type but ``exclude``)."""
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    sources: tuple[Source, ...]
    start: int
    end: int
    order: str
    format: str  # "json" | "csv1"
    csv_headers: bool


@dataclass(frozen=True)
class Archive:
    path: Path
    md5: str
    size: int
    total: int


def sources_of(request: dict[str, Any]) -> tuple[Source, ...]:
    """The archive's files for a stored request: each user (only the device types asked for and
    readable by the requester's application, ``typeFilter``), then each device."""
    types = request.get("typeFilter") or {}
    only = tuple(types["only"]) if "only" in types else None
    exclude = tuple(types.get("except") or ())
    users = [Source("uid", uid, only, exclude) for uid in request.get("uids") or ()]
    return (*users, *(Source("sdid", did) for did in request.get("sdids") or ()))


async def read_chunk(
    db: Database, plan: Plan, source: Source, after: tuple[int, str] | None
) -> list[tuple[Any, ...]]:
    """The next ``CHUNK_ROWS`` messages of ``source`` after the key ``(ts, mid)`` in the plan's order."""
    m = t.messages
    columns = [m.c.mid, m.c.sdid, m.c.sdtid, m.c.uid, m.c.ts, m.c.cts, m.c.mv, cast(m.c.data, Text)]
    where = [m.c.ts >= plan.start, m.c.ts <= plan.end]
    if source.kind == "uid":
        where.append(m.c.uid == source.id)
        if source.sdtids is not None:
            where.append(m.c.sdtid.in_(source.sdtids))
        if source.exclude:
            where.append(m.c.sdtid.not_in(source.exclude))
    else:
        where.append(m.c.sdid == source.id)
    if after is not None:
        ts, mid = after
        if plan.order == "asc":
            where.append(or_(m.c.ts > ts, and_(m.c.ts == ts, m.c.mid > mid)))
        else:
            where.append(or_(m.c.ts < ts, and_(m.c.ts == ts, m.c.mid < mid)))
    order = (m.c.ts, m.c.mid) if plan.order == "asc" else (m.c.ts.desc(), m.c.mid.desc())
    stmt = select(*columns).where(*where).order_by(*order).limit(CHUNK_ROWS)
    async with db.read() as conn:
        return [tuple(r) for r in await conn.execute(stmt)]


class MemberWriter:
    """One source's file, appended to chunk by chunk (in a worker thread)."""

    def __init__(self, path: Path, fmt: str, csv_headers: bool) -> None:
        self.path = path
        self.format = fmt
        self.count = 0
        self.first_ts: int | None = None
        self._file: IO[bytes] = path.open("wb")
        if fmt == "json":
            self._file.write(b'{"size":' + b" " * SIZE_WIDTH + b',"data":[')
            self._text: io.TextIOWrapper | None = None
        else:
            self._text = io.TextIOWrapper(self._file, encoding="utf-8", newline="")
            self._csv = csv.writer(self._text)
            if csv_headers:
                self._csv.writerow(CSV_COLUMNS)

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.first_ts is None:
            self.first_ts = int(rows[0][4])
        if self._text is not None:
            self._csv.writerows(rows)
        else:
            parts = []
            for mid, sdid, sdtid, uid, ts, cts, mv, data in rows:
                message = {
                    "mid": mid,
                    "sdid": sdid,
                    "sdtid": sdtid,
                    "uid": uid,
                    "ts": ts,
                    "cts": cts,
                    "mv": mv,
                    "data": orjson.Fragment(data),
                }
                parts.append(orjson.dumps(message))
            self._file.write((b"," if self.count else b"") + b",".join(parts))
        self.count += len(rows)

    def close(self) -> None:
        if self._text is not None:
            self._text.close()
            return
        self._file.write(b"]}")
        self._file.seek(len(b'{"size":'))
        self._file.write(str(self.count).rjust(SIZE_WIDTH).encode())
        self._file.close()


async def write_member(db: Database, plan: Plan, source: Source, path: Path) -> MemberWriter:
    writer = await asyncio.to_thread(MemberWriter, path, plan.format, plan.csv_headers)
    try:
        after: tuple[int, str] | None = None
        while True:
            rows = await read_chunk(db, plan, source, after)
            await asyncio.to_thread(writer.write, rows)
            if len(rows) < CHUNK_ROWS:
                break
            after = (int(rows[-1][4]), str(rows[-1][0]))
    finally:
        await asyncio.to_thread(writer.close)
    return writer


def _pack(target: Path, members: list[tuple[Path, str]]) -> tuple[str, int]:
    """The ``.tgz`` of ``members`` (file, name in the archive); returns its md5 and size."""
    with tarfile.open(target, "w:gz", compresslevel=6) as tar:
        for path, name in members:
            tar.add(path, arcname=name, recursive=False)
    digest = hashlib.md5(usedforsecurity=False)
    with target.open("rb") as packed:
        while block := packed.read(1 << 20):
            digest.update(block)
    return digest.hexdigest(), target.stat().st_size


async def build(db: Database, export_id: str, plan: Plan, directory: Path) -> Archive:
    """Write the archive of ``plan`` to ``<directory>/<export_id>.tgz`` (replacing a partial one left
    by an interrupted attempt) and return what the export records of it."""
    work = directory / f"{export_id}.work"
    await asyncio.to_thread(_fresh_dir, work)
    try:
        suffix = "json" if plan.format == "json" else "csv"
        members: list[tuple[Path, str]] = []
        total = 0
        for n, source in enumerate(plan.sources):
            written = await write_member(db, plan, source, work / f"{n}.{suffix}")
            members.append((written.path, f"{source.id}-{written.first_ts or 0}.{suffix}"))
            total += written.count
        partial = directory / f"{export_id}.tgz.part"
        md5, size = await asyncio.to_thread(_pack, partial, members)
        final = directory / f"{export_id}.tgz"
        partial.replace(final)
        return Archive(final, md5, size, total)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
