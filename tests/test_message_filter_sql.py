"""Filters evaluated in SQL first (filters.py pre-filter) keep the Python predicate's results: text
and Boolean fields, and a field whose type changed between manifest versions (older messages hold
text where the manifest now says Double: no failed cast on PostgreSQL, no match either)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from thingcloud.areas.messages import rollups

from .conftest import LiveServer
from .factories import make_device, make_device_token, make_device_type, make_user
from .test_message_queries import MINUTE, send
from .test_message_rollups import rolled_up, rollup_rows

DAY_SPAN = 200 * MINUTE
V1 = {"fields": [{"name": "level", "valueClass": "String"}, {"name": "mode", "valueClass": "String"}]}
V2 = {
    "fields": [
        {"name": "level", "valueClass": "Double"},
        {"name": "mode", "valueClass": "String"},
        {"name": "on", "valueClass": "Boolean"},
        {"name": "pos", "children": [{"name": "x", "valueClass": "Double"}]},
    ]
}


@pytest.fixture(scope="module")
def device(live: LiveServer) -> tuple[dict[str, str], str, list[dict[str, Any]], int]:
    owner = make_user(live)
    dtid = make_device_type(live, owner.id, documents=[V1, V2])
    did = make_device(live, owner.headers, dtid, manifestVersion=1, manifestVersionPolicy="DEVICE")["id"]
    token = make_device_token(live, owner, did)
    base = live.clock.now_ms() - 100 * MINUTE
    sent = []
    with live.client() as client:
        for i, level in enumerate(["high", "7", "low"]):
            sent.append(send(client, token, did, base + i * MINUTE, {"level": level, "mode": "eco mode"}))
        moved = client.put(
            f"/v1.1/devices/{did}",
            headers=owner.headers,
            json={"manifestVersion": 2, "manifestVersionPolicy": "DEVICE"},
        )
        assert moved.status_code == 200, moved.text
        for i in range(12):
            data: dict[str, Any] = {
                "level": float(i),
                "mode": "eco" if i % 3 else "eco mode",
                "on": i % 2 == 0,
            }
            if i % 4 == 0:
                data["pos"] = {"x": float(-i)}
            sent.append(send(client, token, did, base + (10 + i) * MINUTE, data))
    return owner.headers, did, sent, base


CASES = [
    ("level:>5", lambda d: isinstance(d["level"], float) and d["level"] > 5),
    ("level:7", lambda d: d["level"] == 7.0),
    ("mode:eco", lambda d: d["mode"] == "eco"),
    ('+mode:"eco mode" +on:false', lambda d: d["mode"] == "eco mode" and d.get("on") is False),
    ('mode:"eco mode" +on:false', lambda d: d.get("on") is False),  # a required clause: "should" ignored
    ("on:true OR _exists_:pos.x", lambda d: d.get("on") is True or "pos" in d),
    ("-on:true +_exists_:level", lambda d: d.get("on") is not True),
    ("pos.x:<-3", lambda d: "pos" in d and d["pos"]["x"] < -3),
]


@pytest.mark.parametrize(("text", "predicate"), CASES, ids=[c[0] for c in CASES])
def test_sql_filters_match_the_python_predicate(
    client: httpx.Client,
    device: tuple[dict[str, str], str, list[dict[str, Any]], int],
    text: str,
    predicate: Any,
) -> None:
    headers, did, sent, base = device
    params = {"sdid": did, "filter": text, "startDate": base, "endDate": base + DAY_SPAN, "count": 5}
    found: list[str] = []
    offset = ""
    while True:
        response = client.get("/v1.1/messages", headers=headers, params={**params, "offset": offset})
        assert response.status_code == 200, response.text
        body = response.json()
        found += [m["mid"] for m in body["data"]]
        offset = body["next"]
        if not offset:
            break
    expected = [m["mid"] for m in sorted(sent, key=lambda m: m["ts"]) if predicate(m["data"])]
    assert expected and found == expected


def test_field_presence_in_sql(
    client: httpx.Client, device: tuple[dict[str, str], str, list[dict[str, Any]], int]
) -> None:
    headers, did, sent, _ = device
    response = client.get(
        "/v1.1/messages/last", headers=headers, params={"sdids": did, "count": 100, "fieldPresence": "pos.x"}
    )
    assert response.status_code == 200, response.text
    expected = [m["mid"] for m in sorted(sent, key=lambda m: -m["ts"]) if "pos" in m["data"]]
    assert [m["mid"] for m in response.json()["data"]] == expected


def test_analytics_skip_values_of_another_type(
    live: LiveServer, client: httpx.Client, device: tuple[dict[str, str], str, list[dict[str, Any]], int]
) -> None:
    """Text stored under manifest v1 is no number for aggregates, raw or rolled up (no failed cast)."""
    headers, did, sent, base = device
    rolled_up(live)  # the rollup consumer got past the text values
    day_rows = [r for r in rollup_rows(live, did) if r["path"] == "level" and r["size"] == rollups.DAY_MS]
    live.clock.advance(61)
    numbers = [m["data"]["level"] for m in sent if isinstance(m["data"]["level"], float)]
    params = {"sdid": did, "field": "level", "startDate": base, "endDate": base + DAY_SPAN}
    response = client.get("/v1.1/messages/analytics/aggregates", headers=headers, params=params)
    assert response.status_code == 200, response.text
    stats = response.json()["data"][0]
    assert (stats["count"], stats["sum"], stats["min"], stats["max"]) == (
        len(numbers),
        sum(numbers),
        min(numbers),
        max(numbers),
    )
    assert sum(r["n"] for r in day_rows) == len(numbers)
