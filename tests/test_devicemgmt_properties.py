"""Device-management properties, configuration and manifest (issue #10, S83–S89 and the manifest
extension) through the real server: every endpoint's success, the token rules per token kind and
organization role, bad input (400/403/404, nothing written), system properties from a device channel,
the functions the task side calls, and the official SDK's DevicesManagementApi."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import artikcloud
import httpx
import pytest

from .conftest import LiveServer
from .factories import (
    TestUser,
    app_token,
    make_device,
    make_device_token,
    make_device_type,
    make_org,
    make_org_app,
    make_user,
    password_token,
)
from .test_websocket_device import open_ws, registered, wait_for

DM = "/v1.1/devicemgmt"
MANIFEST: dict[str, Any] = {
    "serverProperties": {
        "name": {"type": "String", "description": "A label"},
        "enabled": {"type": "Boolean"},
        "random": {"type": "Double"},
        "level": {"type": "Integer"},
        "site": {"building": {"type": "String"}, "floor": {"type": "Long"}},
    },
    "deviceProperties": {
        "device": {
            "manufacturer": {"type": "String", "operations": "R"},
            "timezone": {"type": "String", "operations": "RW"},
            "reboot": {"operations": "E"},
        },
    },
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Org:
    """An organization owning device types, with its people and their tokens."""

    oid: str
    admin: TestUser
    admin_token: str  # the administrator's user token in an organization application
    developer_token: str  # a developer's user token in the same application
    app_token: str  # the organization application's own token
    owner: TestUser  # owns devices of the organization's types (own application)
    outsider: TestUser


@dataclass
class Fleet:
    dtid: str
    dids: list[str]
    device_token: str  # of dids[0]


@pytest.fixture(scope="module")
def org(live: LiveServer) -> Org:
    admin, developer = make_user(live), make_user(live)
    oid = make_org(live, {admin.id: "administrator", developer.id: "developer"})
    org_app = make_org_app(live, admin.id, oid, password_grant=True)
    return Org(
        oid=oid,
        admin=admin,
        admin_token=password_token(live, org_app, admin.email)["access_token"],
        developer_token=password_token(live, org_app, developer.email)["access_token"],
        app_token=app_token(live, org_app),
        owner=make_user(live),
        outsider=make_user(live),
    )


def new_fleet(live: LiveServer, org: Org, devices: int = 2, *, manifest: bool = True) -> Fleet:
    """A published device type of the organization with ``devices`` devices of ``org.owner``."""
    dtid = make_device_type(live, org.admin.id, oid=org.oid, published=True)
    if manifest:
        put = httpx.put(
            f"{live.url}{DM}/devicetypes/{dtid}/manifest", headers=bearer(org.app_token), json=MANIFEST
        )
        assert put.status_code == 200, put.text
    dids = [make_device(live, org.owner.headers, dtid, name=f"Lamp number {i}")["id"] for i in range(devices)]
    return Fleet(dtid, dids, make_device_token(live, org.owner, dids[0]))


@pytest.fixture()
def fleet(live: LiveServer, org: Org) -> Fleet:
    return new_fleet(live, org)


def enable_device_properties(client: httpx.Client, org: Org, dtid: str) -> None:
    put = client.put(
        f"{DM}/devicetypes/{dtid}", headers=bearer(org.admin_token), json={"devicePropertiesEnabled": True}
    )
    assert put.status_code == 200, put.text


def report(live: LiveServer, did: str, values: dict[str, Any], ts: int) -> None:
    from thingcloud.areas.devicemgmt.properties import record_device_properties

    async def work(rt: Any) -> None:
        await record_device_properties(rt, did, values, ts)

    live.call(work)


def properties_of(client: httpx.Client, did: str, token: str, **query: str) -> dict[str, Any]:
    response = client.get(f"{DM}/devices/{did}/properties", headers=bearer(token), params=query)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def validation_fields(response: httpx.Response) -> set[str]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 4001
    return {item["field"] for group in error.get("errors", []) for item in group}


# --- Configuration (S88, S89) ----------------------------------------------------------------------------


def test_configuration_defaults_update_and_ranges(client: httpx.Client, org: Org, fleet: Fleet) -> None:
    url = f"{DM}/devicetypes/{fleet.dtid}"
    got = client.get(url, headers=bearer(org.admin_token))
    assert got.status_code == 200, got.text
    info = got.json()["data"]
    assert {k: info[k] for k in ("dtid", "devicePropertiesEnabled", "pmin", "pmax", "taskExpiresAfter")} == {
        "dtid": fleet.dtid,
        "devicePropertiesEnabled": False,
        "pmin": 300,
        "pmax": 21600,
        "taskExpiresAfter": 604800,
    }
    assert isinstance(info["createdOn"], int) and isinstance(info["modifiedOn"], int)

    put = client.put(
        url, headers=bearer(org.app_token), json={"devicePropertiesEnabled": True, "pmin": 60, "pmax": 3600}
    )
    assert put.status_code == 200, put.text
    assert put.json()["data"]["devicePropertiesEnabled"] is True
    # A swagger client sends every field of DeviceTypesInfo; read-only ones are ignored.
    put = client.put(
        url,
        headers=bearer(org.admin_token),
        json={"dtid": "other", "createdOn": 1, "taskExpiresAfter": 60, "pmin": None},
    )
    assert put.status_code == 200, put.text
    changed = put.json()["data"]
    assert (changed["dtid"], changed["pmin"], changed["pmax"], changed["taskExpiresAfter"]) == (
        fleet.dtid,
        60,
        3600,
        60,
    )

    bad_bodies = [
        ({"pmin": 59}, "pmin"),
        ({"pmin": 3601}, "pmin"),
        ({"pmax": 3599}, "pmax"),
        ({"pmax": 86401}, "pmax"),
        ({"taskExpiresAfter": 59}, "taskExpiresAfter"),
        ({"taskExpiresAfter": 604801}, "taskExpiresAfter"),
        ({"pmin": "300"}, "pmin"),
        ({"pmin": 300.5}, "pmin"),
        ({"devicePropertiesEnabled": "yes"}, "devicePropertiesEnabled"),
        ({"pmin": 3600, "pmax": 3600, "taskExpiresAfter": 0}, "taskExpiresAfter"),
    ]
    for body, field in bad_bodies:
        assert validation_fields(client.put(url, headers=bearer(org.admin_token), json=body)) == {field}, body
    # pmax below pmin (either moving) is refused, and nothing of the body is applied.
    client.put(url, headers=bearer(org.admin_token), json={"pmin": 3600, "pmax": 7200})
    assert validation_fields(
        client.put(url, headers=bearer(org.admin_token), json={"pmin": 600, "pmax": 3500})
    ) == {"pmax"}
    assert validation_fields(
        client.put(url, headers=bearer(org.admin_token), json={"pmin": 60, "pmax": 3599})
    ) == {"pmax"}
    after = client.get(url, headers=bearer(org.admin_token)).json()["data"]
    assert (after["pmin"], after["pmax"], after["taskExpiresAfter"]) == (3600, 7200, 60)
    malformed = client.put(
        url, headers={**bearer(org.admin_token), "Content-Type": "application/json"}, content=b"[1"
    )
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == 4001


def test_configuration_permissions(client: httpx.Client, org: Org, fleet: Fleet) -> None:
    url = f"{DM}/devicetypes/{fleet.dtid}"
    admin_own_app = org.admin.token  # the administrator, through an application outside the organization
    for token in (
        org.developer_token,
        admin_own_app,
        org.owner.token,
        org.outsider.token,
        fleet.device_token,
    ):
        for method, body in (("GET", None), ("PUT", {"pmin": 120})):
            response = client.request(method, url, headers=bearer(token), json=body)
            assert response.status_code == 403, (token, method, response.text)
            assert response.json()["error"]["code"] == 403
    assert client.get(url, headers=bearer(org.admin_token)).json()["data"]["pmin"] == 300
    missing = client.get(f"{DM}/devicetypes/dt{'0' * 32}", headers=bearer(org.admin_token))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 1101
    assert client.get(url).status_code == 401


def test_type_owned_by_a_user_is_managed_by_that_user(live: LiveServer, client: httpx.Client) -> None:
    maker, other = make_user(live), make_user(live)
    dtid = make_device_type(live, maker.id, published=True)
    assert (
        client.put(f"{DM}/devicetypes/{dtid}", headers=maker.headers, json={"pmin": 120}).status_code == 200
    )
    assert client.get(f"{DM}/devicetypes/{dtid}", headers=other.headers).status_code == 403


# --- Manifest (S87 and the extension) --------------------------------------------------------------------


def test_manifest_default_put_and_served(client: httpx.Client, org: Org, live: LiveServer) -> None:
    fleet = new_fleet(live, org, devices=1, manifest=False)
    url = f"{DM}/devicetypes/{fleet.dtid}/manifest/properties"
    got = client.get(url, headers=bearer(org.admin_token))
    assert got.status_code == 200, got.text
    assert got.json() == {"data": {"serverProperties": {}}}  # device properties are off by default
    enable_device_properties(client, org, fleet.dtid)
    default = client.get(url, headers=bearer(org.app_token)).json()["data"]["deviceProperties"]
    assert default["device"]["timezone"] == {"type": "String", "operations": "RW"}
    assert default["device"]["manufacturer"]["operations"] == "R"
    assert default["device"]["reboot"]["operations"] == "E"
    assert default["firmware"]["update"]["operations"] == "E"
    assert {"model", "firmwareVersion"} <= set(default["device"])

    # The extension: device-type owners (the organization's developers too) define it.
    put = client.put(
        f"{DM}/devicetypes/{fleet.dtid}/manifest", headers=bearer(org.developer_token), json=MANIFEST
    )
    assert put.status_code == 200, put.text
    served = client.get(url, headers=bearer(org.admin_token)).json()["data"]
    assert served == put.json()["data"]
    assert served["serverProperties"]["name"] == {"type": "String", "description": "A label"}
    assert served["serverProperties"]["site"]["floor"] == {"type": "Long"}
    assert served["deviceProperties"]["device"]["reboot"] == {"type": "String", "operations": "E"}
    assert "firmware" not in served["deviceProperties"]

    openapi = client.get("/openapi.json").json()["paths"]
    assert "extension" in openapi[f"{DM}/devicetypes/{{dtid}}/manifest"]["put"]["summary"]


def test_manifest_bad_input_changes_nothing(client: httpx.Client, org: Org, fleet: Fleet) -> None:
    url = f"{DM}/devicetypes/{fleet.dtid}/manifest"
    bad = [
        ({"serverProperties": {"x": {"type": "Float"}}}, {"serverProperties.x.type"}),
        (
            {"deviceProperties": {"device": {"t": {"type": "String", "operations": "RX"}}}},
            {"deviceProperties.device.t.operations"},
        ),
        ({"serverProperties": {"bad name": {"type": "String"}}}, {"serverProperties.bad name"}),
        ({"serverProperties": {"x": 3}}, {"serverProperties.x"}),
        ({"serverProperties": []}, {"serverProperties"}),
        ([1, 2], {"body"}),
    ]
    for body, fields in bad:
        assert validation_fields(client.put(url, headers=bearer(org.admin_token), json=body)) == fields, body
    served = client.get(f"{url}/properties", headers=bearer(org.admin_token)).json()["data"]
    assert set(served["serverProperties"]) == set(MANIFEST["serverProperties"])
    for token in (org.owner.token, org.outsider.token, fleet.device_token):
        assert client.put(url, headers=bearer(token), json=MANIFEST).status_code == 403
    for token in (org.developer_token, org.owner.token, fleet.device_token):
        assert client.get(f"{url}/properties", headers=bearer(token)).status_code == 403


# --- One device's properties (S83, S84, S86) ----------------------------------------------------------------


def test_server_properties_write_read_delete(
    client: httpx.Client, org: Org, fleet: Fleet, live: LiveServer
) -> None:
    did = fleet.dids[0]
    url = f"{DM}/devices/{did}/serverproperties"
    before = live.clock.now_ms()
    written = client.post(
        url, headers=bearer(org.admin_token), json={"name": "Hall", "enabled": False, "random": 73.5}
    )
    assert written.status_code == 200, written.text
    assert written.json() == {"data": {"did": did}}
    # Each token kind allowed on one device writes too: org app, owner, the device itself (nested keys).
    assert client.post(url, headers=bearer(org.app_token), json={"level": 3}).status_code == 200
    assert client.post(url, headers=org.owner.headers, json={"site": {"building": "B2"}}).status_code == 200
    assert (
        client.post(url, headers=bearer(fleet.device_token), json={"site.floor": 4, "random": 2}).status_code
        == 200
    )

    data = properties_of(client, did, org.admin_token)
    assert data["serverProperties"] == {
        "name": "Hall",
        "enabled": False,
        "random": 2,
        "level": 3,
        "site": {"building": "B2", "floor": 4},
    }
    assert data["deviceProperties"] == {}
    system = data["systemProperties"]
    assert system["did"] == did and system["availability"] == "unknown" and system["lastRegistration"] is None
    stamped = properties_of(client, did, fleet.device_token, includeTimestamp="true")
    name = stamped["serverProperties"]["name"]
    assert name["value"] == "Hall" and before <= name["ts"] <= live.clock.now_ms()
    assert stamped["serverProperties"]["site"]["floor"]["value"] == 4
    assert properties_of(client, did, org.owner.token)["serverProperties"]["level"] == 3

    deleted = client.delete(url, headers=bearer(org.admin_token))
    assert deleted.status_code == 200 and deleted.json() == {"data": {"did": did}}
    after = properties_of(client, did, org.app_token)
    assert after["serverProperties"] == {} and after["systemProperties"]["did"] == did


def test_server_property_bad_input_writes_nothing(client: httpx.Client, org: Org, fleet: Fleet) -> None:
    did = fleet.dids[0]
    url = f"{DM}/devices/{did}/serverproperties"
    assert client.post(url, headers=bearer(org.admin_token), json={"name": "Before"}).status_code == 200
    bad = [
        ({"name": "After", "colour": "red"}, {"colour"}),  # unknown name: nothing written, not even name
        ({"name": "After", "enabled": "yes"}, {"enabled"}),
        ({"level": 2**31}, {"level"}),  # Integer range
        ({"name": "x" * 10_001}, {"name"}),
        ({"level": 1.5, "random": "x"}, {"level", "random"}),
        ({"site": "B1"}, {"site"}),  # a group is not a property
        ({"name": {"first": "x"}}, {"name.first"}),
        ({"deviceProperties.device.timezone": "UTC"}, {"deviceProperties.device.timezone"}),
        ({"did": "x"}, {"did"}),  # system properties are read-only
    ]
    for body, fields in bad:
        assert validation_fields(client.post(url, headers=bearer(org.admin_token), json=body)) == fields, body
    assert validation_fields(client.post(url, headers=bearer(org.admin_token), json=["name"])) == {"body"}
    read_only = client.post(url, headers=bearer(org.admin_token), json={"lastRegistration": 1})
    assert "Read-only" in read_only.json()["error"]["errors"][0][0]["message"][0]
    assert properties_of(client, did, org.admin_token)["serverProperties"] == {"name": "Before"}


def test_one_device_permissions(client: httpx.Client, org: Org, fleet: Fleet, live: LiveServer) -> None:
    did = fleet.dids[0]
    other_device_token = make_device_token(live, org.owner, fleet.dids[1])
    refused = {
        "developer": org.developer_token,
        "admin outside the organization's applications": org.admin.token,
        "outsider": org.outsider.token,
        "another device": other_device_token,
    }
    for who, token in refused.items():
        for method, path, body in (
            ("GET", "properties", None),
            ("POST", "serverproperties", {"name": "x"}),
            ("DELETE", "serverproperties", None),
        ):
            response = client.request(method, f"{DM}/devices/{did}/{path}", headers=bearer(token), json=body)
            assert response.status_code == 403, (who, method, path, response.text)
    assert properties_of(client, did, org.admin_token)["serverProperties"] == {}
    # A read-only grant cannot write.
    read_only = password_token(live, org.owner.app, org.owner.email, scope="read")["access_token"]
    assert client.get(f"{DM}/devices/{did}/properties", headers=bearer(read_only)).status_code == 200
    assert (
        client.post(
            f"{DM}/devices/{did}/serverproperties", headers=bearer(read_only), json={"name": "x"}
        ).status_code
        == 403
    )
    missing = client.get(f"{DM}/devices/{'f' * 32}/properties", headers=bearer(org.admin_token))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404


# --- Cross-device query (S85) -----------------------------------------------------------------------------


def test_query_with_filters_paging_and_both_envelopes(
    client: httpx.Client, org: Org, live: LiveServer
) -> None:
    fleet = new_fleet(live, org, devices=5)
    enable_device_properties(client, org, fleet.dtid)
    for i, did in enumerate(fleet.dids):
        body = {
            "enabled": i % 2 == 0,
            "level": i,
            "random": 73.0 if i == 4 else 1.5,
            "site": {"building": "B1"},
        }
        assert (
            client.post(
                f"{DM}/devices/{did}/serverproperties", headers=bearer(org.app_token), json=body
            ).status_code
            == 200
        )
        report(
            live,
            did,
            {"device": {"timezone": "UTC" if i < 3 else "Europe/Paris", "manufacturer": "Acme"}},
            1000 + i,
        )

    def query(**params: Any) -> dict[str, Any]:
        response = client.get(
            f"{DM}/devices/properties", headers=bearer(org.admin_token), params={"dtid": fleet.dtid, **params}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        page = {k: body[k] for k in ("total", "offset", "count")}
        assert page == {k: body["data"][k] for k in ("total", "offset", "count")}  # both envelope forms
        assert body["count"] == len(body["data"]["properties"])
        return body

    def dids(**params: Any) -> list[str]:
        return [item["did"] for item in query(**params)["data"]["properties"]]

    ordered = sorted(fleet.dids)
    assert dids() == ordered
    enabled = sorted(fleet.dids[i] for i in (0, 2, 4))
    assert dids(filter="serverProperties.enabled=true") == enabled
    assert dids(filter="serverProperties.enabled=TRUE,serverProperties.level=2") == [fleet.dids[2]]
    assert dids(filter="serverProperties.random=73") == [fleet.dids[4]]  # Double compared as a number
    assert dids(filter="serverProperties.site.building=B1") == ordered
    assert dids(filter="deviceProperties.device.timezone=Europe/Paris") == sorted(fleet.dids[3:])
    assert dids(filter="deviceProperties.device.timezone=UTC,serverProperties.enabled=false") == [
        fleet.dids[1]
    ]
    assert dids(filter=f"systemProperties.did={fleet.dids[1]}") == [fleet.dids[1]]
    assert dids(filter="systemProperties.availability=unknown") == ordered
    assert dids(filter="systemProperties.connection.connected=false") == ordered
    assert dids(filter="serverProperties.name=nobody") == []  # matches nothing: empty, not an error
    assert query(filter="serverProperties.level=99")["total"] == 0

    page = query(count=2, offset=1, filter="serverProperties.site.building=B1")
    assert (page["total"], page["offset"], page["count"]) == (5, 1, 2)
    assert [item["did"] for item in page["data"]["properties"]] == ordered[1:3]
    item = query(filter=f"systemProperties.did={fleet.dids[3]}", includeTimestamp="true")["data"][
        "properties"
    ][0]
    assert item["deviceProperties"]["device"]["timezone"] == {"value": "Europe/Paris", "ts": 1003}
    assert item["serverProperties"]["level"]["value"] == 3
    assert item["systemProperties"]["did"] == fleet.dids[3]
    plain = query(filter=f"systemProperties.did={fleet.dids[3]}")["data"]["properties"][0]
    assert plain["deviceProperties"] == {"device": {"timezone": "Europe/Paris", "manufacturer": "Acme"}}
    assert query(count=500)["count"] == 5  # clamped to 100


def test_query_bad_input_and_permissions(client: httpx.Client, org: Org, fleet: Fleet) -> None:
    url = f"{DM}/devices/properties"
    admin = bearer(org.admin_token)
    bad_filters = [
        "serverProperties.colour=red",  # not in the manifest
        "deviceProperties.device.timezone=UTC",  # device properties are off for this type
        "serverProperties.enabled=maybe",
        "serverProperties.level=abc",
        ",".join(["serverProperties.level=1"] * 21),  # at most 20 terms
        "serverProperties.site=B1",  # a group
        "systemProperties.availability=sleeping",
        "enabled=true",
        "serverProperties.enabled",
    ]
    for expr in bad_filters:
        response = client.get(url, headers=admin, params={"dtid": fleet.dtid, "filter": expr})
        assert validation_fields(response) == {"filter"}, expr
    assert validation_fields(client.get(url, headers=admin)) == {"dtid"}
    assert validation_fields(client.get(url, headers=admin, params={"dtid": fleet.dtid, "count": "x"})) == {
        "count"
    }
    assert validation_fields(client.get(url, headers=admin, params={"dtid": fleet.dtid, "offset": -1})) == {
        "offset"
    }
    missing = client.get(url, headers=admin, params={"dtid": "dtnope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 1101
    for token in (
        org.developer_token,
        org.admin.token,
        org.owner.token,
        org.outsider.token,
        fleet.device_token,
    ):
        assert client.get(url, headers=bearer(token), params={"dtid": fleet.dtid}).status_code == 403
    assert client.get(url, headers=bearer(org.app_token), params={"dtid": fleet.dtid}).json()["total"] == 2


def test_another_organization_is_refused(
    client: httpx.Client, org: Org, fleet: Fleet, live: LiveServer
) -> None:
    rival = make_user(live)
    rival_app = make_org_app(live, rival.id, make_org(live, {rival.id: "administrator"}), password_grant=True)
    for token in (app_token(live, rival_app), password_token(live, rival_app, rival.email)["access_token"]):
        calls = [
            ("GET", f"{DM}/devices/properties?dtid={fleet.dtid}", None),
            ("GET", f"{DM}/devicetypes/{fleet.dtid}", None),
            ("PUT", f"{DM}/devicetypes/{fleet.dtid}", {"pmin": 120}),
            ("GET", f"{DM}/devicetypes/{fleet.dtid}/manifest/properties", None),
            ("PUT", f"{DM}/devicetypes/{fleet.dtid}/manifest", MANIFEST),
            ("GET", f"{DM}/devices/{fleet.dids[0]}/properties", None),
            ("POST", f"{DM}/devices/{fleet.dids[0]}/serverproperties", {"name": "x"}),
            ("DELETE", f"{DM}/devices/{fleet.dids[0]}/serverproperties", None),
        ]
        for method, path, body in calls:
            response = client.request(method, path, headers=bearer(token), json=body)
            assert response.status_code == 403, (method, path, response.text)
    assert (
        client.get(f"{DM}/devicetypes/{fleet.dtid}", headers=bearer(org.admin_token)).json()["data"]["pmin"]
        == 300
    )


def test_deleting_a_device_removes_its_properties(
    client: httpx.Client, org: Org, fleet: Fleet, live: LiveServer
) -> None:
    from sqlalchemy import func, select

    from thingcloud import tables as t

    did = fleet.dids[0]
    client.post(f"{DM}/devices/{did}/serverproperties", headers=bearer(org.admin_token), json={"name": "x"})
    report(live, did, {"device": {"timezone": "UTC"}}, 1)
    assert client.delete(f"/v1.1/devices/{did}", headers=org.owner.headers).status_code == 200

    async def stored(rt: Any) -> int:
        async with rt.db.read() as conn:
            query = select(func.count()).select_from(t.dm_properties).where(t.dm_properties.c.did == did)
            return int((await conn.execute(query)).scalar_one())

    assert live.call(stored) == 0
    found = client.get(
        f"{DM}/devices/properties", headers=bearer(org.admin_token), params={"dtid": fleet.dtid}
    )
    assert [item["did"] for item in found.json()["data"]["properties"]] == [fleet.dids[1]]
    assert client.get(f"{DM}/devices/{did}/properties", headers=bearer(org.admin_token)).status_code == 404


# --- System properties from the device channels -------------------------------------------------------------


def test_system_properties_follow_the_device_channel(
    client: httpx.Client, org: Org, fleet: Fleet, live: LiveServer
) -> None:
    did = fleet.dids[0]
    with open_ws(live, "/v1.1/websocket", ack="true") as ws:
        registered(ws, did, fleet.device_token)
        connected = wait_for(
            lambda: properties_of(client, did, org.admin_token)["systemProperties"]["lastRegistration"]
        )
        assert connected is not None
        system = properties_of(client, did, org.admin_token)["systemProperties"]
        assert system["availability"] == "online"
        assert system["connection"]["connected"] is True
        query = {"dtid": fleet.dtid, "filter": "systemProperties.connection.connected=true"}
        found = client.get(f"{DM}/devices/properties", headers=bearer(org.admin_token), params=query).json()
        assert [item["did"] for item in found["data"]["properties"]] == [did]
        online = {"dtid": fleet.dtid, "filter": "systemProperties.availability=online"}
        assert (
            client.get(f"{DM}/devices/properties", headers=bearer(org.admin_token), params=online).json()[
                "total"
            ]
            == 1
        )
    wait_for(
        lambda: (
            properties_of(client, did, org.admin_token)["systemProperties"]["connection"]["connected"]
            is False
        )
    )
    system = properties_of(client, did, org.admin_token)["systemProperties"]
    assert system["connection"]["connected"] is False and system["availability"] == "offline"
    assert system["lastRegistration"] == connected


# --- The functions the task side calls ---------------------------------------------------------------


def test_task_side_functions(client: httpx.Client, org: Org, fleet: Fleet, live: LiveServer) -> None:
    from thingcloud.areas.devicemgmt import config, manifest, properties
    from thingcloud.errors import NotFound, ValidationFailed

    def run(work: Any) -> Any:
        return live.call(work)

    defaults = run(lambda rt: config.config_for(rt, fleet.dtid))
    assert (
        defaults.device_properties_enabled,
        defaults.pmin,
        defaults.pmax,
        defaults.task_expires_after,
    ) == (False, 300, 21600, 604800)
    assert (
        run(lambda rt: manifest.property_spec(rt, fleet.dtid, "deviceProperties.device.timezone")) is None
    )  # off
    spec = run(lambda rt: manifest.property_spec(rt, fleet.dtid, "serverProperties.site.floor"))
    assert (spec.kind, spec.value_type, spec.operations) == ("server", "Long", frozenset({"R", "W"}))
    enable_device_properties(client, org, fleet.dtid)
    assert run(lambda rt: config.config_for(rt, fleet.dtid)).device_properties_enabled is True
    spec = run(lambda rt: manifest.property_spec(rt, fleet.dtid, "deviceProperties.device.timezone"))
    assert (spec.path, spec.kind, spec.value_type, spec.operations) == (
        "deviceProperties.device.timezone",
        "device",
        "String",
        frozenset({"R", "W"}),
    )
    assert run(
        lambda rt: manifest.property_spec(rt, fleet.dtid, "deviceProperties.device.reboot")
    ).operations == frozenset({"E"})
    group = run(lambda rt: manifest.property_spec(rt, fleet.dtid, "deviceProperties.device"))
    assert (group.value_type, group.operations) == ("Object", frozenset({"R"}))
    for unknown in ("deviceProperties.device.colour", "systemProperties.did", "name", ""):
        assert run(lambda rt, p=unknown: manifest.property_spec(rt, fleet.dtid, p)) is None

    did = fleet.dids[1]
    everything = run(
        lambda rt: properties.write_server_properties(rt, did, {"enabled": True, "site": {"floor": 2}})
    )
    assert everything == {"enabled": True, "site": {"floor": 2}}
    with pytest.raises(ValidationFailed):
        run(lambda rt: properties.write_server_properties(rt, did, {"enabled": "true"}))
    with pytest.raises(NotFound):
        run(lambda rt: properties.write_server_properties(rt, "f" * 32, {"enabled": True}))

    # Device reports merge leaf by leaf; an older report does not overwrite a newer value.
    report(live, did, {"device": {"timezone": "UTC", "manufacturer": "Acme"}}, 2000)
    report(live, did, {"device": {"timezone": "Asia/Tokyo"}}, 1000)
    report(live, did, {"device": {"model": "L1"}, "location": {"lat": 1.5}}, 3000)
    data = properties_of(client, did, org.admin_token)["deviceProperties"]
    assert data == {
        "device": {"timezone": "UTC", "manufacturer": "Acme", "model": "L1"},
        "location": {"lat": 1.5},
    }
    with pytest.raises(ValidationFailed):
        report(live, did, ["not", "an", "object"], 4000)  # type: ignore[arg-type]

    assert run(lambda rt: properties.dids_matching(rt, fleet.dtid, None)) == sorted(fleet.dids)
    assert run(lambda rt: properties.dids_matching(rt, fleet.dtid, "serverProperties.enabled=true")) == [did]
    assert run(
        lambda rt: properties.dids_matching(rt, fleet.dtid, "deviceProperties.device.timezone=UTC")
    ) == [did]
    assert run(lambda rt: properties.dids_matching(rt, fleet.dtid, "serverProperties.enabled=false")) == []
    with pytest.raises(ValidationFailed):
        run(lambda rt: properties.dids_matching(rt, fleet.dtid, "serverProperties.nope=1"))


# --- The official SDK --------------------------------------------------------------------------------


@pytest.fixture()
def dm_api(live: LiveServer) -> Iterator[artikcloud.DevicesManagementApi]:
    config = artikcloud.Configuration()
    saved = (config.host, config.access_token)
    config.host = live.url + "/v1.1"
    try:
        yield artikcloud.DevicesManagementApi(artikcloud.ApiClient())
    finally:
        config.host, config.access_token = saved


def test_sdk_devices_management_api(dm_api: artikcloud.DevicesManagementApi, org: Org, fleet: Fleet) -> None:
    config = artikcloud.Configuration()
    config.access_token = org.admin_token
    info = dm_api.get_device_types_info(fleet.dtid).data
    assert (info.dtid, info.device_properties_enabled, info.pmin) == (fleet.dtid, False, 300)
    update = artikcloud.DeviceTypesInfo(
        device_properties_enabled=True, pmin=120, pmax=7200, task_expires_after=3600
    )
    changed = dm_api.update_device_types_info(fleet.dtid, update).data
    assert (changed.device_properties_enabled, changed.pmin, changed.pmax, changed.task_expires_after) == (
        True,
        120,
        7200,
        3600,
    )
    manifest = dm_api.get_manifest_properties(fleet.dtid).data
    assert manifest["deviceProperties"]["device"]["timezone"]["operations"] == "RW"

    did = fleet.dids[0]
    written = dm_api.update_server_properties(did, {"name": "From the SDK", "enabled": True})
    assert written.data == {"did": did}
    props = dm_api.get_properties(did, include_timestamp=True).data
    assert props["serverProperties"]["name"]["value"] == "From the SDK"
    found = dm_api.query_properties(fleet.dtid, filter="serverProperties.enabled=true", count=10, offset=0)
    assert (found.total, found.count, found.offset) == (1, 1, 0)
    assert found.data["properties"][0]["did"] == did
    assert dm_api.delete_server_properties(did).data == {"did": did}
    config.access_token = fleet.device_token
    assert dm_api.get_properties(did).data["serverProperties"] == {}
    config.access_token = org.outsider.token
    with pytest.raises(artikcloud.rest.ApiException) as refused:
        dm_api.get_properties(did)
    assert refused.value.status == 403
