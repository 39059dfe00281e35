"""Devices (S6, S11–S14) over HTTP: create, read, update, delete, list; bad input writes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from thingcloud.areas.devicetypes import service as devicetypes

from .conftest import LiveServer
from .factories import (
    LAMP_MANIFEST,
    app_token,
    make_app,
    make_device,
    make_device_type,
    make_user,
    password_token,
    record_bus,
)

DEVICE_FIELDS = {
    "id",
    "uid",
    "dtid",
    "name",
    "manifestVersion",
    "manifestVersionPolicy",
    "needProviderAuth",
    "cloudAuthorization",
    "properties",
    "createdOn",
    "connected",
    "certificateInfo",
    "certificateSignature",
    "eid",
    "providerCredentials",
    "sharedWithOthers",
    "sharedWithMe",
    "deviceTypeName",
    "deviceTypeIsPublished",
    "deviceTypeIsProtected",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def user_devices(client: httpx.Client, user: Any, **params: Any) -> dict[str, Any]:
    response = client.get(f"/v1.1/users/{user.id}/devices", headers=user.headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_device_with_defaults(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    dtid = make_device_type(live, user.id, manifests=2)
    events = record_bus(live, "device.new")
    before = live.clock.now_ms()
    response = client.post(
        "/v1.1/devices",
        headers=user.headers,
        json={"dtid": dtid, "name": "Kitchen lamp", "id": None, "manifestVersion": None, "extra": [1]},
    )
    assert response.status_code == 200, response.text
    device = response.json()["data"]
    assert set(device) == DEVICE_FIELDS
    assert len(device["id"]) == 32
    assert {k: v for k, v in device.items() if k != "id"} == {
        "uid": user.id,
        "dtid": dtid,
        "name": "Kitchen lamp",
        "manifestVersion": 2,
        "manifestVersionPolicy": "LATEST",
        "needProviderAuth": False,
        "cloudAuthorization": "NO_AUTHORIZATION",
        "properties": None,
        "createdOn": device["createdOn"],
        "connected": False,
        "certificateInfo": None,
        "certificateSignature": None,
        "eid": None,
        "providerCredentials": None,
        "sharedWithOthers": None,
        "sharedWithMe": None,
        "deviceTypeName": None,
        "deviceTypeIsPublished": None,
        "deviceTypeIsProtected": None,
    }
    assert before <= device["createdOn"] <= live.clock.now_ms()
    assert ("device.new", {"did": device["id"], "uid": user.id, "dtid": dtid}) in events
    fetched = client.get(f"/v1.1/devices/{device['id']}", headers=user.headers)
    assert fetched.json() == {"data": device}
    with_props = client.get(
        f"/v1.1/devices/{device['id']}", headers=user.headers, params={"includeProperties": "true"}
    )
    assert with_props.json()["data"]["properties"] == {}
    legacy = client.get(f"/v1.1/devices/{device['id']}", headers=user.headers, params={"properties": "1"})
    assert legacy.json()["data"]["properties"] == {}


def test_manifest_version_policies(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    dtid = make_device_type(live, user.id, manifests=2)
    pinned = make_device(live, user.headers, dtid, manifestVersion=1, manifestVersionPolicy="DEVICE")
    latest = make_device(live, user.headers, dtid, name="Follows latest")
    assert (pinned["manifestVersion"], pinned["manifestVersionPolicy"]) == (1, "DEVICE")
    assert latest["manifestVersion"] == 2

    async def third(rt: Any) -> int:
        return await devicetypes.add_manifest(rt, dtid, LAMP_MANIFEST, user.id)

    assert live.call(third) == 3
    # LATEST follows the device type; DEVICE stays pinned.
    assert (
        client.get(f"/v1.1/devices/{latest['id']}", headers=user.headers).json()["data"]["manifestVersion"]
        == 3
    )
    assert (
        client.get(f"/v1.1/devices/{pinned['id']}", headers=user.headers).json()["data"]["manifestVersion"]
        == 1
    )
    # Pinning without a version pins the one in use now.
    pin = client.put(
        f"/v1.1/devices/{latest['id']}", headers=user.headers, json={"manifestVersionPolicy": "DEVICE"}
    )
    assert (pin.json()["data"]["manifestVersion"], pin.json()["data"]["manifestVersionPolicy"]) == (
        3,
        "DEVICE",
    )
    # A version that does not exist is refused and nothing changes.
    bad = client.post(
        "/v1.1/devices", headers=user.headers, json={"dtid": dtid, "name": "Too new", "manifestVersion": 9}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["errors"][0][0]["field"] == "manifestVersion"
    bad_put = client.put(f"/v1.1/devices/{pinned['id']}", headers=user.headers, json={"manifestVersion": 4})
    assert bad_put.status_code == 400
    assert (
        client.get(f"/v1.1/devices/{pinned['id']}", headers=user.headers).json()["data"]["manifestVersion"]
        == 1
    )
    assert user_devices(client, user)["total"] == 2


def test_update_device(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    dtid = make_device_type(live, user.id)
    device = make_device(live, user.headers, dtid)
    events = record_bus(live, "device.updated")
    other_dt = make_device_type(live, user.id)
    response = client.put(
        f"/v1.1/devices/{device['id']}",
        headers=user.headers,
        # uid and dtid changes are ignored (REFERENCE.md S13); swagger nulls count as absent.
        json={"name": "  Renamed lamp  ", "uid": "f" * 32, "dtid": other_dt, "manifestVersion": None},
    )
    assert response.status_code == 200, response.text
    updated = response.json()["data"]
    assert updated == {**device, "name": "Renamed lamp"}
    assert events == [("device.updated", {"did": device["id"], "uid": user.id, "dtid": dtid})]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "abcd"}, "name"),
        ({"name": "x" * 37}, "name"),
        ({"name": "     abc     "}, "name"),
        ({"name": 12345}, "name"),
        ({"manifestVersionPolicy": "NEWEST"}, "manifestVersionPolicy"),
        ({"manifestVersionPolicy": "latest"}, "manifestVersionPolicy"),
        ({"manifestVersion": 0}, "manifestVersion"),
        ({"manifestVersion": "two"}, "manifestVersion"),
        ({"dtid": None}, "dtid"),
        ({"name": None}, "name"),
    ],
)
def test_create_rejects_bad_input(
    live: LiveServer, client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    user = make_user(live)
    dtid = make_device_type(live, user.id)
    response = client.post(
        "/v1.1/devices", headers=user.headers, json={"dtid": dtid, "name": "Good name", **body}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 4001
    assert field in [item["field"] for item in error["errors"][0]]
    assert user_devices(client, user)["total"] == 0


def test_malformed_bodies_write_nothing(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    dtid = make_device_type(live, user.id)
    device = make_device(live, user.headers, dtid, name="Original")
    headers = {**user.headers, "Content-Type": "application/json"}
    for content in (b"{not json", b"[1, 2]", b'"text"', b""):
        created = client.post("/v1.1/devices", headers=headers, content=content)
        assert created.status_code == 400, (content, created.text)
        assert created.json()["error"]["code"] == 4001
        updated = client.put(f"/v1.1/devices/{device['id']}", headers=headers, content=content)
        assert updated.status_code == 400
    for body in ({"name": "abc"}, {"manifestVersionPolicy": "ALWAYS"}, {"manifestVersion": -1}):
        assert client.put(f"/v1.1/devices/{device['id']}", headers=user.headers, json=body).status_code == 400
    assert client.get(f"/v1.1/devices/{device['id']}", headers=user.headers).json()["data"] == device
    assert user_devices(client, user)["total"] == 1


def test_unknown_device_type_and_device(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    response = client.post(
        "/v1.1/devices", headers=user.headers, json={"dtid": "dt" + "0" * 32, "name": "Ghost lamp"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == 1101
    assert response.json()["error"]["message"] == "Device type does not exist."
    for method in ("GET", "PUT", "DELETE"):
        missing = client.request(method, f"/v1.1/devices/{'0' * 32}", headers=user.headers, json={})
        assert missing.status_code == 404, method
        assert missing.json()["error"]["code"] == 404
    assert user_devices(client, user)["total"] == 0


def test_unpublished_type_is_only_for_its_owners(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    stranger = make_user(live)
    private = make_device_type(live, owner.id, published=False)
    refused = client.post(
        "/v1.1/devices", headers=stranger.headers, json={"dtid": private, "name": "Not mine"}
    )
    assert refused.status_code == 403
    assert user_devices(client, stranger)["total"] == 0
    assert make_device(live, owner.headers, private)["dtid"] == private


def test_app_token_creates_for_a_user_who_authorized_it(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    outsider = make_user(live)
    dtid = make_device_type(live, user.id)
    headers = bearer(app_token(live, user.app))
    missing_uid = client.post("/v1.1/devices", headers=headers, json={"dtid": dtid, "name": "App lamp"})
    assert missing_uid.status_code == 400
    assert missing_uid.json()["error"]["errors"][0][0]["field"] == "uid"
    not_granted = client.post(
        "/v1.1/devices", headers=headers, json={"uid": outsider.id, "dtid": dtid, "name": "App lamp"}
    )
    assert not_granted.status_code == 403
    created = make_device(live, headers, dtid, uid=user.id, name="App lamp")
    assert created["uid"] == user.id
    # A user token cannot create devices for somebody else.
    other = client.post(
        "/v1.1/devices", headers=user.headers, json={"uid": outsider.id, "dtid": dtid, "name": "For you"}
    )
    assert other.status_code == 403
    assert user_devices(client, outsider)["total"] == 0
    assert user_devices(client, user)["total"] == 1


def test_delete_device_cleans_up(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    friend = make_user(live)
    dtid = make_device_type(live, owner.id)
    device = make_device(live, owner.headers, dtid)
    did = device["id"]
    token = client.put(f"/v1.1/devices/{did}/tokens", headers=owner.headers).json()["data"]["accessToken"]
    assert client.get(f"/v1.1/devices/{did}", headers=bearer(token)).status_code == 200
    share = client.post(f"/v1.1/devices/{did}/shares", headers=owner.headers, json={"email": friend.email})
    share_id = share.json()["shareId"]
    client.put(f"/v1.1/devices/{did}/shares/{share_id}", headers=friend.headers, json={"status": "ACCEPTED"})
    client.put(f"/v1.1/devices/{did}/status", headers=owner.headers, json={"availability": "online"})
    events = record_bus(live, "device.>")

    deleted = client.delete(f"/v1.1/devices/{did}", headers=owner.headers)
    assert deleted.status_code == 200
    assert deleted.json() == {"data": device}
    assert ("device.deleted", {"did": did, "uid": owner.id, "dtid": dtid}) in events
    assert ("device.token.revoked", {"did": did}) in events
    assert client.get(f"/v1.1/devices/{did}", headers=owner.headers).status_code == 404
    # The token is gone (cache included) and so are the share, status and snapshot rows.
    assert client.get(f"/v1.1/devices/{did}", headers=bearer(token)).status_code == 401
    assert client.get(f"/v1.1/users/{friend.id}/shares", headers=friend.headers).json()["total"] == 0
    assert user_devices(client, friend)["total"] == 0

    async def leftovers(rt: Any) -> list[int]:
        from sqlalchemy import func, select

        from thingcloud import tables as t

        counts = []
        async with rt.db.read() as conn:
            for table, column in (
                (t.tokens, t.tokens.c.did),
                (t.device_shares, t.device_shares.c.did),
                (t.device_status, t.device_status.c.did),
                (t.device_snapshots, t.device_snapshots.c.did),
            ):
                counts.append(
                    (
                        await conn.execute(select(func.count()).select_from(table).where(column == did))
                    ).scalar_one()
                )
        return counts

    assert live.call(leftovers) == [0, 0, 0, 0]


def test_list_user_devices(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    friend = make_user(live)
    lamp = make_device_type(live, owner.id)
    plug = make_device_type(live, owner.id)
    mine = [make_device(live, owner.headers, lamp, name=f"Lamp number {i}") for i in range(3)]
    live.clock.advance(1)
    plug_device = make_device(live, owner.headers, plug, name="Plug device")
    theirs = make_device(live, friend.headers, lamp, name="Friend's lamp")
    share_id = client.post(
        f"/v1.1/devices/{theirs['id']}/shares", headers=friend.headers, json={"email": owner.email}
    ).json()["shareId"]
    pending = user_devices(client, owner)
    assert pending["total"] == 4  # a PENDING share does not show the device yet
    client.put(
        f"/v1.1/devices/{theirs['id']}/shares/{share_id}", headers=owner.headers, json={"status": "ACCEPTED"}
    )
    client.post(
        f"/v1.1/devices/{mine[0]['id']}/shares", headers=owner.headers, json={"email": "x@example.org"}
    )

    everything = user_devices(client, owner)
    ids = [d["id"] for d in everything["data"]["devices"]]
    assert everything["total"] == 5 and everything["count"] == 5 and everything["offset"] == 0
    assert set(ids) == {*(d["id"] for d in mine), plug_device["id"], theirs["id"]}
    assert ids == [d["id"] for d in user_devices(client, owner)["data"]["devices"]]  # stable order
    me = user_devices(client, owner, owner="ME")
    assert me["total"] == 4 and theirs["id"] not in [d["id"] for d in me["data"]["devices"]]
    shared = user_devices(client, owner, owner="SHARED_WITH_ME", includeShareInfo="true")
    assert [d["id"] for d in shared["data"]["devices"]] == [theirs["id"]]
    assert shared["data"]["devices"][0]["sharedWithMe"] == share_id
    assert shared["data"]["devices"][0]["sharedWithOthers"] is False
    info = {d["id"]: d for d in user_devices(client, owner, includeShareInfo="true")["data"]["devices"]}
    assert (info[mine[0]["id"]]["sharedWithOthers"], info[mine[0]["id"]]["sharedWithMe"]) == (True, None)
    assert (info[mine[1]["id"]]["sharedWithOthers"], info[mine[1]["id"]]["sharedWithMe"]) == (False, None)

    by_type = user_devices(client, owner, dtid=plug, includeDeviceTypeInfo="true", includeProperties="true")
    assert by_type["total"] == 1
    only = by_type["data"]["devices"][0]
    assert (only["deviceTypeName"], only["deviceTypeIsPublished"], only["deviceTypeIsProtected"]) == (
        "Test lamp",
        True,
        False,
    )
    assert only["properties"] == {}

    first = user_devices(client, owner, count=2)
    second = user_devices(client, owner, count=2, offset=2)
    third = user_devices(client, owner, count=2, offset=4)
    assert (first["count"], second["count"], third["count"]) == (2, 2, 1)
    assert (second["offset"], third["total"]) == (2, 5)
    assert [
        d["id"] for d in first["data"]["devices"] + second["data"]["devices"] + third["data"]["devices"]
    ] == ids
    assert user_devices(client, owner, count=500)["count"] == 5  # clamped to 100
    assert user_devices(client, owner, count=0)["count"] == 1  # clamped to 1
    for params in (
        {"count": "many"},
        {"offset": "-1"},
        {"owner": "EVERYBODY"},
        {"includeShareInfo": "maybe"},
    ):
        bad = client.get(f"/v1.1/users/{owner.id}/devices", headers=owner.headers, params=params)
        assert bad.status_code == 400, params
        assert bad.json()["error"]["code"] == 4001


def test_list_is_limited_to_types_the_application_may_read(live: LiveServer, client: httpx.Client) -> None:
    from thingcloud.auth.permissions import AppPermissions

    owner = make_user(live)
    lamp = make_device_type(live, owner.id)
    plug = make_device_type(live, owner.id)
    make_device(live, owner.headers, lamp)
    make_device(live, owner.headers, plug, name="Plug device")
    app = make_app(live, owner.id, permissions=AppPermissions(device_types={lamp: frozenset({"READ"})}))
    user_token = password_token(live, app, owner.email)["access_token"]
    for headers in (bearer(app_token(live, app)), bearer(user_token)):
        body = client.get(f"/v1.1/users/{owner.id}/devices", headers=headers).json()
        assert body["total"] == 1
        assert [d["dtid"] for d in body["data"]["devices"]] == [lamp]
    everything_but_plug = make_app(
        live,
        owner.id,
        permissions=AppPermissions(device_types={"*": frozenset({"READ"}), plug: frozenset()}),
    )
    password_token(live, everything_but_plug, owner.email)
    body = client.get(
        f"/v1.1/users/{owner.id}/devices", headers=bearer(app_token(live, everything_but_plug))
    ).json()
    assert [d["dtid"] for d in body["data"]["devices"]] == [lamp]
