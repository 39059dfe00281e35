"""Message and action queries over HTTP (S45, S47, S48, S52): every parameter combination against
values computed here from what was sent, full paging with ``next`` cursors, paging while new and
backdated messages arrive, tampered and foreign cursors, permissions and bad input."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from thingcloud.areas.messages.writer import Pending
from thingcloud.auth.permissions import AppPermissions
from thingcloud.ids import new_message_id

from .conftest import LiveServer
from .factories import app_token, make_app, make_device, make_device_token, make_user, password_token
from .test_messages_ingest import Lamp, new_lamp

MINUTE = 60_000
DAY = 86_400_000


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def payload(i: int) -> dict[str, Any]:
    """Message i: temp on most, state on all, location.x on every fourth."""
    data: dict[str, Any] = {"state": i % 3 == 0}
    if i % 5:
        data["temp"] = float((i * 7) % 50 - 10) + 0.5
    if i % 4 == 0:
        data["location"] = {"x": float(i)}
    return data


def send(client: httpx.Client, token: str, sdid: str, ts: int, data: dict[str, Any]) -> dict[str, Any]:
    response = client.post(
        "/v1.1/messages", headers=bearer(token), json={"sdid": sdid, "ts": ts, "data": data}
    )
    assert response.status_code == 200, response.text
    return {"mid": response.json()["data"]["mid"], "sdid": sdid, "ts": ts, "data": data}


@dataclass
class History:
    lamp: Lamp
    base: int
    sent: list[dict[str, Any]] = field(default_factory=list)

    def between(self, start: int, end: int, order: str = "asc") -> list[dict[str, Any]]:
        rows = sorted((m for m in self.sent if start <= m["ts"] <= end), key=lambda m: (m["ts"], m["mid"]))
        return rows if order == "asc" else rows[::-1]


def fill(live: LiveServer, client: httpx.Client, lamp: Lamp, base: int, n: int) -> list[dict[str, Any]]:
    # Two messages share every tenth ts, so (ts, mid) ordering and paging across equal ts are exercised.
    return [
        send(client, lamp.token, lamp.did, base + (i - i % 10 // 9) * MINUTE, payload(i)) for i in range(n)
    ]


@pytest.fixture(scope="module")
def history(live: LiveServer) -> History:
    lamp = new_lamp(live)
    base = live.clock.now_ms() - 3 * DAY
    with live.client() as client:
        return History(lamp, base, fill(live, client, lamp, base, 230))


def page_all(client: httpx.Client, headers: dict[str, str], path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a query, following ``next``; checks each envelope on the way."""
    items: list[dict[str, Any]] = []
    offset = ""
    for _ in range(1000):
        response = client.get(path, headers=headers, params={**params, "offset": offset})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["size"] == len(body["data"]) <= body["count"]
        assert body["offset"] == offset
        items.extend(body["data"])
        offset = body["next"]
        if not offset:
            return items
        assert body["size"] == body["count"]
    raise AssertionError("paging did not end")


def mids(items: list[dict[str, Any]]) -> list[str]:
    return [m["mid"] for m in items]


def error(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    return str(body["errors"][0][0]["message"][0]) if "errors" in body else str(body["message"])


# --- by device and date range -----------------------------------------------------------------------


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("count", [7, 100])
def test_device_range_paging(
    live: LiveServer, client: httpx.Client, history: History, order: str, count: int
) -> None:
    lamp = history.lamp
    start, end = history.base + 20 * MINUTE, history.base + 200 * MINUTE
    items = page_all(
        client,
        lamp.owner.headers,
        "/v1.1/messages",
        sdid=lamp.did,
        startDate=start,
        endDate=end,
        order=order,
        count=count,
    )
    expected = history.between(start, end, order)
    assert mids(items) == mids(expected)
    assert [i["data"] for i in items] == [e["data"] for e in expected]
    first = client.get(
        "/v1.1/messages",
        headers=lamp.owner.headers,
        params={"sdid": lamp.did, "startDate": start, "endDate": end, "order": order, "count": count},
    ).json()
    assert {k: v for k, v in first.items() if k not in ("data", "next")} == {
        "uid": lamp.owner.id,
        "sdid": lamp.did,
        "sdids": None,
        "startDate": start,
        "endDate": end,
        "order": order,
        "count": count,
        "size": min(count, len(expected)),
        "offset": "",
    }
    one = first["data"][0]
    assert set(one) == {"mid", "sdid", "sdtid", "uid", "ts", "cts", "mv", "data"}
    assert (one["sdtid"], one["uid"], one["mv"]) == (lamp.dtid, lamp.owner.id, 1)


def test_by_mid(live: LiveServer, client: httpx.Client, history: History) -> None:
    lamp = history.lamp
    target = history.sent[42]
    body = client.get("/v1.1/messages", headers=lamp.owner.headers, params={"mid": target["mid"]}).json()
    assert (body["size"], body["uid"], body["sdid"], body["next"]) == (1, lamp.owner.id, lamp.did, "")
    assert (body["data"][0]["mid"], body["data"][0]["ts"], body["data"][0]["data"]) == (
        target["mid"],
        target["ts"],
        target["data"],
    )
    unknown = client.get("/v1.1/messages", headers=lamp.owner.headers, params={"mid": "0" * 32})
    assert error(unknown, 404) == "Message " + "0" * 32 + " not found"
    # An application token must say whose message it means.
    app = make_app(live, lamp.owner.id)
    password_token(live, app, lamp.owner.email)
    as_app = bearer(app_token(live, app))
    assert (
        error(client.get("/v1.1/messages", headers=as_app, params={"mid": target["mid"]}))
        == "Required parameter"
    )
    with_uid = client.get(
        "/v1.1/messages", headers=as_app, params={"mid": target["mid"], "uid": lamp.owner.id}
    )
    assert with_uid.json()["data"][0]["mid"] == target["mid"]
    other_uid = client.get("/v1.1/messages", headers=as_app, params={"mid": target["mid"], "uid": "f" * 32})
    assert other_uid.status_code == 404


def test_field_presence(client: httpx.Client, history: History) -> None:
    lamp = history.lamp
    items = page_all(
        client, lamp.owner.headers, "/v1.1/messages", sdid=lamp.did, fieldPresence="Location.X", count=9
    )
    expected = [m for m in history.between(0, 2**62) if "location" in m["data"]]
    assert mids(items) == mids(expected) and len(expected) > 9
    start, end = history.base, history.base + 50 * MINUTE
    ranged = page_all(
        client,
        lamp.owner.headers,
        "/v1.1/messages",
        sdid=lamp.did,
        fieldPresence="temp",
        startDate=start,
        endDate=end,
        order="desc",
    )
    assert mids(ranged) == mids([m for m in history.between(start, end, "desc") if "temp" in m["data"]])


FILTERS = [
    ("temp:>20", lambda d: d.get("temp", -99) > 20),
    ("TEMP:<=0", lambda d: "temp" in d and d["temp"] <= 0),
    ("temp:>=30.5", lambda d: d.get("temp", -99) >= 30.5),
    ("temp:<-5", lambda d: d.get("temp", 99) < -5),
    ("temp:12.5", lambda d: d.get("temp") == 12.5),
    ("+temp:>10 +state:true", lambda d: d.get("temp", -99) > 10 and d["state"]),
    ("state:true temp:<-5", lambda d: d["state"] or d.get("temp", 99) < -5),
    ("_exists_:location.x", lambda d: "location" in d),
    ("(+_exists_:temp +_exists_:location.x)", lambda d: "temp" in d and "location" in d),
    ("-state:true +_exists_:temp", lambda d: not d["state"] and "temp" in d),
    (
        "(temp:>30 OR temp:<-5) AND state:false",
        lambda d: (d.get("temp", 0) > 30 or d.get("temp", 0) < -5) and not d["state"],
    ),
    ("location.x:>100 NOT state:true", lambda d: d.get("location", {}).get("x", 0) > 100 and not d["state"]),
]


@pytest.mark.parametrize(("text", "predicate"), FILTERS, ids=[f[0] for f in FILTERS])
def test_filter(client: httpx.Client, history: History, text: str, predicate: Any) -> None:
    lamp = history.lamp
    start, end = history.base + 10 * MINUTE, history.base + 220 * MINUTE
    items = page_all(
        client,
        lamp.owner.headers,
        "/v1.1/messages",
        sdid=lamp.did,
        filter=text,
        startDate=start,
        endDate=end,
        count=11,
    )
    expected = [m for m in history.between(start, end) if predicate(m["data"])]
    assert expected and mids(items) == mids(expected)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("temp:>abc", "'abc' is not a number (field 'temp' is numeric) at position 7"),
        ("temp:>5)", "Unbalanced ')' at position 8"),
        ("(temp:>5", "Unclosed '(' at position 1"),
        ("nosuch:1", "Unknown field 'nosuch' at position 1"),
        ("+temp", "Expected ':' after 'temp' at position 6"),
        ("state:>1", "'>' needs a numeric field; 'state' is Boolean at position 8"),
        ("state:maybe", "'maybe' is not true or false (field 'state' is Boolean) at position 7"),
        ("temp:1 AND", "AND without a right-hand term at position 11"),
        ("()", "Empty expression at position 2"),
        ('temp:"1', "Unterminated quoted value at position 6"),
    ],
)
def test_filter_errors(client: httpx.Client, history: History, text: str, problem: str) -> None:
    lamp = history.lamp
    params = {"sdid": lamp.did, "filter": text, "startDate": history.base, "endDate": history.base + DAY}
    response = client.get("/v1.1/messages", headers=lamp.owner.headers, params=params)
    assert response.json()["error"]["errors"][0][0]["field"] == "filter"
    assert error(response) == problem


def test_sdids_and_uid(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    a, b = new_lamp(live, owner), new_lamp(live, owner)
    base = live.clock.now_ms() - DAY
    sent = [
        send(client, lamp.token, lamp.did, base + (i // 2) * MINUTE, payload(i))
        for i, lamp in enumerate([a, b] * 15)
    ]
    expected = sorted(sent, key=lambda m: (m["ts"], m["mid"]))
    start, end = base, base + DAY
    both = page_all(
        client,
        owner.headers,
        "/v1.1/messages",
        sdids=f"{a.did},{b.did}",
        startDate=start,
        endDate=end,
        count=4,
    )
    assert mids(both) == mids(expected)
    by_uid = page_all(
        client, owner.headers, "/v1.1/messages", uid=owner.id, startDate=start, endDate=end, order="desc"
    )
    assert mids(by_uid) == mids(expected[::-1])
    mine = page_all(
        client, owner.headers, "/v1.1/messages", startDate=start, endDate=end
    )  # uid defaults to the caller
    assert mids(mine) == mids(expected)
    stranger = make_user(live)
    refused = client.get(
        "/v1.1/messages",
        headers=stranger.headers,
        params={"sdids": f"{a.did},{b.did}", "startDate": start, "endDate": end},
    )
    assert refused.status_code == 403
    assert (
        client.get(
            "/v1.1/messages",
            headers=stranger.headers,
            params={"uid": owner.id, "startDate": start, "endDate": end},
        ).status_code
        == 403
    )


# --- cursors ------------------------------------------------------------------------------------------


def test_tampered_and_foreign_cursors(client: httpx.Client, history: History) -> None:
    lamp = history.lamp
    params = {"sdid": lamp.did, "startDate": history.base, "endDate": history.base + DAY, "count": 5}
    cursor = client.get("/v1.1/messages", headers=lamp.owner.headers, params=params).json()["next"]
    assert cursor
    flipped = cursor[:3] + ("A" if cursor[3] != "A" else "B") + cursor[4:]
    for bad in (flipped, cursor[:-1] + ("0" if cursor[-1] != "0" else "1"), "garbage", cursor + "x", "..."):
        assert error(
            client.get("/v1.1/messages", headers=lamp.owner.headers, params={**params, "offset": bad})
        ).startswith("Invalid cursor")
    foreign = {**params, "endDate": history.base + DAY - 1}
    assert (
        client.get(
            "/v1.1/messages", headers=lamp.owner.headers, params={**foreign, "offset": cursor}
        ).status_code
        == 400
    )
    desc = {**params, "order": "desc"}
    assert (
        client.get(
            "/v1.1/messages", headers=lamp.owner.headers, params={**desc, "offset": cursor}
        ).status_code
        == 400
    )
    # The same query with another page size is the same query: the cursor is accepted.
    assert (
        client.get(
            "/v1.1/messages", headers=lamp.owner.headers, params={**params, "count": 50, "offset": cursor}
        ).status_code
        == 200
    )


def test_paging_while_messages_arrive(live: LiveServer, client: httpx.Client) -> None:
    """A page sequence started at T returns exactly what was committed before T: new messages (in the
    range, before and after the cursor, backdated) and a message received before T but committed after
    it never appear, and nothing is returned twice or skipped."""
    lamp = new_lamp(live)
    base = live.clock.now_ms() - 2 * DAY
    committed = fill(live, client, lamp, base, 120)
    start, end = base, base + DAY
    snapshot = sorted((m for m in committed if start <= m["ts"] <= end), key=lambda m: (m["ts"], m["mid"]))

    first = client.get(
        "/v1.1/messages",
        headers=lamp.owner.headers,
        params={"sdid": lamp.did, "startDate": start, "endDate": end, "count": 10},
    ).json()
    items = list(first["data"])
    horizon = live.clock.now_ms()

    async def late_commit(rt: Any) -> str:
        # Received before the first page (cts in the past) but committed after it.
        row = {
            "mid": new_message_id(horizon - 5),
            "sdid": lamp.did,
            "sdtid": lamp.dtid,
            "uid": lamp.owner.id,
            "ts": base + 90 * MINUTE + 1,
            "cts": horizon - 5,
            "mv": 1,
            "data": {"temp": 1.5},
        }
        return await rt.writer.submit(Pending("message", row, lamp.did))

    late_mid = live.call(late_commit)
    stop = threading.Event()
    arrived: list[dict[str, Any]] = []

    def keep_sending() -> None:
        with live.client() as sender:
            i = 0
            while not stop.is_set() and i < 200:
                ts = base + ((i * 37) % 1400) * MINUTE + 3  # backdated into the whole range, in no order
                arrived.append(send(sender, lamp.token, lamp.did, ts, payload(i)))
                i += 1

    thread = threading.Thread(target=keep_sending)
    thread.start()
    try:
        offset = first["next"]
        while offset:
            body = client.get(
                "/v1.1/messages",
                headers=lamp.owner.headers,
                params={"sdid": lamp.did, "startDate": start, "endDate": end, "count": 10, "offset": offset},
            ).json()
            items.extend(body["data"])
            offset = body["next"]
            # Also messages that land right after the cursor, written between two pages.
            if body["data"]:
                last = body["data"][-1]
                arrived.append(send(client, lamp.token, lamp.did, last["ts"], {"temp": float(len(items))}))
    finally:
        stop.set()
        thread.join()
    assert arrived and late_mid
    assert mids(items) == mids(snapshot)
    # A new query sees everything.
    fresh = page_all(
        client, lamp.owner.headers, "/v1.1/messages", sdid=lamp.did, startDate=start, endDate=end
    )
    every = sorted(
        (m for m in committed + arrived if start <= m["ts"] <= end), key=lambda m: (m["ts"], m["mid"])
    )
    assert late_mid in mids(fresh)
    assert [m for m in mids(fresh) if m != late_mid] == mids(every)


# --- bad input ----------------------------------------------------------------------------------------


def test_bad_input(client: httpx.Client, history: History) -> None:
    lamp = history.lamp
    h = lamp.owner.headers
    base = history.base

    def get(**params: Any) -> httpx.Response:
        return client.get("/v1.1/messages", headers=h, params=params)

    assert error(get(sdid=lamp.did)) == "Required parameter"
    assert error(get(sdid=lamp.did, startDate=base)) == "Required parameter"
    assert error(get(filter="temp:1", startDate=base, endDate=base + 1)) == "Required parameter"
    assert error(get(sdid=lamp.did, startDate=base, endDate=base + 32 * DAY)) == "Maximum range 31 days"
    assert (
        error(get(sdid=lamp.did, startDate=base, endDate=base - 1)) == "endDate must not be before startDate"
    )
    assert (
        error(get(sdid=lamp.did, startDate=base, endDate=base + 1, order="sideways"))
        == "Must be 'asc' or 'desc'"
    )
    assert get(sdid=lamp.did, startDate="yesterday", endDate=base).status_code == 400
    assert get(sdid=lamp.did, startDate=base, endDate=base + 1, count="many").status_code == 400
    clamped = get(sdid=lamp.did, startDate=base, endDate=base + DAY, count=500).json()
    assert (clamped["count"], clamped["size"]) == (100, 100)
    assert get(sdid="0" * 32, startDate=base, endDate=base + 1).status_code == 404
    assert error(get(sdid=lamp.did, fieldPresence="nosuch")) == "Unknown field 'nosuch'"
    assert client.get("/v1.1/messages", params={"sdid": lamp.did}).status_code == 401
    assert error(client.get("/v1.1/messages/last", headers=h)) == "Required parameter"
    too_many = ",".join([lamp.did] + [f"{i:032x}" for i in range(100)])
    assert (
        error(client.get("/v1.1/messages/snapshots", headers=h, params={"sdids": too_many}))
        == "Maximum 100 device ids"
    )


# --- permissions --------------------------------------------------------------------------------------


def test_permissions(live: LiveServer, client: httpx.Client, history: History) -> None:
    lamp = history.lamp
    owner = lamp.owner
    recipient, stranger = make_user(live), make_user(live)
    share = client.post(
        f"/v1.1/devices/{lamp.did}/shares", headers=owner.headers, json={"email": recipient.email}
    )
    assert share.status_code == 200, share.text
    accepted = client.put(
        f"/v1.1/devices/{lamp.did}/shares/{share.json()['shareId']}",
        headers=recipient.headers,
        json={"status": "ACCEPTED"},
    )
    assert accepted.status_code == 200
    with_app = make_app(
        live, owner.id, permissions=AppPermissions(device_types={lamp.dtid: frozenset({"READ"})})
    )
    without_app = make_app(
        live, owner.id, permissions=AppPermissions(device_types={"dtother": frozenset({"READ"})})
    )
    for app in (with_app, without_app):
        password_token(live, app, owner.email)
    other = make_device(live, owner.headers, lamp.dtid, name="Other")
    callers = {
        "owner": (owner.headers, 200),
        "recipient": (recipient.headers, 200),
        "stranger": (stranger.headers, 403),
        "app with READ": (bearer(app_token(live, with_app)), 200),
        "app without": (bearer(app_token(live, without_app)), 403),
        "own device": (lamp.device, 200),
        "other device": (bearer(make_device_token(live, owner, other["id"])), 403),
    }
    base = history.base
    target = history.sent[3]["mid"]
    calls = [
        ("/v1.1/messages", {"sdid": lamp.did, "startDate": base, "endDate": base + DAY}),
        ("/v1.1/messages", {"sdid": lamp.did, "filter": "temp:>1", "startDate": base, "endDate": base + DAY}),
        ("/v1.1/messages", {"mid": target, "uid": owner.id}),
        ("/v1.1/actions", {"ddid": lamp.did, "startDate": base, "endDate": base + DAY}),
        ("/v1.1/messages/last", {"sdids": lamp.did}),
        ("/v1.1/messages/snapshots", {"sdids": lamp.did}),
        (
            "/v1.1/messages/presence",
            {"sdid": lamp.did, "startDate": base, "endDate": base + DAY, "interval": "hour"},
        ),
        (
            "/v1.1/messages/analytics/aggregates",
            {"sdid": lamp.did, "field": "temp", "startDate": base, "endDate": base + DAY},
        ),
        (
            "/v1.1/messages/analytics/histogram",
            {"sdid": lamp.did, "field": "temp", "startDate": base, "endDate": base + DAY, "interval": "hour"},
        ),
    ]
    outcome = {
        (name, path, tuple(params)): client.get(path, headers=headers, params=params).status_code
        for name, (headers, _) in callers.items()
        for path, params in calls
    }
    assert outcome == {
        (name, path, tuple(params)): status for name, (_, status) in callers.items() for path, params in calls
    }


# --- actions ------------------------------------------------------------------------------------------


def test_actions(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    base = live.clock.now_ms() - DAY
    sent = []
    for i in range(25):
        body = {
            "ddid": lamp.did,
            "ts": base + i * MINUTE,
            "data": {"actions": [{"name": "setOn", "parameters": {}}]},
        }
        response = client.post("/v1.1/actions", headers=lamp.owner.headers, json=body)
        assert response.status_code == 200, response.text
        sent.append({"mid": response.json()["data"]["mid"], "ts": base + i * MINUTE})
    start, end = base + 2 * MINUTE, base + 20 * MINUTE
    expected = [m["mid"] for m in sent if start <= m["ts"] <= end]
    for key in ("ddid", "sdid"):
        items = page_all(
            client,
            lamp.owner.headers,
            "/v1.1/actions",
            **{key: lamp.did},
            startDate=start,
            endDate=end,
            count=4,
        )
        assert mids(items) == expected
    first = items[0]
    assert set(first) == {"mid", "ddid", "ddtid", "sdid", "uid", "ts", "cts", "mv", "data"}
    assert (first["ddid"], first["ddtid"], first["uid"], first["sdid"]) == (
        lamp.did,
        lamp.dtid,
        lamp.owner.id,
        None,
    )
    assert first["data"] == {"actions": [{"name": "setOn", "parameters": {}}]}
    for key in ("action", "name"):
        named = page_all(
            client,
            lamp.owner.headers,
            "/v1.1/actions",
            **{key: "seton"},
            ddid=lamp.did,
            startDate=start,
            endDate=end,
            order="desc",
        )
        assert mids(named) == expected[::-1]
        none = page_all(
            client,
            lamp.owner.headers,
            "/v1.1/actions",
            **{key: "setOff"},
            ddid=lamp.did,
            startDate=start,
            endDate=end,
        )
        assert none == []
    envelope = client.get("/v1.1/actions", headers=lamp.owner.headers, params={"mid": sent[5]["mid"]}).json()
    assert (envelope["ddid"], envelope["size"], envelope["data"][0]["ts"]) == (lamp.did, 1, base + 5 * MINUTE)
    assert (
        client.get("/v1.1/actions", headers=lamp.owner.headers, params={"mid": "0" * 32}).status_code == 404
    )
    assert (
        error(
            client.get(
                "/v1.1/actions", headers=lamp.owner.headers, params={"startDate": start, "endDate": end}
            )
        )
        == "Required parameter"
    )


# --- last messages and snapshots ----------------------------------------------------------------------


def test_last_messages(live: LiveServer, client: httpx.Client, history: History) -> None:
    owner = history.lamp.owner
    other = new_lamp(live, owner)
    base = live.clock.now_ms() - DAY
    other_sent = [send(client, other.token, other.did, base + i * MINUTE, payload(i)) for i in range(6)]
    newest = history.between(0, 2**62, "desc")
    body = client.get(
        "/v1.1/messages/last",
        headers=owner.headers,
        params={"sdids": f"{history.lamp.did},{other.did}", "count": 4},
    ).json()
    assert (body["sdids"], body["count"], body["size"]) == (f"{history.lamp.did},{other.did}", 4, 8)
    assert mids(body["data"]) == mids(newest[:4]) + mids(other_sent[::-1][:4])
    located = client.get(
        "/v1.1/messages/last",
        headers=owner.headers,
        params={"sdids": history.lamp.did, "count": 3, "fieldPresence": "location.x"},
    ).json()
    assert mids(located["data"]) == mids([m for m in newest if "location" in m["data"]][:3])
    default = client.get(
        "/v1.1/messages/last", headers=owner.headers, params={"sdids": history.lamp.did}
    ).json()
    assert (default["count"], mids(default["data"])) == (100, mids(newest[:100]))


def test_snapshots(live: LiveServer, client: httpx.Client, history: History) -> None:
    lamp = history.lamp
    empty = new_lamp(live, lamp.owner)
    ordered = history.between(0, 2**62)
    last: dict[str, tuple[Any, int]] = {}
    for m in ordered:
        for key, value in m["data"].items():
            if key == "location":
                last["location.x"] = (value["x"], m["ts"])
            else:
                last[key] = (value, m["ts"])
    body = client.get(
        "/v1.1/messages/snapshots", headers=lamp.owner.headers, params={"sdids": f"{lamp.did},{empty.did}"}
    ).json()
    assert body == {
        "sdids": f"{lamp.did},{empty.did}",
        "size": 2,
        "data": [
            {
                "sdid": lamp.did,
                "data": {
                    "state": last["state"][0],
                    "temp": last["temp"][0],
                    "location": {"x": last["location.x"][0]},
                },
            },
            {"sdid": empty.did, "data": {}},
        ],
    }
    timed = client.get(
        "/v1.1/messages/snapshots",
        headers=lamp.owner.headers,
        params={"sdids": lamp.did, "includeTimestamp": "true"},
    ).json()
    leaf = lambda key: {"value": last[key][0], "ts": last[key][1]}  # noqa: E731
    assert timed["data"][0]["data"] == {
        "state": leaf("state"),
        "temp": leaf("temp"),
        "location": {"x": leaf("location.x")},
    }
    assert (
        client.get(
            "/v1.1/messages/snapshots", headers=lamp.owner.headers, params={"sdids": "0" * 32}
        ).status_code
        == 404
    )
