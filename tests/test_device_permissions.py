"""Who may call which devices endpoint: every actor against every endpoint, one expected status per
cell (REFERENCE.md §1.5–1.6).

The device belongs to ``owner`` and is of a published device type owned by an organization (whose
administrator and developer have no rights over other people's devices: organization roles gate
device management, not devices). ``pending``/``accepted`` received shares of it; ``app_with`` is
an application with READ+WRITE on the type and ``app_without`` one with rights on another type only,
both authorized by the owner; ``own_device`` is the device's token, ``other_device`` a token of
another of the owner's devices. A refused call must leave the device, its token, its shares and its
status exactly as they were.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from thingcloud.auth.permissions import AppPermissions

from .conftest import LiveServer
from .factories import (
    app_token,
    make_app,
    make_device,
    make_device_type,
    make_org,
    make_user,
    password_token,
)

ACTORS = (
    "owner",
    "org_admin",
    "org_developer",
    "pending",
    "accepted",
    "app_with",
    "app_without",
    "own_device",
    "other_device",
    "stranger",
)


@dataclass
class World:
    live: LiveServer
    users: dict[str, Any]
    headers: dict[str, dict[str, str]]
    public_dt: str
    private_dt: str


@dataclass
class Scene:
    did: str
    token: str
    pending_share: str
    accepted_share: str


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def world(live: LiveServer) -> World:
    names = ("owner", "org_admin", "org_developer", "pending", "accepted", "stranger")
    users = {name: make_user(live) for name in names}
    oid = make_org(live, {users["org_admin"].id: "administrator", users["org_developer"].id: "developer"})
    public_dt = make_device_type(live, None, oid=oid, published=True)
    private_dt = make_device_type(live, None, oid=oid, published=False)
    other_dt = make_device_type(live, users["stranger"].id)
    headers = {name: user.headers for name, user in users.items()}
    owner = users["owner"]
    for name, dtid in (("app_with", public_dt), ("app_without", other_dt)):
        app = make_app(
            live, owner.id, permissions=AppPermissions(device_types={dtid: frozenset({"READ", "WRITE"})})
        )
        password_token(live, app, owner.email)  # the owner authorizes the application
        headers[name] = bearer(app_token(live, app))
    other = make_device(live, owner.headers, public_dt, name="Other device")
    other_token = httpx.put(f"{live.url}/v1.1/devices/{other['id']}/tokens", headers=owner.headers)
    headers["other_device"] = bearer(other_token.json()["data"]["accessToken"])
    return World(live, users, headers, public_dt, private_dt)


def new_scene(world: World, client: httpx.Client) -> Scene:
    owner = world.users["owner"]
    did = make_device(world.live, owner.headers, world.public_dt, name="Shared device")["id"]
    token = client.put(f"/v1.1/devices/{did}/tokens", headers=owner.headers).json()["data"]["accessToken"]
    ids = {}
    for name in ("pending", "accepted"):
        response = client.post(
            f"/v1.1/devices/{did}/shares", headers=owner.headers, json={"email": world.users[name].email}
        )
        ids[name] = response.json()["shareId"]
    accepted = client.put(
        f"/v1.1/devices/{did}/shares/{ids['accepted']}",
        headers=world.headers["accepted"],
        json={"status": "ACCEPTED"},
    )
    assert accepted.status_code == 200
    return Scene(did, token, ids["pending"], ids["accepted"])


Request = Callable[[World, Scene, str], tuple[str, str, dict[str, Any] | None, dict[str, Any]]]


def call(method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Request:
    def build(
        world: World, scene: Scene, actor: str
    ) -> tuple[str, str, dict[str, Any] | None, dict[str, Any]]:
        values = {"did": scene.did, "pending": scene.pending_share, "owner": world.users["owner"].id}
        query = {k: v.format(**values) if isinstance(v, str) else v for k, v in params.items()}
        return method, path.format(**values), body, query

    return build


def create_device(private: bool) -> Request:
    def build(
        world: World, scene: Scene, actor: str
    ) -> tuple[str, str, dict[str, Any] | None, dict[str, Any]]:
        body: dict[str, Any] = {
            "dtid": world.private_dt if private else world.public_dt,
            "name": "New device",
        }
        if actor.startswith("app"):
            body["uid"] = world.users["owner"].id  # application tokens name the user
        elif not private:
            body["uid"] = world.users["owner"].id  # everyone tries to add a device for the owner
        return "POST", "/v1.1/devices", body, {}

    return build


def expect(*allowed: str, code: int = 200) -> dict[str, int]:
    return {actor: code if actor in allowed else 403 for actor in ACTORS}


READERS = ("owner", "accepted", "app_with", "own_device")
WRITERS = READERS
OWNER_SIDE = ("owner", "app_with")
USER_READERS = ("owner", "app_with", "app_without")

# name → (request, expected status per actor, mutates the device?)
ENDPOINTS: dict[str, tuple[Request, dict[str, int], bool]] = {
    "get device": (call("GET", "/v1.1/devices/{did}"), expect(*READERS), False),
    "update device": (
        call("PUT", "/v1.1/devices/{did}", {"name": "Renamed device"}),
        expect(*OWNER_SIDE),
        True,
    ),
    "delete device": (call("DELETE", "/v1.1/devices/{did}"), expect(*OWNER_SIDE), True),
    "get token": (call("GET", "/v1.1/devices/{did}/tokens"), expect(*OWNER_SIDE), False),
    "renew token": (call("PUT", "/v1.1/devices/{did}/tokens"), expect(*OWNER_SIDE), True),
    "revoke token": (call("DELETE", "/v1.1/devices/{did}/tokens"), expect(*OWNER_SIDE), True),
    "get status": (call("GET", "/v1.1/devices/{did}/status"), expect(*READERS), False),
    "put status": (
        call("PUT", "/v1.1/devices/{did}/status", {"availability": "online"}),
        expect(*WRITERS),
        True,
    ),
    "batch status": (call("GET", "/v1.1/devices/status", dids="{did}"), expect(*READERS), False),
    "presence": (call("GET", "/v1.1/devices/{did}/presence"), expect(*READERS), False),
    "list shares": (call("GET", "/v1.1/devices/{did}/shares"), expect(*OWNER_SIDE), False),
    "create share": (
        call("POST", "/v1.1/devices/{did}/shares", {"email": f"new-{uuid.uuid4().hex[:8]}@example.com"}),
        expect(*OWNER_SIDE),
        True,
    ),
    "get share": (call("GET", "/v1.1/devices/{did}/shares/{pending}"), expect(*OWNER_SIDE, "pending"), False),
    "delete share": (call("DELETE", "/v1.1/devices/{did}/shares/{pending}"), expect(*OWNER_SIDE), True),
    "answer share": (
        call("PUT", "/v1.1/devices/{did}/shares/{pending}", {"status": "ACCEPTED"}),
        expect("pending"),
        True,
    ),
    "user devices": (call("GET", "/v1.1/users/{owner}/devices"), expect(*USER_READERS), False),
    "user shares": (call("GET", "/v1.1/users/{owner}/shares", filter="ALL"), expect(*USER_READERS), False),
    "add device for owner": (create_device(private=False), expect("owner", "app_with"), False),
    "add device of a private type": (
        create_device(private=True),
        expect("org_admin", "org_developer"),
        False,
    ),
}


def fingerprint(world: World, client: httpx.Client, scene: Scene) -> list[Any]:
    """Everything a refused call could have changed, read back by the owner."""
    headers = world.users["owner"].headers
    return [
        client.get(f"/v1.1/devices/{scene.did}{suffix}", headers=headers).json()
        for suffix in ("", "/tokens", "/shares", "/status")
    ]


@pytest.fixture(scope="module")
def shared_scene(world: World, live: LiveServer) -> Scene:
    with live.client() as client:
        return new_scene(world, client)


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_permission_matrix(
    world: World, shared_scene: Scene, client: httpx.Client, endpoint: str, actor: str
) -> None:
    request, expected, mutates = ENDPOINTS[endpoint]
    scene = new_scene(world, client) if mutates else shared_scene
    headers = bearer(scene.token) if actor == "own_device" else world.headers[actor]
    before = fingerprint(world, client, scene)
    method, path, body, params = request(world, scene, actor)
    response = client.request(method, path, headers=headers, json=body, params=params)
    assert response.status_code == expected[actor], response.text
    if response.status_code == 403:
        assert response.json()["error"]["code"] == 403
        assert fingerprint(world, client, scene) == before
