"""Organizations (extension): creation, listing, changes, members and roles, over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from thingcloud.errors import NotFound

from .conftest import LiveServer
from .factories import TestUser as User
from .factories import app_token, make_org_app, make_user

FORBIDDEN = "You do not have the right permission: 'organization' ['{}']"


def post_org(client: httpx.Client, user: User, **body: Any) -> httpx.Response:
    return client.post("/v1.1/organizations", json=body, headers=user.headers)


def new_org(client: httpx.Client, user: User, name: str = "Acme") -> dict[str, Any]:
    response = post_org(client, user, name=name, description="Makers of lamps")
    assert response.status_code == 200, response.text
    org: dict[str, Any] = response.json()["data"]
    return org


def add(client: httpx.Client, admin: User, oid: str, **body: Any) -> httpx.Response:
    return client.post(f"/v1.1/organizations/{oid}/members", json=body, headers=admin.headers)


def field_errors(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 4001
    return {e["field"]: e["messages"] for e in error["errors"][0]}


@pytest.fixture(scope="module")
def team(live: LiveServer) -> dict[str, User]:
    return {name: make_user(live) for name in ("admin", "dev", "other", "stranger")}


def test_create_get_and_update(live: LiveServer, client: httpx.Client, team: dict[str, User]) -> None:
    admin = team["admin"]
    before = live.clock.now_ms()
    org = new_org(client, admin, "  Acme Lamps ")
    assert len(org["id"]) == 32
    assert before <= org["createdOn"] == org["modifiedOn"] <= live.clock.now_ms()
    assert org == {
        "id": org["id"],
        "name": "Acme Lamps",
        "description": "Makers of lamps",
        "createdBy": admin.id,
        "createdOn": org["createdOn"],
        "modifiedOn": org["createdOn"],
        "role": "administrator",
    }
    got = client.get(f"/v1.1/organizations/{org['id']}", headers=admin.headers)
    assert got.status_code == 200
    assert got.json() == {"data": org}

    live.clock.advance(5)
    changed = client.put(
        f"/v1.1/organizations/{org['id']}",
        json={"name": "Acme Lights", "description": None},
        headers=admin.headers,
    )
    assert changed.status_code == 200, changed.text
    data = changed.json()["data"]
    assert (data["name"], data["description"]) == ("Acme Lights", "Makers of lamps")
    assert data["modifiedOn"] >= org["createdOn"] + 5000


def test_bad_input_writes_nothing(client: httpx.Client, team: dict[str, User]) -> None:
    admin = team["admin"]
    listed = client.get("/v1.1/organizations", headers=admin.headers).json()["total"]
    assert field_errors(post_org(client, admin)) == {"name": ["Required parameter"]}
    assert field_errors(post_org(client, admin, name=" ", description="x" * 1501)) == {
        "name": ["Length must be 1-100"],
        "description": ["Maximum length 1500"],
    }
    assert field_errors(post_org(client, admin, name="n" * 101)) == {"name": ["Length must be 1-100"]}
    assert field_errors(post_org(client, admin, name=12)) == {"name": ["Text field only"]}
    malformed = client.post(
        "/v1.1/organizations",
        content=b"{not json",
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == 4001
    assert client.get("/v1.1/organizations", headers=admin.headers).json()["total"] == listed

    oid = new_org(client, admin)["id"]
    assert field_errors(
        client.put(f"/v1.1/organizations/{oid}", json={"name": ""}, headers=admin.headers)
    ) == {"name": ["Length must be 1-100"]}
    assert client.get(f"/v1.1/organizations/{oid}", headers=admin.headers).json()["data"]["name"] == "Acme"


def test_members_and_roles(live: LiveServer, client: httpx.Client, team: dict[str, User]) -> None:
    admin, dev, other, stranger = team["admin"], team["dev"], team["other"], team["stranger"]
    oid = new_org(client, admin)["id"]

    added = add(client, admin, oid, email=dev.email.upper(), role="developer")
    assert added.status_code == 200, added.text
    assert added.json()["data"]["uid"] == dev.id
    assert added.json()["data"]["role"] == "developer"
    live.clock.advance(1)
    by_uid = add(client, admin, oid, uid=other.id, role="administrator")
    assert by_uid.status_code == 200, by_uid.text
    member = by_uid.json()["data"]
    assert member["uid"] == other.id
    assert member["email"] == other.email
    assert member["role"] == "administrator"

    members = client.get(f"/v1.1/organizations/{oid}/members", headers=dev.headers)
    assert members.status_code == 200
    body = members.json()
    assert (body["total"], body["offset"], body["count"]) == (3, 0, 3)
    assert [(m["uid"], m["role"]) for m in body["data"]["members"]] == [
        (admin.id, "administrator"),
        (dev.id, "developer"),
        (other.id, "administrator"),
    ]
    page = client.get(f"/v1.1/organizations/{oid}/members?count=2&offset=2", headers=dev.headers).json()
    assert (page["total"], page["offset"], page["count"]) == (3, 2, 1)
    assert [m["uid"] for m in page["data"]["members"]] == [other.id]

    # A developer sees the organization (with their role) but does not manage it.
    seen = client.get(f"/v1.1/organizations/{oid}", headers=dev.headers)
    assert seen.status_code == 200
    assert seen.json()["data"]["role"] == "developer"
    for response in (
        client.put(f"/v1.1/organizations/{oid}", json={"name": "Mine"}, headers=dev.headers),
        add(client, dev, oid, email=stranger.email, role="developer"),
        client.put(
            f"/v1.1/organizations/{oid}/members/{dev.id}", json={"role": "administrator"}, headers=dev.headers
        ),
        client.delete(f"/v1.1/organizations/{oid}/members/{admin.id}", headers=dev.headers),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["message"] == FORBIDDEN.format(oid)

    # Strangers see nothing.
    for response in (
        client.get(f"/v1.1/organizations/{oid}", headers=stranger.headers),
        client.get(f"/v1.1/organizations/{oid}/members", headers=stranger.headers),
        client.put(f"/v1.1/organizations/{oid}", json={"name": "Mine"}, headers=stranger.headers),
    ):
        assert response.status_code == 403
        assert response.json()["error"] == {
            "code": 403,
            "message": FORBIDDEN.format(oid),
            "id": response.json()["error"]["id"],
        }

    # An administrator promotes and demotes; removing a member ends their access at once.
    promoted = client.put(
        f"/v1.1/organizations/{oid}/members/{dev.id}", json={"role": "administrator"}, headers=admin.headers
    )
    assert promoted.status_code == 200
    assert promoted.json()["data"]["role"] == "administrator"
    demoted = client.put(
        f"/v1.1/organizations/{oid}/members/{dev.id}", json={"role": "developer"}, headers=other.headers
    )
    assert demoted.json()["data"]["role"] == "developer"
    removed = client.delete(f"/v1.1/organizations/{oid}/members/{dev.id}", headers=admin.headers)
    assert removed.status_code == 200
    assert removed.json()["data"]["uid"] == dev.id
    assert client.get(f"/v1.1/organizations/{oid}", headers=dev.headers).status_code == 403
    gone = client.delete(f"/v1.1/organizations/{oid}/members/{dev.id}", headers=admin.headers)
    assert gone.status_code == 404


def test_member_bad_input(client: httpx.Client, team: dict[str, User]) -> None:
    admin, dev = team["admin"], team["dev"]
    oid = new_org(client, admin)["id"]
    assert field_errors(add(client, admin, oid, role="developer")) == {
        "email": ["Required parameter (or uid)"]
    }
    assert field_errors(add(client, admin, oid, email=dev.email, role="owner")) == {
        "role": ["Must be one of administrator, developer"]
    }
    assert field_errors(add(client, admin, oid, email=dev.email)) == {
        "role": ["Must be one of administrator, developer"]
    }
    unknown = add(client, admin, oid, email="nobody-here@example.com", role="developer")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == 1201
    assert add(client, admin, oid, email=dev.email, role="developer").status_code == 200
    again = add(client, admin, oid, uid=dev.id, role="administrator")
    assert again.status_code == 409
    assert field_errors(
        client.put(
            f"/v1.1/organizations/{oid}/members/{dev.id}", json={"role": "boss"}, headers=admin.headers
        )
    ) == {"role": ["Must be one of administrator, developer"]}
    members = client.get(f"/v1.1/organizations/{oid}/members", headers=admin.headers).json()
    assert [(m["uid"], m["role"]) for m in members["data"]["members"]] == [
        (admin.id, "administrator"),
        (dev.id, "developer"),
    ]
    not_member = client.put(
        f"/v1.1/organizations/{oid}/members/{team['stranger'].id}",
        json={"role": "developer"},
        headers=admin.headers,
    )
    assert not_member.status_code == 404


def test_last_administrator_stays(client: httpx.Client, team: dict[str, User]) -> None:
    admin, other = team["admin"], team["other"]
    oid = new_org(client, admin)["id"]
    for response in (
        client.put(
            f"/v1.1/organizations/{oid}/members/{admin.id}", json={"role": "developer"}, headers=admin.headers
        ),
        client.delete(f"/v1.1/organizations/{oid}/members/{admin.id}", headers=admin.headers),
    ):
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["code"], error["message"]) == (4001, "An organization needs at least one administrator")
    assert add(client, admin, oid, uid=other.id, role="administrator").status_code == 200
    # With a second administrator the first may step down, then the second is the last one.
    stepped = client.put(
        f"/v1.1/organizations/{oid}/members/{admin.id}", json={"role": "developer"}, headers=admin.headers
    )
    assert stepped.status_code == 200
    last = client.delete(f"/v1.1/organizations/{oid}/members/{other.id}", headers=other.headers)
    assert last.status_code == 400
    assert (
        client.put(f"/v1.1/organizations/{oid}", json={"name": "x"}, headers=admin.headers).status_code == 403
    )


def test_list_mine_paged(client: httpx.Client, live: LiveServer) -> None:
    user, outsider = make_user(live), make_user(live)
    made = [new_org(client, user, name)["id"] for name in ("Charlie", "Alpha", "Bravo")]
    new_org(client, outsider, "Delta")
    first = client.get("/v1.1/organizations?count=2", headers=user.headers).json()
    assert (first["total"], first["offset"], first["count"]) == (3, 0, 2)
    second = client.get("/v1.1/organizations?count=2&offset=2", headers=user.headers).json()
    assert (second["total"], second["offset"], second["count"]) == (3, 2, 1)
    listed = first["data"]["organizations"] + second["data"]["organizations"]
    assert [o["name"] for o in listed] == ["Alpha", "Bravo", "Charlie"]
    assert sorted(o["id"] for o in listed) == sorted(made)
    assert {o["role"] for o in listed} == {"administrator"}
    for bad in ("count=0", "count=101", "count=abc", "offset=-1"):
        response = client.get(f"/v1.1/organizations?{bad}", headers=user.headers)
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == 4001


def test_unknown_organization(client: httpx.Client, team: dict[str, User]) -> None:
    admin = team["admin"]
    unknown = "0" * 32
    for response in (
        client.get(f"/v1.1/organizations/{unknown}", headers=admin.headers),
        client.put(f"/v1.1/organizations/{unknown}", json={"name": "x"}, headers=admin.headers),
        client.get(f"/v1.1/organizations/{unknown}/members", headers=admin.headers),
        add(client, admin, unknown, email=admin.email, role="developer"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "Organization not found"


def test_organization_application(client: httpx.Client, live: LiveServer, team: dict[str, User]) -> None:
    admin, dev, stranger = team["admin"], team["dev"], team["stranger"]
    oid = new_org(client, admin, "App Org")["id"]
    other_oid = new_org(client, admin, "Other Org")["id"]
    token = app_token(live, make_org_app(live, admin.id, oid))
    headers = {"Authorization": f"Bearer {token}"}

    got = client.get(f"/v1.1/organizations/{oid}", headers=headers)
    assert got.status_code == 200
    assert got.json()["data"]["role"] is None
    mine = client.get("/v1.1/organizations", headers=headers).json()
    assert (mine["total"], [o["id"] for o in mine["data"]["organizations"]]) == (1, [oid])
    by_app = client.post(
        f"/v1.1/organizations/{oid}/members", json={"email": dev.email, "role": "developer"}, headers=headers
    )
    assert by_app.status_code == 200
    assert client.get(f"/v1.1/organizations/{other_oid}", headers=headers).status_code == 403

    # Only users create organizations; an application of no organization lists none.
    created = client.post("/v1.1/organizations", json={"name": "By app"}, headers=headers)
    assert created.status_code == 403
    plain = app_token(live, stranger.app)
    none = client.get("/v1.1/organizations", headers={"Authorization": f"Bearer {plain}"}).json()
    assert (none["total"], none["count"], none["data"]["organizations"]) == (0, 0, [])


def test_application_needs_membership(live: LiveServer, client: httpx.Client, team: dict[str, User]) -> None:
    oid = new_org(client, team["admin"])["id"]
    with pytest.raises(NotFound, match="No such organization"):
        make_org_app(live, team["stranger"].id, oid)
