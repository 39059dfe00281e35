"""The rules API and engine through HTTP with real messages: CRUD (S8, S65–S71), validation with JSON
paths, operators per valueClass, selectors, valueFrom, AND over time, executions, test runs, the
device-deleted invalidation, permissions per token kind, trace and dry-run (extensions)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from thingcloud.auth.permissions import AppPermissions

from .conftest import LiveServer
from .factories import (
    TestUser,
    app_token,
    make_app,
    make_device,
    make_device_token,
    make_device_type,
    make_user,
)
from .test_messages_ingest import bearer, stored_actions

SENSOR_MANIFEST: dict[str, Any] = {
    "fields": [
        {"name": "temp", "valueClass": "Double"},
        {"name": "count", "valueClass": "Integer"},
        {"name": "label", "valueClass": "String"},
        {"name": "on", "valueClass": "Boolean"},
        {"name": "location", "children": [{"name": "x", "valueClass": "Double"}]},
    ],
    "actions": [
        {"name": "setOn"},
        {"name": "setText", "parameters": [{"name": "text", "valueClass": "String"}]},
        {"name": "setLevel", "parameters": [{"name": "level", "valueClass": "Integer"}]},
    ],
}


@dataclass
class Home:
    """A user with a sensor device type and a few devices of it, each with its device token."""

    user: TestUser
    dtid: str
    devices: list[str]
    tokens: dict[str, str]

    def send(self, live: LiveServer, did: str, data: dict[str, Any]) -> str:
        response = httpx.post(
            f"{live.url}/v1.1/messages", headers=bearer(self.tokens[did]), json={"data": data}
        )
        assert response.status_code == 200, response.text
        mid: str = response.json()["data"]["mid"]
        return mid


def new_home(live: LiveServer, devices: int = 3, user: TestUser | None = None) -> Home:
    user = user or make_user(live)
    dtid = make_device_type(live, user.id, documents=[SENSOR_MANIFEST])
    dids = [make_device(live, user.headers, dtid, name=f"Sensor {i}")["id"] for i in range(devices)]
    return Home(user, dtid, dids, {d: make_device_token(live, user, d) for d in dids})


@pytest.fixture()
def home(live: LiveServer) -> Home:
    return new_home(live)


def create(client: httpx.Client, user: TestUser, rule: dict[str, Any], **body: Any) -> httpx.Response:
    return client.post("/v1.1/rules", headers=user.headers, json={"name": "Test rule", "rule": rule, **body})


def created(client: httpx.Client, user: TestUser, rule: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = create(client, user, rule, **body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def simple(sdid: str, ddid: str, operator: str = ">", value: Any = 30, field: str = "temp") -> dict[str, Any]:
    return {
        "if": {"and": [{"sdid": sdid, "field": field, "operator": operator, "operand": {"value": value}}]},
        "then": [{"ddid": ddid, "action": "setOn", "parameters": {}}],
    }


def wait_for(check: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def field_errors(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 4001
    return {e["field"]: e["messages"] for e in error["errors"][0]}


def executions(client: httpx.Client, user: TestUser, rule_id: str) -> dict[str, Any]:
    response = client.get(f"/v1.1/rules/{rule_id}/executions", headers=user.headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def trace(client: httpx.Client, user: TestUser, rule_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1.1/rules/{rule_id}/trace", headers=user.headers)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["data"]
    return entries


def settle(client: httpx.Client, home: Home, rule_id: str, evaluations: int) -> list[dict[str, Any]]:
    """Wait until the engine has evaluated the rule ``evaluations`` times (its trace shows them)."""
    return wait_for(lambda: (e := trace(client, home.user, rule_id)) and len(e) >= evaluations and e)  # type: ignore[no-any-return]


# --- CRUD -------------------------------------------------------------------------------------------


def test_create_get_update_delete(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src, dst = home.devices[0], home.devices[1]
    rule = created(client, home.user, simple(src, dst, ">=", 180))
    assert rule["uid"] == home.user.id
    assert rule["aid"] == home.user.app.client_id
    assert rule["languageVersion"] == 1 and rule["enabled"] is True and rule["isTestable"] is True
    assert rule["scope"] == "thisApplication" and rule["owner"] == "user"
    assert rule["invalidatedOn"] is None and rule["error"] == {}
    assert rule["description"].startswith(
        "IF Sensor 0 temp is more than or equal to 180\nTHEN send to Sensor 1"
    )
    assert rule["index"] >= 1
    second = created(client, home.user, simple(src, dst), description="mine")
    assert second["index"] == rule["index"] + 1 and second["description"] == "mine"

    got = client.get(f"/v1.1/rules/{rule['id']}", headers=home.user.headers)
    assert got.status_code == 200 and got.json()["data"] == rule

    updated = client.put(
        f"/v1.1/rules/{rule['id']}", headers=home.user.headers, json={"name": "Renamed", "enabled": False}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["data"]["name"] == "Renamed" and updated.json()["data"]["enabled"] is False
    mismatch = client.put(f"/v1.1/rules/{rule['id']}", headers=home.user.headers, json={"id": "other"})
    assert mismatch.status_code == 400 and "does not match" in str(mismatch.json())

    listed = client.get(f"/v1.1/users/{home.user.id}/rules", headers=home.user.headers)
    assert listed.status_code == 200
    body = listed.json()
    assert [r["id"] for r in body["data"]] == [rule["id"], second["id"]]
    assert body["total"] == 2 and body["count"] == 2 and body["offset"] == 0
    legacy = client.get("/v1.1/rules", headers=home.user.headers, params={"uid": home.user.id})
    assert legacy.status_code == 200 and legacy.json()["data"] == body["data"]
    enabled_only = client.get(
        f"/v1.1/users/{home.user.id}/rules", headers=home.user.headers, params={"excludeDisabled": "true"}
    )
    assert [r["id"] for r in enabled_only.json()["data"]] == [second["id"]]
    paged = client.get(
        f"/v1.1/users/{home.user.id}/rules", headers=home.user.headers, params={"count": 1, "offset": 1}
    )
    assert [r["id"] for r in paged.json()["data"]] == [second["id"]] and paged.json()["total"] == 2

    deleted = client.delete(f"/v1.1/rules/{rule['id']}", headers=home.user.headers)
    assert deleted.status_code == 200 and deleted.json()["data"]["id"] == rule["id"]
    assert client.get(f"/v1.1/rules/{rule['id']}", headers=home.user.headers).status_code == 404


def test_user_id_query_forms(live: LiveServer, client: httpx.Client, home: Home) -> None:
    rule = simple(home.devices[0], home.devices[1])
    token = app_token(live, home.user.app)
    # The application token acts for the user who authorized it, named in any of the accepted ways.
    for url, extra in (
        (f"/v1.1/rules?userId={home.user.id}", {}),
        (f"/v1.1/rules?userId<{home.user.id}>", {}),
        (f"/v1.1/rules?userId{home.user.id}", {}),
        ("/v1.1/rules", {"uid": home.user.id}),
    ):
        got = client.post(url, headers=bearer(token), json={"name": "App rule", "rule": rule, **extra})
        assert got.status_code == 200, (url, got.text)
        assert got.json()["data"]["uid"] == home.user.id and got.json()["data"]["owner"] == "application"
    missing = client.post("/v1.1/rules", headers=bearer(token), json={"name": "App rule", "rule": rule})
    assert missing.status_code == 400


# --- validation ---------------------------------------------------------------------------------------


def test_bad_rules_report_paths_and_store_nothing(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src, dst = home.devices[0], home.devices[1]
    bad = {
        "if": {
            "and": [
                {"sdid": src, "field": "nope", "operator": ">", "operand": {"value": 1}},
                {"sdid": src, "field": "on", "operator": ">", "operand": {"value": True}},
                {"sdid": src, "field": "temp", "operator": "~", "operand": {"value": 1}},
                {"sdid": src, "field": "temp", "operator": ">"},
                {
                    "sdid": {"selector": "sometimes", "dtid": home.dtid},
                    "field": "temp",
                    "operator": "=",
                    "operand": {"value": 1},
                },
                {"sdid": "d" * 32, "field": "temp", "operator": "=", "operand": {"value": 1}},
                {
                    "sdid": src,
                    "field": "temp",
                    "operator": "=",
                    "operand": {"add": [{"add": [{"add": [{"add": [{"add": [{"value": 1}]}]}]}]}]},
                },
                {
                    "sdid": src,
                    "field": "temp",
                    "operator": "=",
                    "operand": {"value": 1},
                    "duration": {"value": -1},
                },
                {
                    "sdid": src,
                    "field": "label",
                    "operator": "=",
                    "operand": {"concat": [{"value": "x"}] * 40},
                },
            ]
        },
        "then": [
            {"ddid": dst, "action": "explode"},
            {"ddid": dst, "action": "setLevel", "parameters": {"level": {"value": "high"}}},
            {"ddid": {"selector": "matched", "dtid": home.dtid}, "action": "setOn"},
        ],
    }
    errors = field_errors(create(client, home.user, bad))
    assert create(client, home.user, bad).json()["error"]["message"] == "Invalid rule"
    assert set(errors) == {
        "if.and.0.field",
        "if.and.1.operator",
        "if.and.2.operator",
        "if.and.3.operand",
        "if.and.4.sdid.selector",
        "if.and.5.sdid",
        "if.and.6.operand.add.0.add.0.add.0.add.0.add.0",
        "if.and.8.operand.concat.31",  # the 33rd operand, counting the concat itself
        "if.and.7.duration.value",
        "then.0.action",
        "then.1.parameters.level",
        "then.2.ddid",
    }, errors
    assert field_errors(create(client, home.user, {"if": {"and": []}, "then": []})).keys() == {
        "if.and",
        "then",
    }
    assert "rule" in field_errors(create(client, home.user, "not an object"))  # type: ignore[arg-type]
    assert "name" in field_errors(
        client.post("/v1.1/rules", headers=home.user.headers, json={"rule": simple(src, dst)})
    )
    long_name = create(client, home.user, simple(src, dst), name="x" * 65)
    assert "name" in field_errors(long_name)
    listed = client.get(f"/v1.1/users/{home.user.id}/rules", headers=home.user.headers)
    assert listed.json()["total"] == 0


def test_operators_per_value_class(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src, dst = home.devices[0], home.devices[1]
    allowed = {
        "temp": ["=", "!=", "<", "<=", ">", ">=", "is in message", "is not in message"],
        "label": ["=", "!=", "<", "<=", ">", ">=", "contains", "does not contain", "is in message"],
        "on": ["=", "!=", "is in message", "is not in message"],
    }
    refused = {"temp": ["contains", "does not contain"], "on": ["<", ">", "contains"], "count": ["contains"]}
    values = {"temp": 1, "label": "a", "on": True, "count": 1}
    for name, operators in allowed.items():
        for operator in operators:
            rule = created(client, home.user, simple(src, dst, operator, values[name], field=name))
            client.delete(f"/v1.1/rules/{rule['id']}", headers=home.user.headers)
    for name, operators in refused.items():
        for operator in operators:
            errors = field_errors(
                create(client, home.user, simple(src, dst, operator, values[name], field=name))
            )
            assert list(errors) == ["if.operator" if False else "if.and.0.operator"], errors


@pytest.mark.parametrize(
    ("name", "operator", "operand", "sent", "fires"),
    [
        ("temp", ">", 30, [{"temp": 25}, {"temp": 31.5}], [False, True]),
        ("temp", "<=", 30, [{"temp": 31}, {"temp": 30}], [False, True]),
        ("temp", "=", 20, [{"temp": 20.5}, {"temp": 20}], [False, True]),
        ("temp", "!=", 20, [{"temp": 20}, {"temp": 21}], [False, True]),
        ("count", ">=", 10, [{"count": 9}, {"count": 10}], [False, True]),
        ("count", "<", 10, [{"count": 10}, {"count": 2}], [False, True]),
        ("label", "contains", "ell", [{"label": "abc"}, {"label": "hello"}], [False, True]),
        ("label", "does not contain", "x", [{"label": "xyz"}, {"label": "abc"}], [False, True]),
        ("label", "=", "on", [{"label": "off"}, {"label": "on"}], [False, True]),
        ("label", ">", "m", [{"label": "a"}, {"label": "z"}], [False, True]),
        ("on", "=", True, [{"on": False}, {"on": True}], [False, True]),
        ("on", "!=", True, [{"on": True}, {"on": False}], [False, True]),
        ("location.x", ">", 1, [{"location": {"x": 0}}, {"location": {"x": 2}}], [False, True]),
        ("label", "is in message", None, [{"temp": 1}, {"label": "here"}], [False, True]),
        ("label", "is not in message", None, [{"label": "here"}, {"temp": 1}], [False, True]),
    ],
)
def test_operators_fire_on_real_messages(
    live: LiveServer,
    client: httpx.Client,
    home: Home,
    name: str,
    operator: str,
    operand: Any,
    sent: list[Any],
    fires: list[bool],
) -> None:
    src, dst = home.devices[0], home.devices[1]
    body = simple(src, dst, operator, operand, field=name)
    if operand is None:
        del body["if"]["and"][0]["operand"]
    rule = created(client, home.user, body)
    for n, (data, fired) in enumerate(zip(sent, fires, strict=True)):
        home.send(live, src, data)
        entry = settle(client, home, rule["id"], n + 1)[0]
        assert entry["fired"] is fired, entry
    assert executions(client, home.user, rule["id"])["countApply"] == fires.count(True)
    actions = stored_actions(live, dst)
    assert [a["data"] for a in actions] == [{"actions": [{"name": "setOn", "parameters": {}}]}] * fires.count(
        True
    )


def test_and_over_time_value_from_and_operations(live: LiveServer, client: httpx.Client, home: Home) -> None:
    a, b, dst = home.devices
    rule = created(
        client,
        home.user,
        {
            "if": {
                "and": [
                    {
                        "sdid": a,
                        "field": "temp",
                        "operator": ">",
                        "operand": {"valueFrom": {"sdid": b, "field": "temp"}},
                    },
                    {
                        "sdid": b,
                        "field": "label",
                        "operator": "=",
                        "operand": {"concat": [{"value": "go"}, {"value": 1}]},
                    },
                ]
            },
            "then": [
                {
                    "ddid": dst,
                    "action": "setText",
                    "parameters": {
                        "text": {"concat": [{"value": "a is "}, {"valueFrom": {"sdid": a, "field": "temp"}}]}
                    },
                },
                {
                    "ddid": dst,
                    "action": "setLevel",
                    "parameters": {"level": {"add": [{"value": 2}, {"value": "3"}, {"value": True}]}},
                },
            ],
        },
    )
    assert rule["isTestable"] is False
    assert executions(client, home.user, rule["id"]) == {"countApply": 0}
    home.send(live, b, {"temp": 10, "label": "go1"})  # b's condition holds from now on
    settle(client, home, rule["id"], 1)
    home.send(live, a, {"temp": 5})  # below b's last temp: no
    assert settle(client, home, rule["id"], 2)[0]["fired"] is False
    home.send(live, a, {"temp": 12})  # above, and b still says go1: fires
    entry = settle(client, home, rule["id"], 3)[0]
    assert entry["fired"] is True, entry
    assert entry["conditions"][0]["operand"] == 10
    texts = [x["data"]["actions"][0] for x in stored_actions(live, dst)]
    assert {"name": "setText", "parameters": {"text": "a is 12"}} in texts
    assert {"name": "setLevel", "parameters": {"level": 6}} in texts
    home.send(live, b, {"label": "stop"})
    home.send(live, a, {"temp": 50})
    assert settle(client, home, rule["id"], 5)[0]["fired"] is False
    counts = executions(client, home.user, rule["id"])
    assert counts["countApply"] == 1 and counts["lastApply"] > 0


def test_selectors_any_matched_every(live: LiveServer, client: httpx.Client, home: Home) -> None:
    target = new_home(live, devices=1, user=home.user)
    rule = created(
        client,
        home.user,
        {
            "if": {
                "and": [
                    {
                        "sdid": {"selector": "any", "dtid": home.dtid},
                        "field": "temp",
                        "operator": ">",
                        "operand": {"value": 30},
                    }
                ]
            },
            "then": [
                {
                    "ddid": {"selector": "matched", "dtid": home.dtid},
                    "action": "setText",
                    "parameters": {"text": {"value": "hot"}},
                },
                {"ddid": {"selector": "every", "dtid": target.dtid}, "action": "setOn"},
            ],
        },
    )
    assert rule["isTestable"] is False
    home.send(live, home.devices[2], {"temp": 40})
    assert settle(client, home, rule["id"], 1)[0]["fired"] is True
    assert [x["data"]["actions"][0]["parameters"] for x in stored_actions(live, home.devices[2])] == [
        {"text": "hot"}
    ]
    assert stored_actions(live, home.devices[0]) == []
    assert len(stored_actions(live, target.devices[0])) == 1

    every = created(
        client,
        home.user,
        {
            "if": {
                "and": [
                    {
                        "sdid": {"selector": "every", "dtid": home.dtid},
                        "field": "on",
                        "operator": "=",
                        "operand": {"value": True},
                    }
                ]
            },
            "then": [{"ddid": target.devices[0], "action": "setOn"}],
        },
    )
    for n, did in enumerate(home.devices):
        home.send(live, did, {"on": True})
        assert settle(client, home, every["id"], n + 1)[0]["fired"] is (n == len(home.devices) - 1)


def test_test_run_and_testable(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src, dst = home.devices[0], home.devices[1]
    static = created(client, home.user, simple(src, dst))
    assert client.get(f"/v1.1/rules/{static['id']}/actions", headers=home.user.headers).json() == {
        "data": {"testable": True}
    }
    ran = client.post(f"/v1.1/rules/{static['id']}/actions", headers=home.user.headers)
    assert ran.status_code == 200, ran.text
    assert ran.json()["data"]["actionsSent"] == 1 and ran.json()["data"]["ruleId"] == static["id"]
    assert len(stored_actions(live, dst)) == 1

    dynamic = simple(src, dst)
    dynamic["then"].append(
        {
            "ddid": dst,
            "action": "setText",
            "parameters": {"text": {"valueFrom": {"sdid": src, "field": "label"}}},
        }
    )
    mixed = created(client, home.user, dynamic)
    assert (
        client.get(f"/v1.1/rules/{mixed['id']}/actions", headers=home.user.headers).json()["data"]["testable"]
        is True
    )
    refused = client.post(f"/v1.1/rules/{mixed['id']}/actions", headers=home.user.headers)
    assert refused.status_code == 400 and "then.1" in str(refused.json())
    assert len(stored_actions(live, dst)) == 1  # nothing sent


def test_deleted_device_invalidates_the_rule(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src, dst = home.devices[0], home.devices[1]
    rule = created(client, home.user, simple(src, dst))
    assert client.delete(f"/v1.1/devices/{dst}", headers=home.user.headers).status_code == 200

    def invalidated() -> dict[str, Any] | None:
        got = client.get(f"/v1.1/rules/{rule['id']}", headers=home.user.headers)
        assert got.status_code == 200
        data: dict[str, Any] = got.json()["data"]
        return data if data["invalidatedOn"] else None

    data = wait_for(invalidated)
    assert data["error"]["messageArgs"] == [dst]
    home.send(live, src, {"temp": 99})
    time.sleep(0.5)
    assert executions(client, home.user, rule["id"])["countApply"] == 0
    assert client.post(f"/v1.1/rules/{rule['id']}/actions", headers=home.user.headers).status_code == 400


# --- permissions ----------------------------------------------------------------------------------------


def test_permissions_per_token_kind(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src, dst = home.devices[0], home.devices[1]
    rule = created(client, home.user, simple(src, dst))
    # Device tokens manage no rules.
    device = bearer(home.tokens[src])
    assert client.get(f"/v1.1/rules/{rule['id']}", headers=device).status_code == 403
    assert (
        client.post("/v1.1/rules", headers=device, json={"name": "x", "rule": simple(src, dst)}).status_code
        == 403
    )
    # Another user: neither sees the rule nor uses the devices.
    other = make_user(live)
    assert client.get(f"/v1.1/rules/{rule['id']}", headers=other.headers).status_code == 403
    assert client.get(f"/v1.1/users/{home.user.id}/rules", headers=other.headers).status_code == 403
    theirs = new_home(live, devices=1, user=other)
    assert create(client, other, simple(src, theirs.devices[0])).status_code == 403  # cannot read src
    assert create(client, other, simple(theirs.devices[0], dst)).status_code == 403  # cannot write dst
    # An application with READ only on the type can read but not target the devices.
    reader = make_app(live, home.user.id, permissions=AppPermissions(device_types={"*": frozenset({"READ"})}))
    from .factories import password_token

    token = password_token(live, reader, home.user.email)["access_token"]
    assert (
        client.post(
            "/v1.1/rules", headers=bearer(token), json={"name": "r", "rule": simple(src, dst)}
        ).status_code
        == 403
    )
    # thisApplication rules are invisible to other applications; allApplications ones are not.
    assert client.get(f"/v1.1/rules/{rule['id']}", headers=bearer(token)).status_code == 403
    shared = created(client, home.user, simple(src, dst), scope="allApplications")
    assert client.get(f"/v1.1/rules/{shared['id']}", headers=bearer(token)).status_code == 200
    listed = client.get(f"/v1.1/users/{home.user.id}/rules", headers=bearer(token))
    assert [r["id"] for r in listed.json()["data"]] == [shared["id"]]
    own_only = client.get(
        f"/v1.1/users/{home.user.id}/rules", headers=home.user.headers, params={"scope": "thisApplication"}
    )
    assert {r["id"] for r in own_only.json()["data"]} == {rule["id"], shared["id"]}
    # An application token of the user's application sees them once the user authorized it.
    app = app_token(live, home.user.app)
    assert client.get(f"/v1.1/rules/{rule['id']}", headers=bearer(app)).status_code == 200
    stranger_app = app_token(live, make_app(live, other.id))
    assert client.get(f"/v1.1/rules/{rule['id']}", headers=bearer(stranger_app)).status_code == 403


# --- trace, loops, dry-run ----------------------------------------------------------------------------


def test_trace_rate_limit_and_dry_run(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src, dst = home.devices[0], home.devices[1]
    start = live.clock.now_ms() - 1
    rule = created(client, home.user, simple(src, dst, ">", 30))
    limit = live.settings.rule_max_firings_per_minute
    for n in range(limit + 2):
        home.send(live, src, {"temp": 40 + n})
    last = 40 + limit + 1
    entries = wait_for(
        lambda: (e := trace(client, home.user, rule["id"])) and e[0]["conditions"][0]["value"] == last and e
    )
    assert entries[0]["fired"] is False and "limit" in entries[0]["reason"]
    assert executions(client, home.user, rule["id"])["countApply"] == limit
    assert len(stored_actions(live, dst)) == limit
    assert len(trace(client, home.user, rule["id"])) <= live.settings.rule_trace_entries

    home.send(live, src, {"temp": 1})
    dry = client.post(
        f"/v1.1/rules/{rule['id']}/dryrun",
        headers=home.user.headers,
        json={"startDate": start, "endDate": live.clock.now_ms()},
    )
    assert dry.status_code == 200, dry.text
    result = dry.json()["data"]
    assert result["messages"] == limit + 3 and result["truncated"] is False
    assert len(result["firings"]) == limit + 2  # no rate limit in a replay: it shows every firing
    assert result["firings"][0]["actions"] == [{"ddid": dst, "name": "setOn", "parameters": {}}]
    assert len(stored_actions(live, dst)) == limit  # nothing sent
    bad = client.post(
        f"/v1.1/rules/{rule['id']}/dryrun", headers=home.user.headers, json={"startDate": 10, "endDate": 1}
    )
    assert bad.status_code == 400


def test_trace_storage_stays_bounded(live: LiveServer, client: httpx.Client, home: Home) -> None:
    """Trimming is amortized (a rule is trimmed every half ``rule_trace_entries`` new entries): the
    stored entries stay within 1.5x the setting, and the trace shows the newest ones."""
    from sqlalchemy import func, select

    from thingcloud import tables as t
    from thingcloud.areas.rules.firing import record_traces

    src, dst = home.devices[0], home.devices[1]
    rule = created(client, home.user, simple(src, dst, ">", 30))
    keep = live.settings.rule_trace_entries

    async def write(rt: Any) -> int:
        for n in range(3 * keep):
            entry = {"at": n, "cause": "test", "conditions": [], "fired": False, "reason": str(n)}
            await record_traces(rt, [(rule["id"], entry)])
        async with rt.db.read() as conn:
            return int(
                await conn.scalar(
                    select(func.count())
                    .select_from(t.rule_traces)
                    .where(t.rule_traces.c.rule_id == rule["id"])
                )
                or 0
            )

    stored = live.call(write)
    assert keep <= stored <= keep + keep // 2
    shown = trace(client, home.user, rule["id"])
    assert [e["reason"] for e in shown] == [str(n) for n in range(3 * keep - 1, 2 * keep - 1, -1)]


def test_a_failing_action_is_traced_and_the_engine_keeps_going(
    live: LiveServer, client: httpx.Client, home: Home
) -> None:
    src, dst = home.devices[0], home.devices[1]
    rule = simple(src, dst)
    # The level comes from another device's label: not a number when the rule fires.
    rule["then"] = [
        {
            "ddid": dst,
            "action": "setLevel",
            "parameters": {"level": {"valueFrom": {"sdid": src, "field": "label"}}},
        },
        {"ddid": dst, "action": "setOn"},
    ]
    failing = created(client, home.user, rule)
    home.send(live, src, {"label": "loud", "temp": 50})
    entry = settle(client, home, failing["id"], 1)[0]
    assert entry["fired"] is True and "1 of 2 actions failed" in entry["reason"], entry
    assert "error" in entry["actions"][0] and "mid" in entry["actions"][1]
    assert [a["data"]["actions"][0]["name"] for a in stored_actions(live, dst)] == ["setOn"]
    home.send(live, src, {"label": "7", "temp": 51})  # the engine still runs, and now the level is a number
    entry = settle(client, home, failing["id"], 2)[0]
    assert entry["reason"] == "fired", entry
    assert {"name": "setLevel", "parameters": {"level": 7}} in [
        a["data"]["actions"][0] for a in stored_actions(live, dst)
    ]
