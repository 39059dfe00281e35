"""Rollups of numeric message fields, and the exact statistics read through them (beyond ARTIK).
This module reads them; rollup_maintenance.py keeps them up to date.

What is stored. ``message_rollups`` holds, per device, numeric field path and UTC hour and day
bucket, the count, sum, min, max and M2 = sum((x - mean)²) of the bucket's values, plus the newest
``cts`` among them. M2 (the Welford / Chan term) merges exactly: two parts (n₁, mean₁, M2₁) and
(n₂, mean₂, M2₂) give M2 = M2₁ + M2₂ + (mean₂ - mean₁)²·n₁n₂/n, so a 31-day variance combines 31
day rows without the cancellation of a plain sum of squares.

Who maintains it: not ingest. The group commit (writer.py) is untouched for live messages; the
durable feed consumer ``messages.rollups`` reads the committed message entries, which carry the
message itself, and adds each entry's values to its (device, field, hour) row — Chan's merge, no
scan of raw messages — then rebuilds the day row from its 24 hour rows. Each hour row records the
feed ``seq`` it is complete through, and an entry is added only to rows that do not cover its seq
yet: the feed is at least once, and a replayed batch changes nothing. An hour without a row (first
touched, dropped, or from before the consumer existed) is instead *recomputed* from the raw messages
in one snapshot, which also yields its seq: the ``max(seq)`` of the feed in that same snapshot
(feed seq order is commit order, feed.py). Recomputing is also how deletions are handled, since min
and max can never be decremented: retention and device deletion (retention.py) call ``forget``
after deleting, which drops the rows of the deleted range and recomputes the boundary hour and day.
Imported history (``POST /messages/import``) has no feed entry: its group commit deletes the rows of
the hours and days it lands in, so they are read raw, and a background task recomputes them after
the commit. All writers of a device's rows take a per-device lock (PostgreSQL advisory lock; on
SQLite the single write transaction, which ingest shares), so a recompute that read the messages
before a purge or an import cannot write its rows after theirs.

How reads stay exact. A row is trusted for a bucket only if
- the consumer has covered every message of that bucket: the feed entries after its checkpoint
  (``seq > C``) for this device name the hours still "dirty" (not yet recomputed, or committed after
  the recompute read the messages); a row reflects at least every message with ``seq ≤ C``,
- for aggregates (which count only messages received a minute ago, S49), its ``max_cts`` is settled:
  then the settling rule excludes none of its messages,
- it exists at all (data from before the consumer existed, or a bucket being recomputed, has none).
Everything else — the partial hours at the range's edges, dirty and unsettled hours, missing rows —
is scanned from the raw messages with the same SQL expression the rollups were computed with, and
the parts are merged. Minute histograms (≤ 1 hour) are always raw. So a 31-day aggregate reads ≤ 31
day rows, a few hour rows and at most two partial hours of raw messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, ColumnElement, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import tables as t
from thingcloud.areas.messages.filters import JsonSql

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
CONSUMER = "messages.rollups"  # the feed consumer of rollup_maintenance.py
MAX_RAW_PIECES = 16  # beyond this many raw intervals (two queries each), one scan of the whole range


@dataclass(slots=True)
class Stats:
    """Count, sum, extremes and M2 of some values; ``merge`` is Chan's parallel combination."""

    n: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None
    m2: float = 0.0
    max_cts: int = 0

    def merge(self, other: Stats) -> None:
        if not other.n:
            return
        if not self.n:
            self.n, self.total, self.low, self.high = other.n, other.total, other.low, other.high
            self.m2, self.max_cts = other.m2, max(self.max_cts, other.max_cts)
            return
        n = self.n + other.n
        delta = other.total / other.n - self.total / self.n
        self.m2 = self.m2 + other.m2 + delta * delta * self.n * other.n / n
        self.n, self.total = n, self.total + other.total
        assert self.low is not None and self.high is not None
        self.low = min(self.low, other.low if other.low is not None else self.low)
        self.high = max(self.high, other.high if other.high is not None else self.high)
        self.max_cts = max(self.max_cts, other.max_cts)

    def view(self) -> dict[str, Any]:
        """The S49/S50 statistics (population variance, as analytics.py explains)."""
        if not self.n:
            return {"count": 0, "min": None, "max": None, "mean": None, "sum": 0.0, "variance": None}
        return {
            "count": self.n,
            "min": float(self.low if self.low is not None else 0.0),
            "max": float(self.high if self.high is not None else 0.0),
            "mean": self.total / self.n,
            "sum": self.total,
            "variance": max(0.0, self.m2 / self.n),
        }


def field_value(path: str, sqlite: bool) -> ColumnElement[Any]:
    """The field's value in ``messages.data`` when it is a JSON number, else NULL: the one expression
    raw scans and rollups share. Type-checked first, so a value of another type (stored under an
    older manifest version) is skipped on both databases instead of failing PostgreSQL's cast and,
    with it, the rollup consumer."""
    return JsonSql(sqlite).number(path)


def _columns(x: ColumnElement[Any], k: Any) -> list[ColumnElement[Any]]:
    m = t.messages
    return [
        func.count(x),
        func.sum(x),
        func.min(x),
        func.max(x),
        func.sum(x - k),
        func.sum((x - k) * (x - k)),
        func.max(m.c.cts),
    ]


async def raw_stats(
    conn: AsyncConnection,
    sdid: str,
    path: str,
    intervals: list[tuple[int, int]],
    settled: int | None,
    size_ms: int | None,
) -> dict[int | None, Stats]:
    """Stats of the raw messages with ``a ≤ ts < b`` for any interval, by bucket of ``size_ms`` (None:
    one bucket). One range scan per interval: an OR of ranges scans from the first to the last."""
    out: dict[int | None, Stats] = {}
    for a, b in intervals:
        for key, part in (await _raw_interval(conn, sdid, path, a, b, settled, size_ms)).items():
            out.setdefault(key, Stats()).merge(part)
    return out


async def _raw_interval(
    conn: AsyncConnection, sdid: str, path: str, a: int, b: int, settled: int | None, size_ms: int | None
) -> dict[int | None, Stats]:
    """``raw_stats`` of one interval. M2 is computed shifted by the bucket's mean, so it keeps its
    digits."""
    m = t.messages
    x = field_value(path, conn.dialect.name == "sqlite")
    where = [m.c.sdid == sdid, m.c.ts >= a, m.c.ts < b, x.is_not(None)]
    if settled is not None:
        where.append(m.c.cts <= settled)
    rows: Iterable[Any]
    if size_ms is None:
        mean = (await conn.execute(select(func.avg(x)).where(*where))).scalar_one()
        if mean is None:
            return {}
        k: Any = float(mean)
        rows = [(None, *(await conn.execute(select(*_columns(x, k)).where(*where))).one())]
    else:
        # Each bucket shifted by its own mean: one global shift loses the digits of a quiet bucket
        # next to a loud one.
        bucket = m.c.ts - m.c.ts % size_ms
        means = select(bucket.label("b"), func.avg(x).label("k")).where(*where).group_by(bucket).subquery()
        query = (
            select(means.c.b, *_columns(x, means.c.k))
            .select_from(m.join(means, bucket == means.c.b))
            .where(*where)
            .group_by(means.c.b)
        )
        rows = await conn.execute(query)
    out: dict[int | None, Stats] = {}
    for key, n, total, low, high, shifted, squares, max_cts in rows:
        if not n:
            continue
        m2 = max(0.0, float(squares) - float(shifted) ** 2 / n)
        out[None if key is None else int(key)] = Stats(
            int(n), float(total), float(low), float(high), m2, int(max_cts)
        )
    return out


# --- reads ---------------------------------------------------------------------------------------------


def merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in intervals:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


async def _dirty_hours(conn: AsyncConnection, sdid: str) -> set[int]:
    """Hours of ``sdid`` holding messages the consumer has not covered yet."""
    f, cp = t.feed, t.feed_checkpoints
    checkpoint = (await conn.execute(select(cp.c.seq).where(cp.c.consumer == CONSUMER))).scalar()
    ts = cast(f.c.payload["ts"].as_string(), BigInteger)  # as_integer() is a 32-bit CAST on PostgreSQL
    rows = await conn.execute(
        select(ts).where(f.c.seq > int(checkpoint or 0), f.c.did == sdid, f.c.kind == "message")
    )
    return {int(v) - int(v) % HOUR_MS for (v,) in rows if v is not None}


async def stats(
    rt: Runtime,
    sdid: str,
    path: str,
    first: int,
    last: int,
    settled: int | None,
    size_ms: int | None,
) -> dict[int | None, Stats]:
    """Exact stats of ``first ≤ ts < last`` (received by ``settled`` if given), by bucket of
    ``size_ms`` (minute, hour, day; None: one bucket), from rollups where they are trusted."""
    if first >= last:
        return {}
    async with rt.db.read() as conn:
        if size_ms is not None and size_ms < HOUR_MS:
            return await raw_stats(conn, sdid, path, [(first, last)], settled, size_ms)
        dirty = await _dirty_hours(conn, sdid)
        r = t.message_rollups
        rows = await conn.execute(
            select(r.c.size, r.c.bucket, r.c.n, r.c.total, r.c.low, r.c.high, r.c.m2, r.c.max_cts).where(
                r.c.sdid == sdid, r.c.path == path, r.c.bucket >= first, r.c.bucket < last
            )
        )
        hours: dict[int, Stats] = {}
        days: dict[int, Stats] = {}
        for size, bucket, *values in rows:
            s = Stats(*values)
            if settled is not None and s.max_cts > settled:
                continue
            (hours if size == HOUR_MS else days)[int(bucket)] = s
        use_days = size_ms is None or size_ms == DAY_MS
        out: dict[int | None, Stats] = {}
        raw: list[tuple[int, int]] = []

        def add(bucket: int, s: Stats) -> None:
            key = None if size_ms is None else bucket - bucket % size_ms
            out.setdefault(key, Stats()).merge(s)

        hour_days = {h - h % DAY_MS for h in hours}
        pos = first
        while pos < last:
            whole_day = pos % DAY_MS == 0 and pos + DAY_MS <= last and use_days and pos in days
            if whole_day and not any(h in dirty for h in range(pos, pos + DAY_MS, HOUR_MS)):
                add(pos, days[pos])
                pos += DAY_MS
                continue
            if pos % DAY_MS == 0 and pos + DAY_MS <= last and pos not in hour_days:
                raw.append((pos, pos + DAY_MS))  # no usable hour in it: one step, not 24
                pos += DAY_MS
                continue
            if pos % HOUR_MS == 0 and pos + HOUR_MS <= last and pos in hours and pos not in dirty:
                add(pos, hours[pos])
                pos += HOUR_MS
                continue
            end = min(last, pos - pos % HOUR_MS + HOUR_MS)
            raw.append((pos, end))
            pos = end
        pieces = merge_intervals(raw)
        if len(pieces) > MAX_RAW_PIECES:
            return await raw_stats(conn, sdid, path, [(first, last)], settled, size_ms)
        for key, s in (await raw_stats(conn, sdid, path, pieces, settled, size_ms)).items():
            out.setdefault(key, Stats()).merge(s)
    return {k: v for k, v in out.items() if v.n}
