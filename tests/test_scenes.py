"""The Scenes API through HTTP with real devices (S9, S72–S77): CRUD and both lists with paging,
activation delivering the actions to devices connected over ``/v1.1/websocket`` and MQTT, ``every``
selectors and ``valueFrom``/operations, invalidation when a device is deleted, permissions per token
kind (the Scene device type ``cloud.artik.scene``), bad input storing nothing, and the message rate
limit on activation. (The official Python SDK 2.2.3 has no ScenesApi, so there is no SDK test.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from thingcloud.auth.permissions import AppPermissions

from .conftest import LiveServer, start_live
from .factories import TestUser, app_token, make_app, password_token
from .test_messages_ingest import bearer, stored_actions
from .test_mqtt import Device, actions_topic, mqtt_port
from .test_rules import Home, field_errors, new_home, wait_for
from .test_websocket_device import open_ws, recv, registered

RW = frozenset({"READ", "WRITE"})


@pytest.fixture()
def home(live: LiveServer) -> Home:
    return new_home(live)


def on(ddid: Any, action: str = "setOn", **parameters: Any) -> dict[str, Any]:
    return {"ddid": ddid, "action": action, "parameters": parameters}


def create(client: httpx.Client, headers: dict[str, str], actions: Any, **body: Any) -> httpx.Response:
    return client.post("/v1.1/scenes", headers=headers, json={"name": "Evening", "actions": actions, **body})


def created(client: httpx.Client, user: TestUser, actions: Any, **body: Any) -> dict[str, Any]:
    response = create(client, user.headers, actions, **body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def activate(client: httpx.Client, headers: dict[str, str], scene_id: str) -> httpx.Response:
    return client.post(f"/v1.1/scenes/{scene_id}", headers=headers, json={})


def listed(client: httpx.Client, headers: dict[str, str], path: str, **params: Any) -> dict[str, Any]:
    response = client.get(path, headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"data", "total", "offset", "count"} and set(body["data"]) == {"scenes"}
    assert body["count"] == len(body["data"]["scenes"])
    return body


def user_with_app(live: LiveServer, home: Home, permissions: AppPermissions) -> dict[str, str]:
    """A user token of the home's user through another application with ``permissions``."""
    app = make_app(live, home.user.id, permissions=permissions)
    return bearer(password_token(live, app, home.user.email)["access_token"])


# --- CRUD and lists ---------------------------------------------------------------------------------


def test_create_get_update_delete_and_lists(live: LiveServer, client: httpx.Client, home: Home) -> None:
    a, b, _ = home.devices
    actions = [on(a), on(b, "setLevel", level={"value": 3})]
    scene = created(client, home.user, actions, description="lights on")
    assert scene["uid"] == home.user.id and scene["aid"] == home.user.app.client_id
    assert scene["name"] == "Evening" and scene["description"] == "lights on"
    assert scene["actions"] == actions
    assert scene["invalidatedOn"] is None and scene["error"] is None
    assert len(scene["id"]) == 32

    got = client.get(f"/v1.1/scenes/{scene['id']}", headers=home.user.headers)
    assert got.status_code == 200 and got.json() == {"data": scene}

    renamed = client.put(
        f"/v1.1/scenes/{scene['id']}",
        headers=home.user.headers,
        json={"name": "Night", "uid": "someone-else", "actions": None},
    )
    assert renamed.status_code == 200, renamed.text
    data = renamed.json()["data"]
    assert data["name"] == "Night" and data["uid"] == home.user.id and data["actions"] == actions
    assert data["description"] == "lights on"
    replaced = client.put(f"/v1.1/scenes/{scene['id']}", headers=home.user.headers, json={"actions": [on(b)]})
    assert replaced.status_code == 200 and replaced.json()["data"]["actions"] == [on(b)]

    more = [created(client, home.user, [on(a)], name=f"Scene {i}") for i in range(2)]
    ids = [scene["id"]] + [s["id"] for s in more]
    for path in ("/v1.1/scenes", f"/v1.1/users/{home.user.id}/scenes"):
        everything = listed(client, home.user.headers, path)
        assert [s["id"] for s in everything["data"]["scenes"]] == ids
        assert everything["total"] == 3 and everything["offset"] == 0
        first = listed(client, home.user.headers, path, count=2)
        rest = listed(client, home.user.headers, path, count=2, offset=2)
        assert [s["id"] for s in first["data"]["scenes"] + rest["data"]["scenes"]] == ids
        assert (first["count"], rest["count"], rest["total"], rest["offset"]) == (2, 1, 3, 2)
        assert client.get(path, headers=home.user.headers, params={"offset": -1}).status_code == 400

    # Only the scenes created by the current application are listed (and usable).
    other_app = user_with_app(live, home, AppPermissions())
    assert listed(client, other_app, "/v1.1/scenes")["total"] == 0
    assert listed(client, other_app, f"/v1.1/users/{home.user.id}/scenes")["total"] == 0
    assert client.get(f"/v1.1/scenes/{scene['id']}", headers=other_app).status_code == 403

    deleted = client.delete(f"/v1.1/scenes/{scene['id']}", headers=home.user.headers)
    assert deleted.status_code == 200 and deleted.json()["data"]["id"] == scene["id"]
    assert client.get(f"/v1.1/scenes/{scene['id']}", headers=home.user.headers).status_code == 404
    assert client.delete(f"/v1.1/scenes/{scene['id']}", headers=home.user.headers).status_code == 404
    assert activate(client, home.user.headers, scene["id"]).status_code == 404
    assert listed(client, home.user.headers, "/v1.1/scenes")["total"] == 2


# --- activation ----------------------------------------------------------------------------------------


def test_activation_reaches_websocket_and_mqtt_devices(
    live: LiveServer, client: httpx.Client, home: Home
) -> None:
    a, b, c = home.devices
    scene = created(
        client,
        home.user,
        [on(a, "setText", text={"value": "hello"}), on(b, "setLevel", level={"value": 7}), on(c)],
    )
    with (
        open_ws(live, "/v1.1/websocket", ack="true") as ws,
        Device(mqtt_port(live), b, home.tokens[b]) as mqtt,
    ):
        registered(ws, a, home.tokens[a])
        response = activate(client, home.user.headers, scene["id"])
        assert response.status_code == 200, response.text
        frame = recv(ws)
        assert mqtt.next() == (actions_topic(b), [{"name": "setLevel", "parameters": {"level": 7}}])
    data = response.json()["data"]
    assert {k: v for k, v in data.items() if k != "mids"} == scene
    assert frame["type"] == "action" and frame["ddid"] == a
    assert frame["data"] == {"actions": [{"name": "setText", "parameters": {"text": "hello"}}]}
    stored = {did: stored_actions(live, did) for did in home.devices}
    assert [r["mid"] for r in stored[a]] == [frame["mid"]]
    assert [r["data"] for r in stored[c]] == [{"actions": [{"name": "setOn", "parameters": {}}]}]
    assert data["mids"] == [stored[a][0]["mid"], stored[b][0]["mid"], stored[c][0]["mid"]]
    # Activating again sends everything again: scenes have no state.
    assert activate(client, home.user.headers, scene["id"]).status_code == 200
    assert all(len(stored_actions(live, did)) == 2 for did in home.devices)


def test_every_selector_value_from_and_operations(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src = new_home(live, devices=1, user=home.user)
    sensor = src.devices[0]
    src.send(live, sensor, {"label": "warm", "count": 4})
    scene = created(
        client,
        home.user,
        [
            {"ddid": {"selector": "every", "dtid": home.dtid}, "action": "setOn"},
            on(
                home.devices[0],
                "setText",
                text={"concat": [{"value": "it is "}, {"valueFrom": {"sdid": sensor, "field": "label"}}]},
            ),
            on(
                home.devices[1],
                "setLevel",
                level={"add": [{"valueFrom": {"sdid": sensor, "field": "count"}}, {"value": 10}]},
            ),
        ],
    )
    response = activate(client, home.user.headers, scene["id"])
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]["mids"]) == 5  # three devices of the type, two more actions
    sent = {did: [r["data"]["actions"][0] for r in stored_actions(live, did)] for did in home.devices}
    assert {"name": "setText", "parameters": {"text": "it is warm"}} in sent[home.devices[0]]
    assert {"name": "setLevel", "parameters": {"level": 14}} in sent[home.devices[1]]
    assert all({"name": "setOn", "parameters": {}} in sent[did] for did in home.devices)
    # valueFrom reads the last value at each activation.
    src.send(live, sensor, {"label": "cold"})
    assert activate(client, home.user.headers, scene["id"]).status_code == 200
    texts = [r["data"]["actions"][0]["parameters"] for r in stored_actions(live, home.devices[0])]
    assert {"text": "it is cold"} in texts


def test_a_value_the_target_refuses_sends_nothing(live: LiveServer, client: httpx.Client, home: Home) -> None:
    a, b, _ = home.devices
    home.send(live, a, {"label": "not a number"})
    scene = created(
        client,
        home.user,
        [on(b), on(b, "setLevel", level={"valueFrom": {"sdid": a, "field": "label"}})],
    )
    response = activate(client, home.user.headers, scene["id"])
    errors = field_errors(response)
    assert any(path.startswith("actions.1") for path in errors), errors
    assert stored_actions(live, b) == []


# --- invalidation ---------------------------------------------------------------------------------------


def test_deleted_device_invalidates_the_scene(live: LiveServer, client: httpx.Client, home: Home) -> None:
    a, b, c = home.devices
    scene = created(client, home.user, [on(a), on(b)])
    untouched = created(client, home.user, [on(c)])
    assert client.delete(f"/v1.1/devices/{b}", headers=home.user.headers).status_code == 200

    def invalidated() -> dict[str, Any] | None:
        got = client.get(f"/v1.1/scenes/{scene['id']}", headers=home.user.headers)
        assert got.status_code == 200
        data: dict[str, Any] = got.json()["data"]
        return data if data["invalidatedOn"] else None

    data = wait_for(invalidated)
    assert data["error"]["messageArgs"] == [b]
    assert data["error"]["fieldPath"] == {"path": [{"text": "actions.1"}]}
    refused = activate(client, home.user.headers, scene["id"])
    assert refused.status_code == 400 and "invalid" in refused.text
    assert stored_actions(live, a) == []  # nothing sent, not even to the device still there
    listed_scene = listed(client, home.user.headers, "/v1.1/scenes")["data"]["scenes"]
    assert [s["invalidatedOn"] is not None for s in listed_scene] == [True, False]
    # The other scene is still valid; new actions make the invalid one valid again.
    assert activate(client, home.user.headers, untouched["id"]).status_code == 200
    fixed = client.put(f"/v1.1/scenes/{scene['id']}", headers=home.user.headers, json={"actions": [on(a)]})
    assert fixed.status_code == 200 and fixed.json()["data"]["invalidatedOn"] is None
    assert fixed.json()["data"]["error"] is None
    assert activate(client, home.user.headers, scene["id"]).status_code == 200
    assert len(stored_actions(live, a)) == 1


# --- permissions ------------------------------------------------------------------------------------------


def test_permissions_per_token_kind(live: LiveServer, client: httpx.Client, home: Home) -> None:
    a, b, _ = home.devices
    scene = created(client, home.user, [on(a)])
    sid = scene["id"]
    # Device tokens manage no scenes.
    device = bearer(home.tokens[a])
    assert client.get(f"/v1.1/scenes/{sid}", headers=device).status_code == 403
    assert activate(client, device, sid).status_code == 403
    assert create(client, device, [on(a)]).status_code == 403
    assert client.get("/v1.1/scenes", headers=device).status_code == 403

    # Another user: 403 on the scene, 404 on an unknown one, 403 on someone else's devices.
    other = new_home(live, devices=1)
    for method in ("GET", "PUT", "DELETE", "POST"):
        response = client.request(method, f"/v1.1/scenes/{sid}", headers=other.user.headers, json={})
        assert response.status_code == 403, (method, response.text)
    assert client.get(f"/v1.1/scenes/{'0' * 32}", headers=other.user.headers).status_code == 404
    assert client.get(f"/v1.1/users/{home.user.id}/scenes", headers=other.user.headers).status_code == 403
    assert create(client, other.user.headers, [on(a)]).status_code == 403  # cannot write a
    assert create(client, other.user.headers, [on(a)], uid=home.user.id).status_code == 403
    valued = [on(other.devices[0], "setText", text={"valueFrom": {"sdid": a, "field": "label"}})]
    assert create(client, other.user.headers, valued).status_code == 403  # cannot read a

    # An application without the Scene device type cannot use the Scenes API at all.
    no_scenes = user_with_app(live, home, AppPermissions(device_types={home.dtid: RW}))
    refused = create(client, no_scenes, [on(a)])
    assert refused.status_code == 403 and "cloud.artik.scene" in refused.text
    assert client.get("/v1.1/scenes", headers=no_scenes).status_code == 403
    # READ on the Scene type reads and activates, but does not create; WRITE on the devices is needed.
    reader_perms = AppPermissions(device_types={"cloud.artik.scene": frozenset({"READ"}), home.dtid: RW})
    reader = user_with_app(live, home, reader_perms)
    assert create(client, reader, [on(a)]).status_code == 403
    full = user_with_app(live, home, AppPermissions(device_types={"cloud.artik.scene": RW, home.dtid: RW}))
    own = create(client, full, [on(a)])
    assert own.status_code == 200, own.text
    assert own.json()["data"]["aid"] != home.user.app.client_id
    read_only_devices = user_with_app(
        live, home, AppPermissions(device_types={"cloud.artik.scene": RW, home.dtid: frozenset({"READ"})})
    )
    assert create(client, read_only_devices, [on(a)]).status_code == 403
    every = [{"ddid": {"selector": "every", "dtid": home.dtid}, "action": "setOn"}]
    assert create(client, read_only_devices, every).status_code == 403

    # Application tokens: `uid` names the owner, who must have authorized the application.
    app = bearer(app_token(live, home.user.app))
    missing_uid = create(client, app, [on(b)])
    assert field_errors(missing_uid) == {"uid": ["Required parameter"]}
    by_app = create(client, app, [on(b)], uid=home.user.id)
    assert by_app.status_code == 200, by_app.text
    assert by_app.json()["data"]["uid"] == home.user.id
    assert client.get(f"/v1.1/scenes/{sid}", headers=app).status_code == 200
    assert activate(client, app, sid).status_code == 200
    assert client.get("/v1.1/scenes", headers=app).status_code == 403  # GET /scenes: user token only
    by_user = listed(client, app, f"/v1.1/users/{home.user.id}/scenes")
    assert [s["id"] for s in by_user["data"]["scenes"]] == [sid, by_app.json()["data"]["id"]]
    stranger = bearer(app_token(live, make_app(live, other.user.id)))
    assert client.get(f"/v1.1/scenes/{sid}", headers=stranger).status_code == 403
    assert create(client, stranger, [on(b)], uid=home.user.id).status_code == 403
    assert client.get(f"/v1.1/users/{home.user.id}/scenes", headers=stranger).status_code == 403


# --- bad input --------------------------------------------------------------------------------------------


def test_bad_scenes_report_paths_and_store_nothing(
    live: LiveServer, client: httpx.Client, home: Home
) -> None:
    a, b, _ = home.devices
    headers = home.user.headers
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"actions": [on(a)]}, {"name"}),
        ({"name": "x"}, {"actions"}),
        ({"name": "", "actions": []}, {"name", "actions"}),
        ({"name": "x" * 65, "description": "d" * 1401, "actions": [on(a)]}, {"name", "description"}),
        ({"name": "x", "actions": {"ddid": a}}, {"actions"}),
        ({"name": "x", "actions": [on(a, "fly")]}, {"actions.0.action"}),
        ({"name": "x", "actions": [on(a), on("f" * 32)]}, {"actions.1.ddid"}),
        (
            {"name": "x", "actions": [on(a, "setLevel", level={"value": "high"})]},
            {"actions.0.parameters.level"},
        ),
        (
            {"name": "x", "actions": [on(a, "setText", text={"bogus": 1})]},
            {"actions.0.parameters.text.bogus"},
        ),
        (
            {
                "name": "x",
                "actions": [{"ddid": {"selector": "matched", "dtid": home.dtid}, "action": "setOn"}],
            },
            {"actions.0.ddid"},
        ),
        (
            {"name": "x", "actions": [{"ddid": {"selector": "any", "dtid": home.dtid}, "action": "setOn"}]},
            {"actions.0.ddid.selector"},
        ),
        (
            {"name": "x", "actions": [on(a, "setText", text={"valueFrom": {"sdid": b, "field": "nope"}})]},
            set(),
        ),
        ({"name": "x", "actions": [on(a)] * 33}, {"actions"}),
    ]
    for body, paths in cases:
        response = client.post("/v1.1/scenes", headers=headers, json=body)
        errors = field_errors(response)
        assert response.json()["error"]["message"] == "Invalid scene"
        if paths:
            assert set(errors) == paths, (body, errors)
        else:
            assert any("valueFrom" in p for p in errors), errors
    not_json = client.post(
        "/v1.1/scenes", headers={**headers, "Content-Type": "application/json"}, content=b"{"
    )
    assert not_json.status_code == 400
    wrong_type = client.post("/v1.1/scenes", headers=headers, json={"name": 5, "actions": [on(a)]})
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["code"] == 4001
    assert listed(client, headers, "/v1.1/scenes")["total"] == 0

    scene = created(client, home.user, [on(a)])
    bad = client.put(
        f"/v1.1/scenes/{scene['id']}", headers=headers, json={"name": "", "actions": [on(a, "fly")]}
    )
    assert set(field_errors(bad)) == {"name", "actions.0.action"}
    assert client.get(f"/v1.1/scenes/{scene['id']}", headers=headers).json()["data"] == scene
    assert client.get("/v1.1/scenes", headers=headers, params={"count": "many"}).status_code == 400


# --- rate limits -------------------------------------------------------------------------------------------


def test_activation_counts_against_the_message_rate_limit(tmp_path: Path) -> None:
    server, thread = start_live(tmp_path, rate_limits="artik")
    try:
        home = new_home(server, devices=1)
        did = home.devices[0]
        with server.client() as client:
            # ARTIK: 100 messages (actions) per user and minute; the clock stays in this minute.
            scene = created(client, home.user, [on(did)] * 30)
            for _ in range(3):
                assert activate(client, home.user.headers, scene["id"]).status_code == 200
            limited = activate(client, home.user.headers, scene["id"])
            assert limited.status_code == 429, limited.text
            assert limited.json()["error"]["code"] == 429
            assert len(stored_actions(server, did)) == 90  # the refused activation sent nothing
    finally:
        thread.stop()
