"""Device types and manifests over HTTP: S28–S32, S7, ``/devicetypes/cloudconnectors`` and the creation
extensions, with every kind of caller (owner, organization administrator and developer, organization
application, device token, stranger) and bad input."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from thingcloud.auth.permissions import AppPermissions

from .conftest import LiveServer
from .factories import TestUser as User
from .factories import (
    app_token,
    make_app,
    make_device,
    make_org,
    make_org_app,
    make_user,
    password_token,
)

LIGHT_MANIFEST: dict[str, Any] = {
    "fields": [
        {
            "name": "state",
            "type": "CUSTOM",
            "valueClass": "Boolean",
            "isCollection": False,
            "tags": ["switch"],
        },
        {"name": "temp", "valueClass": "java.lang.Double", "unit": "Cel", "description": "Temperature"},
        {
            "name": "location",
            "children": [
                {"name": "x", "valueClass": "Double", "unit": "m"},
                {"name": "y", "valueClass": "Double"},
            ],
        },
        {"name": "history", "valueClass": "Integer", "isCollection": True},
    ],
    "actions": [
        {"name": "setOn", "description": "Turn on", "parameters": []},
        {
            "name": "setColor",
            "parameters": [
                {"name": "rgb", "children": [{"name": "r", "valueClass": "Integer"}]},
                {"name": "intensity", "valueClass": "Integer"},
            ],
        },
    ],
    "messageFormat": "json",
}


def leaf(kind: str, unit: str = "", collection: bool = False, description: str = "") -> dict[str, Any]:
    return {"type": kind, "unit": unit, "isCollection": collection, "description": description}


LIGHT_PROPERTIES: dict[str, Any] = {
    "fields": {
        "state": leaf("Boolean"),
        "temp": leaf("Double", "Cel", description="Temperature"),
        "location": {"x": leaf("Double", "m"), "y": leaf("Double")},
        "history": leaf("Integer", collection=True),
    },
    "actions": {
        "setOn": {"description": "Turn on", "parameters": {}},
        "setColor": {
            "description": "",
            "parameters": {"rgb": {"r": leaf("Integer")}, "intensity": leaf("Integer")},
        },
    },
}
LAMP_V2: dict[str, Any] = {"fields": [{"name": "level", "valueClass": "Long"}]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unique(prefix: str = "lamp") -> str:
    return f"com.example.{prefix}{uuid.uuid4().hex[:12]}"


def create(client: httpx.Client, headers: dict[str, str], **body: Any) -> httpx.Response:
    body.setdefault("name", "Smart Lamp")
    body.setdefault("uniqueName", unique())
    return client.post("/v1.1/devicetypes", json=body, headers=headers)


def created(client: httpx.Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = create(client, headers, **body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def add_manifest(client: httpx.Client, headers: dict[str, str], dtid: str, doc: Any) -> httpx.Response:
    return client.post(f"/v1.1/devicetypes/{dtid}/manifests", json=doc, headers=headers)


def field_errors(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 4001
    return {e["field"]: e["messages"] for e in error["errors"][0]}


def forbidden(response: httpx.Response, dtid: str) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == 403
    assert (
        response.json()["error"]["message"]
        == f"You do not have the right permission: 'device_type' ['{dtid}']"
    )


@dataclass
class Cast:
    """Every kind of caller, and an organization."""

    owner: User
    stranger: User
    admin: User
    developer: User
    oid: str
    org_app: dict[str, str]


@pytest.fixture(scope="module")
def cast(live: LiveServer) -> Cast:
    owner, stranger, admin, developer = (make_user(live) for _ in range(4))
    oid = make_org(live, {admin.id: "administrator", developer.id: "developer"})
    org_app = bearer(app_token(live, make_org_app(live, admin.id, oid)))
    return Cast(owner, stranger, admin, developer, oid, org_app)


# --- S28 and POST /devicetypes ------------------------------------------------------------------------


def test_create_and_get(live: LiveServer, client: httpx.Client, cast: Cast) -> None:
    unique_name = unique()
    before = live.clock.now_ms()
    data = created(
        client,
        cast.owner.headers,
        name=" Smart Lamp ",
        uniqueName=unique_name,
        description="A lamp",
        tags=["light", "home", "light"],
        published=None,
        unknownField=1,
    )
    assert data["id"].startswith("dt") and len(data["id"]) == 34
    assert before <= data["lastUpdated"] <= live.clock.now_ms()
    expected = {
        "id": data["id"],
        "uniqueName": unique_name,
        "latestVersion": 0,
        "lastUpdated": data["lastUpdated"],
        "name": "Smart Lamp",
        "description": "A lamp",
        "uid": cast.owner.id,
        "oid": None,
        "hasCloudConnector": False,
        "approved": True,
        "published": False,
        "protected": False,
        "inStore": False,
        "ownedByCurrentUser": True,
        "tags": [{"name": "home", "isCategory": False}, {"name": "light", "isCategory": False}],
        "rsp": False,
        "issuerDn": None,
        "vid": "0",
    }
    assert data == expected
    got = client.get(f"/v1.1/devicetypes/{data['id']}", headers=cast.owner.headers)
    assert got.status_code == 200
    assert got.json() == {"data": expected}

    # Unpublished: hidden from strangers, their applications and the organization.
    forbidden(client.get(f"/v1.1/devicetypes/{data['id']}", headers=cast.stranger.headers), data["id"])
    forbidden(client.get(f"/v1.1/devicetypes/{data['id']}", headers=cast.org_app), data["id"])
    # An application token of the owner's own application reads it (the owner granted it).
    own_app = bearer(app_token(live, cast.owner.app))
    assert client.get(f"/v1.1/devicetypes/{data['id']}", headers=own_app).json()["data"]["ownedByCurrentUser"]


def test_unknown_device_type(client: httpx.Client, cast: Cast) -> None:
    for response in (
        client.get("/v1.1/devicetypes/dtnope", headers=cast.owner.headers),
        client.put("/v1.1/devicetypes/dtnope", json={"name": "x"}, headers=cast.owner.headers),
        add_manifest(client, cast.owner.headers, "dtnope", LAMP_V2),
        client.get("/v1.1/devicetypes/dtnope/manifests/latest/properties", headers=cast.owner.headers),
        client.get("/v1.1/devicetypes/dtnope/manifests/1/properties", headers=cast.owner.headers),
        client.get("/v1.1/devicetypes/dtnope/availablemanifestversions", headers=cast.owner.headers),
    ):
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert (error["code"], error["message"]) == (1101, "Device type does not exist.")


def owned_total(client: httpx.Client, user: User) -> int:
    body = client.get(f"/v1.1/users/{user.id}/devicetypes", headers=user.headers).json()
    total: int = body["total"]
    return total


def test_create_bad_input_writes_nothing(client: httpx.Client, cast: Cast) -> None:
    headers = cast.owner.headers
    before = owned_total(client, cast.owner)
    missing = client.post("/v1.1/devicetypes", json={}, headers=headers)
    assert field_errors(missing) == {"name": ["Required parameter"], "uniqueName": ["Required parameter"]}
    java = ["Must be a Java package style name, e.g. com.example.thermostat"]
    for bad in ("not a package", "nodots", "com..example", "1com.example", "com.example.", "a" * 199 + ".b"):
        assert field_errors(create(client, headers, uniqueName=bad)) == {"uniqueName": java}, bad
    assert field_errors(create(client, headers, description="d" * 1501)) == {
        "description": ["Maximum length 1500"]
    }
    assert created(client, headers, description="d" * 1500)["description"] == "d" * 1500
    assert field_errors(create(client, headers, name="n" * 101, tags=["ok", " "])) == {
        "name": ["Length must be 1-100"]
    }
    assert field_errors(create(client, headers, tags=["ok", " "])) == {"tags.1": ["Length must be 1-100"]}
    assert field_errors(create(client, headers, name=5)) == {"name": ["Text field only"]}
    assert field_errors(create(client, headers, published="perhaps")) == {"published": ["Boolean field only"]}
    assert field_errors(create(client, headers, tags="light")) == {"tags": ["Input should be a valid list"]}
    malformed = client.post(
        "/v1.1/devicetypes", content=b'{"name": ', headers={**headers, "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    assert owned_total(client, cast.owner) == before + 1  # only the 1500-character description


def test_duplicate_unique_name(client: httpx.Client, cast: Cast) -> None:
    unique_name = unique()
    first = created(client, cast.owner.headers, uniqueName=unique_name)
    before = owned_total(client, cast.stranger)
    again = create(client, cast.stranger.headers, uniqueName=unique_name)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == 409
    assert again.json()["error"]["message"] == f"A device type with uniqueName '{unique_name}' already exists"
    assert owned_total(client, cast.stranger) == before
    listed = client.get(f"/v1.1/devicetypes?name={unique_name}", headers=cast.owner.headers).json()
    assert [d["id"] for d in listed["data"]["deviceTypes"]] == [first["id"]]


def test_update(live: LiveServer, client: httpx.Client, cast: Cast) -> None:
    dt = created(client, cast.owner.headers, description="Old", tags=["a"])
    url = f"/v1.1/devicetypes/{dt['id']}"
    forbidden(client.put(url, json={"published": True}, headers=cast.stranger.headers), dt["id"])
    forbidden(client.put(url, json={"published": True}, headers=cast.developer.headers), dt["id"])
    assert field_errors(
        client.put(url, json={"name": "", "description": "x" * 1501}, headers=cast.owner.headers)
    ) == {
        "name": ["Length must be 1-100"],
        "description": ["Maximum length 1500"],
    }
    assert client.get(url, headers=cast.owner.headers).json()["data"] == dt

    live.clock.advance(2)
    changed = client.put(
        url,
        json={
            "name": "Renamed",
            "description": None,
            "tags": ["b"],
            "published": True,
            "uniqueName": "ignored.x",
        },
        headers=cast.owner.headers,
    )
    assert changed.status_code == 200, changed.text
    data = changed.json()["data"]
    assert data == {
        **dt,
        "name": "Renamed",
        "tags": [{"name": "b", "isCategory": False}],
        "published": True,
        "lastUpdated": data["lastUpdated"],
    }
    assert data["lastUpdated"] >= dt["lastUpdated"] + 2000
    # Published: everyone reads it, nobody else owns it.
    seen = client.get(url, headers=cast.stranger.headers)
    assert seen.status_code == 200
    assert seen.json()["data"] == {**data, "ownedByCurrentUser": False}


# --- Manifests: POST, S30, S31, S32 -----------------------------------------------------------------


def test_manifest_versions(client: httpx.Client, cast: Cast) -> None:
    dt = created(client, cast.owner.headers)
    base = f"/v1.1/devicetypes/{dt['id']}"
    headers = cast.owner.headers
    assert client.get(f"{base}/availablemanifestversions", headers=headers).json() == {
        "data": {"versions": []}
    }
    none_yet = client.get(f"{base}/manifests/latest/properties", headers=headers)
    assert none_yet.status_code == 404
    assert none_yet.json()["error"]["message"] == "The device type has no manifest yet"

    first = add_manifest(client, headers, dt["id"], LIGHT_MANIFEST)
    assert first.status_code == 200, first.text
    assert first.json() == {"data": {"version": 1}}
    latest = client.get(f"{base}/manifests/latest/properties", headers=headers)
    assert latest.json() == {"data": {"version": 1, "properties": LIGHT_PROPERTIES}}

    second = add_manifest(client, headers, dt["id"], LAMP_V2)
    assert second.json() == {"data": {"version": 2}}
    assert client.get(base, headers=headers).json()["data"]["latestVersion"] == 2
    assert client.get(f"{base}/availablemanifestversions", headers=headers).json() == {
        "data": {"versions": [1, 2]}
    }
    assert client.get(f"{base}/manifests/latest/properties", headers=headers).json() == {
        "data": {"version": 2, "properties": {"fields": {"level": leaf("Long")}, "actions": {}}}
    }
    assert client.get(f"{base}/manifests/1/properties", headers=headers).json() == {
        "data": {"version": 1, "properties": LIGHT_PROPERTIES}
    }
    unknown = client.get(f"{base}/manifests/3/properties", headers=headers)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Manifest version 3 not found"
    assert client.get(f"{base}/manifests/abc/properties", headers=headers).status_code == 400


def test_invalid_manifest_lists_every_error(client: httpx.Client, cast: Cast) -> None:
    dt = created(client, cast.owner.headers)
    headers = cast.owner.headers
    bad = {
        "fields": [
            {"name": "ok", "valueClass": "Integer"},
            {"name": "bad name!", "valueClass": "Integer"},
            {"name": "spin", "valueClass": "Quaternion"},
            {"name": "where", "children": [{"name": "x"}, {"name": "y", "valueClass": "Double", "unit": 3}]},
            {"name": "OK", "valueClass": "String"},
        ],
        "actions": [{"description": "no name"}, "setOff"],
        "messageFormat": "xml",
    }
    response = add_manifest(client, headers, dt["id"], bad)
    assert response.json()["error"]["message"] == "The manifest content is invalid"
    assert field_errors(response) == {
        "messageFormat": ["Only the 'json' messageFormat is supported"],
        "fields.1.name": ["Invalid name 'bad name!': use letters, digits, '_' or '-'"],
        "fields.2.valueClass": ["Unknown valueClass 'Quaternion'"],
        "fields.3.children.0.valueClass": ["Required parameter"],
        "fields.3.children.1.unit": ["Text field only"],
        "fields.4.name": ["Duplicate name 'OK'"],
        "actions.0.name": ["Required parameter"],
        "actions.1": ["JSON object expected"],
    }
    empty = add_manifest(client, headers, dt["id"], {})
    assert empty.json()["error"]["message"] == "The manifest content cannot be empty"
    assert field_errors(empty) == {"manifest": ["The manifest content cannot be empty"]}
    no_body = client.post(f"/v1.1/devicetypes/{dt['id']}/manifests", headers=headers)
    assert field_errors(no_body) == {"manifest": ["The manifest content cannot be empty"]}
    assert field_errors(add_manifest(client, headers, dt["id"], [1, 2])) == {
        "manifest": ["JSON object expected"]
    }
    malformed = client.post(
        f"/v1.1/devicetypes/{dt['id']}/manifests",
        content=b'{"fields": [',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400
    # Nothing was written.
    base = f"/v1.1/devicetypes/{dt['id']}"
    assert client.get(f"{base}/availablemanifestversions", headers=headers).json() == {
        "data": {"versions": []}
    }
    assert client.get(base, headers=headers).json()["data"]["latestVersion"] == 0


def test_manifest_permissions(client: httpx.Client, cast: Cast) -> None:
    private = created(client, cast.owner.headers)
    public = created(client, cast.owner.headers, published=True)
    for dt in (private, public):
        assert add_manifest(client, cast.owner.headers, dt["id"], LAMP_V2).status_code == 200
        forbidden(add_manifest(client, cast.stranger.headers, dt["id"], LAMP_V2), dt["id"])
    for path in ("manifests/latest/properties", "manifests/1/properties", "availablemanifestversions"):
        forbidden(
            client.get(f"/v1.1/devicetypes/{private['id']}/{path}", headers=cast.stranger.headers),
            private["id"],
        )
        assert (
            client.get(f"/v1.1/devicetypes/{public['id']}/{path}", headers=cast.stranger.headers).status_code
            == 200
        )
    # The stranger's attempts wrote nothing.
    versions = client.get(
        f"/v1.1/devicetypes/{public['id']}/availablemanifestversions", headers=cast.owner.headers
    )
    assert versions.json() == {"data": {"versions": [1]}}


# --- Organizations' device types ---------------------------------------------------------------------


def test_organization_device_types(client: httpx.Client, cast: Cast) -> None:
    dt = created(client, cast.developer.headers, oid=cast.oid)
    assert (dt["uid"], dt["oid"], dt["ownedByCurrentUser"]) == (None, cast.oid, True)
    url = f"/v1.1/devicetypes/{dt['id']}"
    for headers in (cast.admin.headers, cast.developer.headers, cast.org_app):
        got = client.get(url, headers=headers)
        assert got.status_code == 200
        assert got.json()["data"]["ownedByCurrentUser"] is True
    forbidden(client.get(url, headers=cast.stranger.headers), dt["id"])
    forbidden(client.get(url, headers=cast.owner.headers), dt["id"])

    # Administrators, developers and the organization's application change it and add manifests.
    assert client.put(url, json={"description": "By admin"}, headers=cast.admin.headers).status_code == 200
    assert client.put(url, json={"name": "By app"}, headers=cast.org_app).status_code == 200
    assert add_manifest(client, cast.developer.headers, dt["id"], LAMP_V2).json() == {"data": {"version": 1}}
    assert add_manifest(client, cast.org_app, dt["id"], LAMP_V2).json() == {"data": {"version": 2}}
    forbidden(client.put(url, json={"name": "Mine"}, headers=cast.stranger.headers), dt["id"])

    # The organization's application creates types for its organization only.
    by_app = created(client, cast.org_app, oid=cast.oid)
    assert (by_app["uid"], by_app["oid"]) == (None, cast.oid)
    no_oid = create(client, cast.org_app)
    assert no_oid.status_code == 403
    # Non-members cannot create types for the organization.
    not_member = create(client, cast.stranger.headers, oid=cast.oid)
    assert not_member.status_code == 403
    assert not_member.json()["error"]["message"] == (
        f"You do not have the right permission: 'organization' ['{cast.oid}']"
    )
    assert create(client, cast.owner.headers, oid="f" * 32).status_code == 403


def test_device_tokens_read_own_type_and_published(
    live: LiveServer, client: httpx.Client, cast: Cast
) -> None:
    own = created(client, cast.owner.headers)
    other_private = created(client, cast.owner.headers)
    published = created(client, cast.stranger.headers, published=True)
    for dt in (own, other_private):
        assert add_manifest(client, cast.owner.headers, dt["id"], LAMP_V2).status_code == 200
    assert add_manifest(client, cast.stranger.headers, published["id"], LAMP_V2).status_code == 200
    device = make_device(live, cast.owner.headers, own["id"], "Desk lamp")
    token = client.put(f"/v1.1/devices/{device['id']}/tokens", headers=cast.owner.headers)
    assert token.status_code == 200, token.text
    headers = bearer(token.json()["data"]["accessToken"])

    got = client.get(f"/v1.1/devicetypes/{own['id']}", headers=headers)
    assert got.status_code == 200
    assert got.json()["data"]["ownedByCurrentUser"] is False
    assert client.get(
        f"/v1.1/devicetypes/{own['id']}/manifests/latest/properties", headers=headers
    ).json() == {"data": {"version": 1, "properties": {"fields": {"level": leaf("Long")}, "actions": {}}}}
    assert client.get(f"/v1.1/devicetypes/{published['id']}", headers=headers).status_code == 200
    forbidden(client.get(f"/v1.1/devicetypes/{other_private['id']}", headers=headers), other_private["id"])
    listed = client.get(f"/v1.1/devicetypes?name={own['uniqueName']}", headers=headers).json()
    assert [d["id"] for d in listed["data"]["deviceTypes"]] == [own["id"]]
    assert (
        client.get(f"/v1.1/devicetypes?name={other_private['uniqueName']}", headers=headers).json()["total"]
        == 0
    )
    # Device tokens never change device types.
    forbidden(client.put(f"/v1.1/devicetypes/{own['id']}", json={"name": "x"}, headers=headers), own["id"])
    forbidden(add_manifest(client, headers, own["id"], LAMP_V2), own["id"])
    assert create(client, headers).status_code == 403
    assert client.get(f"/v1.1/users/{cast.owner.id}/devicetypes", headers=headers).status_code == 403


# --- S29, cloud connectors, S7 -----------------------------------------------------------------------


def test_list_visibility_and_search(client: httpx.Client, cast: Cast) -> None:
    tag = uuid.uuid4().hex[:10]
    public = created(client, cast.owner.headers, name=f"Bulb {tag}", published=True, tags=[tag, "blue"])
    private = created(client, cast.owner.headers, name=f"Bulb {tag} private", tags=[tag])
    org_type = created(client, cast.admin.headers, name=f"Org bulb {tag}", oid=cast.oid, tags=[tag, "blue"])
    by_unique = created(
        client, cast.stranger.headers, name="Zed other", uniqueName=f"com.x{tag}.thing", published=True
    )

    def ids(headers: dict[str, str], query: str) -> list[str]:
        response = client.get(f"/v1.1/devicetypes?{query}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["data"]["deviceTypes"]) == body["total"]
        return [d["id"] for d in body["data"]["deviceTypes"]]

    # ``name`` matches name or uniqueName, any case; order is by name.
    assert ids(cast.stranger.headers, f"name={tag.upper()}") == [public["id"], by_unique["id"]]
    assert ids(cast.owner.headers, f"name={tag}") == [public["id"], private["id"], by_unique["id"]]
    assert ids(cast.developer.headers, f"name={tag}") == [public["id"], org_type["id"], by_unique["id"]]
    assert ids(cast.org_app, f"name={tag}") == [public["id"], org_type["id"], by_unique["id"]]
    # ``nameSearch`` looks at names only.
    assert ids(cast.owner.headers, f"nameSearch={tag}") == [public["id"], private["id"]]
    # Tags: types carrying every listed tag.
    assert ids(cast.admin.headers, f"tags={tag}") == [public["id"], org_type["id"]]
    assert ids(cast.admin.headers, f"tags={tag},blue") == [public["id"], org_type["id"]]
    assert ids(cast.owner.headers, f"tags={tag}, blue") == [public["id"]]
    assert ids(cast.owner.headers, f"tags={tag},red") == []
    # Special characters are searched literally.
    assert ids(cast.owner.headers, f"name={tag}%25") == []
    flags = client.get(f"/v1.1/devicetypes?name={tag}", headers=cast.owner.headers).json()["data"][
        "deviceTypes"
    ]
    assert [d["ownedByCurrentUser"] for d in flags] == [True, True, False]


def test_create_device_filter(live: LiveServer, client: httpx.Client, cast: Cast) -> None:
    tag = uuid.uuid4().hex[:10]
    writable = created(client, cast.owner.headers, name=f"W {tag}", published=True)
    readable = created(client, cast.owner.headers, name=f"R {tag}", published=True)
    perms = AppPermissions(
        profile=frozenset({"READ"}),
        device_types={writable["id"]: frozenset({"READ", "WRITE"}), readable["id"]: frozenset({"READ"})},
    )
    app = make_app(live, cast.owner.id, permissions=perms)
    narrow = bearer(password_token(live, app, cast.owner.email)["access_token"])
    query = f"/v1.1/devicetypes?name={tag}"
    everything = client.get(query, headers=narrow).json()
    assert [d["id"] for d in everything["data"]["deviceTypes"]] == [readable["id"], writable["id"]]
    only = client.get(f"{query}&createDevice=true", headers=narrow).json()
    assert (only["total"], [d["id"] for d in only["data"]["deviceTypes"]]) == (1, [writable["id"]])
    both = client.get(f"{query}&createDevice=1", headers=cast.owner.headers).json()
    assert both["total"] == 2
    read_only = bearer(password_token(live, cast.owner.app, cast.owner.email, scope="read")["access_token"])
    assert client.get(f"{query}&createDevice=true", headers=read_only).json()["total"] == 0


def test_paging_is_stable(client: httpx.Client, cast: Cast) -> None:
    tag = uuid.uuid4().hex[:10]
    made = [
        created(client, cast.owner.headers, name=f"Page {tag} {n}", published=True)["id"]
        for n in (3, 1, 4, 2, 5)
    ]
    pages = []
    for offset in (0, 2, 4):
        body = client.get(
            f"/v1.1/devicetypes?name={tag}&count=2&offset={offset}", headers=cast.stranger.headers
        ).json()
        assert (body["total"], body["offset"], body["count"]) == (5, offset, 2 if offset < 4 else 1)
        pages.extend(d["name"] for d in body["data"]["deviceTypes"])
    assert pages == [f"Page {tag} {n}" for n in range(1, 6)]
    everything = client.get(f"/v1.1/devicetypes?name={tag}", headers=cast.stranger.headers).json()
    assert sorted(d["id"] for d in everything["data"]["deviceTypes"]) == sorted(made)
    past_end = client.get(f"/v1.1/devicetypes?name={tag}&offset=9", headers=cast.stranger.headers).json()
    assert (past_end["total"], past_end["count"], past_end["data"]["deviceTypes"]) == (5, 0, [])
    for bad in ("count=0", "count=101", "count=abc", "offset=-1", "offset=x", "createDevice=maybe"):
        for path in (
            "/v1.1/devicetypes",
            "/v1.1/devicetypes/cloudconnectors",
            f"/v1.1/users/{cast.owner.id}/devicetypes",
        ):
            if "createDevice" in bad and path != "/v1.1/devicetypes":
                continue
            response = client.get(f"{path}?{bad}", headers=cast.owner.headers)
            assert response.status_code == 400, (path, bad)
            assert response.json()["error"]["code"] == 4001


def test_cloud_connectors(client: httpx.Client, cast: Cast) -> None:
    tag = uuid.uuid4().hex[:10]
    connector = created(
        client, cast.owner.headers, name=f"Cloud {tag}", published=True, hasCloudConnector=True
    )
    hidden = created(client, cast.owner.headers, name=f"Cloud {tag} private", hasCloudConnector=True)
    created(client, cast.owner.headers, name=f"Plain {tag}", published=True)
    assert connector["hasCloudConnector"] is True
    body = client.get(f"/v1.1/devicetypes/cloudconnectors?name={tag}", headers=cast.stranger.headers).json()
    assert (body["total"], body["count"], [d["id"] for d in body["data"]["deviceTypes"]]) == (
        1,
        1,
        [connector["id"]],
    )
    mine = client.get(f"/v1.1/devicetypes/cloudconnectors?name={tag}", headers=cast.owner.headers).json()
    assert [d["id"] for d in mine["data"]["deviceTypes"]] == [connector["id"], hidden["id"]]


def test_user_device_types(live: LiveServer, client: httpx.Client, cast: Cast) -> None:
    user = make_user(live)
    sharer = make_user(live)
    own_public = created(client, user.headers, name="A own", published=True)
    own_private = created(client, user.headers, name="B own")
    created(client, cast.owner.headers, name="Not theirs", published=True)
    oid = make_org(live, {user.id: "developer"})
    org_type = created(client, user.headers, name="C org", oid=oid)
    shared_type = created(client, sharer.headers, name="D shared", published=True)
    assert add_manifest(client, sharer.headers, shared_type["id"], LAMP_V2).status_code == 200
    device = make_device(live, sharer.headers, shared_type["id"], "Shared lamp")
    share = client.post(
        f"/v1.1/devices/{device['id']}/shares", json={"email": user.email}, headers=sharer.headers
    )
    assert share.status_code == 200, share.text
    share_id = share.json()["data"]["id"]

    def ids(query: str = "", headers: dict[str, str] | None = None) -> list[str]:
        response = client.get(f"/v1.1/users/{user.id}/devicetypes?{query}", headers=headers or user.headers)
        assert response.status_code == 200, response.text
        return [d["id"] for d in response.json()["data"]["deviceTypes"]]

    assert ids() == [own_public["id"], own_private["id"]]
    assert ids("includeOrganization=true") == [own_public["id"], own_private["id"], org_type["id"]]
    # A pending share does not count; an accepted one does.
    assert ids("includeShared=true") == [own_public["id"], own_private["id"]]
    accepted = client.put(
        f"/v1.1/devices/{device['id']}/shares/{share_id}", json={"status": "ACCEPTED"}, headers=user.headers
    )
    assert accepted.status_code == 200, accepted.text
    assert ids("includeShared=true") == [own_public["id"], own_private["id"], shared_type["id"]]
    assert ids("includeShared=true&includeOrganization=true&count=3&offset=1") == [
        own_private["id"],
        org_type["id"],
        shared_type["id"],
    ]
    body = client.get(f"/v1.1/users/{user.id}/devicetypes?count=1", headers=user.headers).json()
    assert (body["total"], body["offset"], body["count"]) == (2, 0, 1)

    # Another user may not list them; an application the user authorized may.
    refused = client.get(f"/v1.1/users/{user.id}/devicetypes", headers=cast.stranger.headers)
    assert refused.status_code == 403
    assert ids(headers=bearer(app_token(live, user.app))) == [own_public["id"], own_private["id"]]
    assert client.get(f"/v1.1/users/{user.id}/devicetypes", headers=cast.org_app).status_code == 403
