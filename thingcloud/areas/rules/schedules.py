"""Scheduled rule conditions (``field: "datetime"``): cron expressions and sunrise/sunset, as durable jobs.

Operand forms (``{"value": "..."}``):
- ``"<minute> <hour> <day> <month> <weekday> [TZ <IANA zone>]"``: a standard 5-field cron expression,
  evaluated in the zone's local time (UTC by default) by ``croniter``. Across DST changes it behaves as
  cron does: a local time skipped in spring fires at the first instant after the gap, and a local
  time repeated in autumn fires once (the second occurrence of the same wall time is skipped).
- ``"@sunrise|@sunset <latitude> <longitude> <±hh:mm offset> TZ <zone>"`` (the ARTIK sample form):
  the day's sunrise or sunset at that place, plus the offset, computed by ``astral``; days on which the
  sun does not rise or set there are skipped.

A rule with a schedule fires at the scheduled instants, when its other conditions hold then (they
keep their latest state from messages). Each next instant is a ``rules.schedule`` job (in the
database, so it survives restarts like the duration timers; the same maximum lateness applies),
enqueued in the transaction that creates or changes the rule and, when it runs, enqueuing the one
after. A job carries the rule's ``modifiedOn``: a job of an older version of the rule does nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from astral import Observer
from astral.sun import sunrise, sunset
from croniter import croniter

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from thingcloud.areas.rules.language import Program
    from thingcloud.runtime import Runtime

SCHEDULE_JOB = "rules.schedule"
SOLAR = re.compile(
    r"@(?P<event>sunrise|sunset)\s+(?P<lat>[+-]?\d+(?:\.\d+)?)\s+(?P<lon>[+-]?\d+(?:\.\d+)?)\s+"
    r"(?P<sign>[+-])(?P<hh>\d{1,2}):(?P<mm>\d{2})\s+TZ\s+(?P<tz>\S+)"
)
MAX_SOLAR_DAYS = 370


class ScheduleInvalid(ValueError):
    """A schedule string that cannot be used; carries the user-facing reason."""


@dataclass(frozen=True, slots=True)
class Schedule:
    text: str
    kind: str  # "cron" | "sunrise" | "sunset"
    zone: str
    cron: str = ""
    latitude: float = 0.0
    longitude: float = 0.0
    offset_minutes: int = 0

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    def next_after(self, after_ms: int) -> int | None:
        """The first scheduled instant strictly after ``after_ms`` (epoch ms), or None if there is none."""
        start = dt.datetime.fromtimestamp(after_ms / 1000, tz=self.tz)
        if self.kind == "cron":
            return self._next_cron(start)
        return self._next_solar(start)

    def _next_cron(self, start: dt.datetime) -> int | None:
        it = croniter(self.cron, start)
        previous = start
        for _ in range(10):
            when: dt.datetime = it.get_next(dt.datetime)
            # Autumn DST: the same wall time comes twice; cron runs it once.
            repeated = (
                when.replace(tzinfo=None) == previous.replace(tzinfo=None) and when.fold != previous.fold
            )
            if not repeated and when.timestamp() > start.timestamp():
                return int(when.timestamp() * 1000)
            previous = when
        return None

    def _next_solar(self, start: dt.datetime) -> int | None:
        observer = Observer(latitude=self.latitude, longitude=self.longitude)
        event = sunrise if self.kind == "sunrise" else sunset
        offset = dt.timedelta(minutes=self.offset_minutes)
        day = start.date() - dt.timedelta(days=1)
        for _ in range(MAX_SOLAR_DAYS):
            try:
                when = event(observer, date=day, tzinfo=self.tz) + offset
            except ValueError:  # the sun does not rise or set there that day
                when = None
            if when is not None and when.timestamp() > start.timestamp():
                return int(when.timestamp() * 1000)
            day += dt.timedelta(days=1)
        return None


def parse_schedule(text: object) -> Schedule:
    """The schedule an operand value describes; ScheduleInvalid with the reason otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ScheduleInvalid("A cron expression or an @sunrise/@sunset schedule (text) is required")
    text = " ".join(text.split())
    if text.startswith("@"):
        found = SOLAR.fullmatch(text)
        if found is None:
            raise ScheduleInvalid("Expected '@sunrise|@sunset <latitude> <longitude> <±hh:mm> TZ <zone>'")
        lat, lon = float(found["lat"]), float(found["lon"])
        if not -90 <= lat <= 90 or not -180 <= lon <= 180:
            raise ScheduleInvalid("Latitude must be within ±90 and longitude within ±180")
        minutes = int(found["hh"]) * 60 + int(found["mm"])
        if int(found["mm"]) >= 60 or minutes > 12 * 60:
            raise ScheduleInvalid("The offset must be at most ±12:00")
        schedule = Schedule(
            text,
            found["event"],
            _zone(found["tz"]),
            latitude=lat,
            longitude=lon,
            offset_minutes=-minutes if found["sign"] == "-" else minutes,
        )
    else:
        expression, _, zone = text.partition(" TZ ")
        if len(expression.split()) != 5 or not croniter.is_valid(expression):
            raise ScheduleInvalid("Expected a 5-field cron expression, optionally followed by 'TZ <zone>'")
        schedule = Schedule(text, "cron", _zone(zone.strip() or "UTC"), cron=expression)
    if schedule.next_after(int(dt.datetime.now(dt.UTC).timestamp() * 1000)) is None:
        raise ScheduleInvalid("This schedule never occurs")
    return schedule


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleInvalid(f"Unknown time zone '{name}'") from exc
    return name


async def plan(rt: Runtime, conn: AsyncConnection, row: Any, program: Program) -> None:
    """Enqueue the next instant of each schedule of an enabled rule (in the caller's transaction)."""
    from thingcloud import jobs

    if not row["enabled"] or row.get("invalidated_on") is not None:
        return
    now = rt.clock.now_ms()
    for cond in program.conditions:
        if cond.schedule is None:
            continue
        due = cond.schedule.next_after(now)
        if due is not None:
            await enqueue(rt, conn, jobs, row["id"], cond.index, due, row["modified_on"])


async def enqueue(
    rt: Runtime, conn: AsyncConnection | None, jobs: Any, rule_id: str, index: int, due: int, version: int
) -> None:
    await jobs.enqueue(
        rt,
        SCHEDULE_JOB,
        {"rule": rule_id, "cond": index, "due": due, "version": version},
        run_at=due,
        unique_key=f"rule-schedule:{rule_id}:{index}:{version}:{due}",
        conn=conn,
    )
