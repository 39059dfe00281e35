"""Scheduled rule conditions: cron expressions with an IANA zone (DST as cron does it) and
sunrise/sunset, validated with paths, fired as durable jobs on the live server's (injectable) clock,
and replayed by the dry-run."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from thingcloud.areas.rules.schedules import ScheduleInvalid, parse_schedule

from .conftest import LiveServer
from .test_messages_ingest import stored_actions
from .test_rules import Home, create, created, executions, field_errors, new_home, trace, wait_for

NEW_YORK = ZoneInfo("America/New_York")


def ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def local(ms_value: int, zone: ZoneInfo = NEW_YORK) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms_value / 1000, tz=zone)


def test_cron_in_a_time_zone_across_dst() -> None:
    daily = parse_schedule("30 2 * * * TZ America/New_York")
    # Spring forward (2026-03-08): 02:30 does not exist that day; it runs right after the gap.
    before = ms(dt.datetime(2026, 3, 8, 0, 0, tzinfo=NEW_YORK))
    first = daily.next_after(before)
    assert first is not None and local(first).replace(tzinfo=None) == dt.datetime(2026, 3, 8, 3, 0)
    second = daily.next_after(first)
    assert second is not None and local(second).replace(tzinfo=None) == dt.datetime(2026, 3, 9, 2, 30)
    # Fall back (2026-11-01): 01:30 happens twice on the clock; cron runs it once.
    nightly = parse_schedule("30 1 * * * TZ America/New_York")
    once = nightly.next_after(ms(dt.datetime(2026, 11, 1, 0, 0, tzinfo=NEW_YORK)))
    assert once is not None
    again = nightly.next_after(once)
    assert again is not None and local(again).date() == dt.date(2026, 11, 2)
    assert again - once == 25 * 3600 * 1000
    utc = parse_schedule("0 12 * * 1-5")
    monday = utc.next_after(ms(dt.datetime(2026, 11, 28, 0, 0, tzinfo=dt.UTC)))  # a Saturday
    assert monday == ms(dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC))


def test_sunrise_and_sunset_with_offset() -> None:
    zone = ZoneInfo("America/Los_Angeles")
    start = ms(dt.datetime(2026, 6, 21, 0, 0, tzinfo=zone))
    rise = parse_schedule("@sunrise 37.023 -121.51 +00:00 TZ America/Los_Angeles").next_after(start)
    later = parse_schedule("@sunrise 37.023 -121.51 +00:30 TZ America/Los_Angeles").next_after(start)
    down = parse_schedule("@sunset 37.023 -121.51 -01:00 TZ America/Los_Angeles").next_after(start)
    assert rise is not None and later is not None and down is not None
    assert 5 <= local(rise, zone).hour <= 6 and local(rise, zone).date() == dt.date(2026, 6, 21)
    assert later - rise == 30 * 60 * 1000
    assert 19 <= local(down, zone).hour <= 20
    # Polar night: no sunrise for weeks; the next one is found when the sun is back.
    polar = parse_schedule("@sunrise 78.2 15.6 +00:00 TZ Arctic/Longyearbyen")
    after = polar.next_after(ms(dt.datetime(2026, 12, 1, tzinfo=dt.UTC)))
    assert after is not None and local(after, ZoneInfo("Arctic/Longyearbyen")).month in (2, 3)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "* * * *",
        "61 * * * *",
        "0 7 * * * TZ Mars/Olympus",
        "@sunrise 95 0 +00:00 TZ UTC",
        "@noon 1 2 +00:00 TZ UTC",
    ],
)
def test_bad_schedules(text: str) -> None:
    with pytest.raises(ScheduleInvalid):
        parse_schedule(text)


def scheduled(home: Home, schedule: str, on: bool = True) -> dict[str, Any]:
    src, dst = home.devices[0], home.devices[1]
    return {
        "if": {
            "and": [
                {"field": "datetime", "operator": "=", "operand": {"value": schedule}},
                {"sdid": src, "field": "on", "operator": "=", "operand": {"value": on}},
            ]
        },
        "then": [{"ddid": dst, "action": "setOn"}],
    }


@pytest.fixture()
def home(live: LiveServer) -> Home:
    return new_home(live)


def test_schedule_validation_paths(live: LiveServer, client: httpx.Client, home: Home) -> None:
    bad = scheduled(home, "every day at noon")
    bad["if"]["and"].append({"field": "datetime", "operator": ">", "operand": {"value": "* * * * *"}})
    errors = field_errors(create(client, home.user, bad))
    assert set(errors) == {"if.and.0.operand.value", "if.and.2.operator", "if.and.2.field"}, errors


def test_cron_rule_fires_on_schedule_when_conditions_hold(
    live: LiveServer, client: httpx.Client, home: Home
) -> None:
    src, dst = home.devices[0], home.devices[1]
    # Three instants two minutes apart, the first 2-3 minutes ahead on the server's clock (so that
    # no instant comes while the test is still setting up, whatever the real time is).
    now = live.clock.now_ms()
    first = (now // 60_000 + 3) * 60_000
    minutes = ",".join(str((first // 60_000 + k) % 60) for k in (0, 2, 4))
    rule = created(client, home.user, scheduled(home, f"{minutes} * * * * TZ Europe/Paris"))
    assert rule["description"].startswith(f"IF datetime is {minutes} * * * * TZ Europe/Paris AND Sensor 0 on")
    home.send(live, src, {"on": True})  # a message alone never fires a scheduled rule
    entry = wait_for(lambda: trace(client, home.user, rule["id"]))[0]
    assert entry["fired"] is False and "schedule" in entry["reason"]
    live.clock.advance((first - live.clock.now_ms()) / 1000 + 30)
    wait_for(lambda: executions(client, home.user, rule["id"])["countApply"] == 1)
    wait_for(
        lambda: trace(client, home.user, rule["id"])[0]["cause"] == "schedule"
    )  # written after the count
    live.clock.advance(120)  # the next instant was planned by the first
    wait_for(lambda: executions(client, home.user, rule["id"])["countApply"] == 2)
    home.send(live, src, {"on": False})
    wait_for(lambda: trace(client, home.user, rule["id"])[0]["cause"] == "message")
    live.clock.advance(120)
    wait_for(lambda: "does not hold" in trace(client, home.user, rule["id"])[0]["reason"])
    assert executions(client, home.user, rule["id"])["countApply"] == 2
    assert len(stored_actions(live, dst)) == 2
    # Disabled: its pending instant (an hour later) does nothing and plans no other.
    client.put(f"/v1.1/rules/{rule['id']}", headers=home.user.headers, json={"enabled": False})

    async def planned(rt: Any) -> list[dict[str, Any]]:
        from sqlalchemy import select

        from thingcloud import tables as t

        async with rt.db.read() as conn:
            rows = await conn.execute(
                select(t.jobs.c.payload, t.jobs.c.status).where(t.jobs.c.kind == "rules.schedule")
            )
            return [dict(r._mapping) for r in rows if r[0]["rule"] == rule["id"]]

    jobs = live.call(planned)
    assert [j["status"] for j in jobs].count("succeeded") == 3
    assert [j["status"] for j in jobs].count("queued") == 1


def test_dry_run_replays_schedule_instants(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src = home.devices[0]
    start = live.clock.now_ms()
    home.send(live, src, {"on": True})
    rule = created(client, home.user, scheduled(home, "*/10 * * * *"))
    end = start + 3600 * 1000
    dry = client.post(
        f"/v1.1/rules/{rule['id']}/dryrun",
        headers=home.user.headers,
        json={"startDate": start, "endDate": end},
    )
    assert dry.status_code == 200, dry.text
    firings = dry.json()["data"]["firings"]
    assert len(firings) == 6 and {f["cause"] for f in firings} == {"schedule"}
    assert all(f["ts"] % 600_000 == 0 for f in firings)
