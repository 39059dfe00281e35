"""Users endpoints (S1–S5) over HTTP: success, permissions, bad input."""

from __future__ import annotations

import httpx

from .conftest import LiveServer
from .factories import app_token, make_app, make_user, password_token


def test_self_returns_profile(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    response = client.get("/v1.1/users/self", headers=user.headers)
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["id"] == user.id
    assert data["email"] == user.email
    assert set(data) == {"id", "name", "email", "fullName", "saIdentity", "createdOn", "modifiedOn"}
    assert isinstance(data["createdOn"], int) and data["createdOn"] > 1_600_000_000_000


def test_self_requires_a_valid_token(client: httpx.Client) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nothex"},
        {"Authorization": "Bearer " + "a" * 32},
        {"Authorization": "Basic abc"},
    ):
        response = client.get("/v1.1/users/self", headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == 401
        assert error["message"] == "Please provide a valid authorization header"
        assert len(error["id"]) == 32


def test_self_refuses_application_tokens(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    token = app_token(live, user.app)
    response = client.get("/v1.1/users/self", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == 403


def test_properties_lifecycle(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    url = f"/v1.1/users/{user.id}/properties"
    assert client.get(url, headers=user.headers).status_code == 404
    created = client.post(
        url,
        headers=user.headers,
        json={"aid": user.app.client_id, "properties": '{"a":1}', "uid": None, "extra": 1},
    )
    assert created.status_code == 200, created.text
    assert created.json() == {"data": {"uid": user.id, "aid": user.app.client_id, "properties": '{"a":1}'}}
    again = client.post(url, headers=user.headers, json={"aid": user.app.client_id, "properties": "x"})
    assert again.status_code == 409
    assert client.get(url, headers=user.headers).json()["data"]["properties"] == '{"a":1}'
    updated = client.put(url, headers=user.headers, json={"aid": user.app.client_id, "properties": "v2"})
    assert updated.json()["data"]["properties"] == "v2"
    assert (
        client.get(url, headers=user.headers, params={"aid": user.app.client_id}).json()["data"]["properties"]
        == "v2"
    )
    deleted = client.delete(url, headers=user.headers)
    assert deleted.json() == {"data": {"uid": user.id, "aid": user.app.client_id, "properties": ""}}
    assert client.get(url, headers=user.headers).status_code == 404
    assert client.put(url, headers=user.headers, json={"properties": "v3"}).status_code == 404


def test_properties_are_per_application(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    other_app = make_app(live, user.id)
    other_token = password_token(live, other_app, user.email)["access_token"]
    url = f"/v1.1/users/{user.id}/properties"
    client.post(url, headers=user.headers, json={"aid": user.app.client_id, "properties": "mine"})
    other = {"Authorization": f"Bearer {other_token}"}
    assert client.get(url, headers=other).status_code == 404
    # Naming another application's aid is refused, and writes nothing.
    response = client.post(url, headers=other, json={"aid": user.app.client_id, "properties": "stolen"})
    assert response.status_code == 403
    assert client.get(url, headers=user.headers).json()["data"]["properties"] == "mine"


def test_properties_of_another_user_are_forbidden(live: LiveServer, client: httpx.Client) -> None:
    alice = make_user(live)
    bob = make_user(live)
    url = f"/v1.1/users/{alice.id}/properties"
    client.post(url, headers=alice.headers, json={"aid": alice.app.client_id, "properties": "secret"})
    assert client.get(url, headers=bob.headers).status_code == 403
    response = client.put(url, headers=bob.headers, json={"aid": bob.app.client_id, "properties": "x"})
    assert response.status_code == 403
    assert client.delete(url, headers=bob.headers).status_code == 403
    assert client.get(url, headers=alice.headers).json()["data"]["properties"] == "secret"


def test_application_token_needs_the_users_grant(live: LiveServer, client: httpx.Client) -> None:
    alice = make_user(live)
    token = {"Authorization": f"Bearer {app_token(live, alice.app)}"}
    url = f"/v1.1/users/{alice.id}/properties"
    response = client.post(url, headers=token, json={"aid": alice.app.client_id, "properties": "by app"})
    assert response.status_code == 200
    # A user who never authorized the application is out of its reach.
    stranger = make_user(live)
    assert client.get(f"/v1.1/users/{stranger.id}/properties", headers=token).status_code == 403


def test_properties_bad_input(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    url = f"/v1.1/users/{user.id}/properties"
    cases = [
        ({"aid": user.app.client_id}, "properties"),
        ({"aid": user.app.client_id, "properties": "x" * 10_001}, "properties"),
        ({"aid": user.app.client_id, "properties": 12}, "properties"),
        ({"aid": user.app.client_id, "properties": None}, "properties"),
    ]
    for body, field in cases:
        response = client.post(url, headers=user.headers, json=body)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["code"] == 4001
        assert error["errors"][0][0]["field"] == field
        assert error["errors"][0][0]["message"] == error["errors"][0][0]["messages"]
    malformed = client.post(
        url, headers={**user.headers, "Content-Type": "application/json"}, content=b"{nope"
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == 4001
    assert client.get(url, headers=user.headers).status_code == 404


def test_unknown_route_gets_artik_error(client: httpx.Client) -> None:
    response = client.get("/v1.1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == 404


def test_deleting_a_user_takes_their_devices_and_messages(live: LiveServer, client: httpx.Client) -> None:
    from sqlalchemy import func, select

    from thingcloud import tables as t
    from thingcloud.areas.users import service as users

    from .factories import make_device, make_device_token, make_device_type

    owner = make_user(live)
    dtid = make_device_type(live, owner.id)
    device = make_device(live, owner.headers, dtid)
    device_token = {"Authorization": f"Bearer {make_device_token(live, owner, device['id'])}"}
    sent = client.post("/v1.1/messages", headers=device_token, json={"data": {"temp": 20}})
    assert sent.status_code == 200, sent.text

    async def delete(rt: object) -> object:
        return await users.delete_user(rt, owner.email)  # type: ignore[arg-type]

    live.call(delete)
    assert client.get(f"/v1.1/devices/{device['id']}", headers=device_token).status_code == 401

    async def leftovers(rt: object) -> tuple[int, int, int]:
        async with rt.db.read() as conn:  # type: ignore[attr-defined]
            devices = await conn.scalar(
                select(func.count()).select_from(t.devices).where(t.devices.c.uid == owner.id)
            )
            types = await conn.scalar(
                select(func.count()).select_from(t.device_types).where(t.device_types.c.id == dtid)
            )
            jobs = await conn.scalar(
                select(func.count())
                .select_from(t.jobs)
                .where(t.jobs.c.unique_key == f"delete-device:{device['id']}")
            )
        return devices, types, jobs

    assert live.call(leftovers) == (0, 0, 1)  # the device, its type and a job deleting its messages


def test_a_user_whose_device_type_others_use_is_not_deleted(live: LiveServer, client: httpx.Client) -> None:
    from thingcloud.areas.users import service as users
    from thingcloud.errors import Conflict

    from .factories import make_device, make_device_type

    maker = make_user(live)
    dtid = make_device_type(live, maker.id, published=True)
    other = make_user(live)
    make_device(live, other.headers, dtid)

    async def delete(rt: object) -> str:
        try:
            await users.delete_user(rt, maker.email)  # type: ignore[arg-type]
        except Conflict as exc:
            return exc.message
        return "deleted"

    assert dtid in live.call(delete)
    assert client.get("/v1.1/users/self", headers=maker.headers).status_code == 200
