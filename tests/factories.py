"""Factories for tests: users with tokens, applications, app tokens — through the real services and
the real ``/token`` endpoint."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from thingcloud.areas.users import service as users
from thingcloud.auth import applications as apps
from thingcloud.auth.permissions import AppPermissions

from .conftest import LiveServer

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery"


@dataclass
class App:
    client_id: str
    client_secret: str
    owner_uid: str
    redirect_uri: str


@dataclass
class TestUser:
    __test__ = False  # a factory's product, not a test class for pytest to collect

    id: str
    email: str
    password: str
    token: str
    refresh_token: str
    app: App

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}{next(_seq)}-{uuid.uuid4().hex[:8]}@example.com"


def make_app(
    live: LiveServer,
    owner_uid: str,
    *,
    password_grant: bool = True,
    permissions: AppPermissions | None = None,
    redirect_uri: str = "http://127.0.0.1:9/callback",
    name: str = "Test App",
) -> App:
    async def work(rt: Any) -> Any:
        return await apps.create_application(
            rt, name, owner_uid, [redirect_uri], password_grant=password_grant, permissions=permissions
        )

    app, secret = live.call(work)
    return App(app.id, secret, owner_uid, redirect_uri)


def create_account(live: LiveServer, email: str | None = None, password: str = PASSWORD, **kw: Any) -> Any:
    email = email or unique_email()

    async def work(rt: Any) -> Any:
        return await users.create_user(rt, email, password, **kw)

    return live.call(work)


def password_token(
    live: LiveServer, app: App, email: str, password: str = PASSWORD, **form: str
) -> dict[str, Any]:
    response = httpx.post(
        f"{live.url}/token",
        data={"grant_type": "password", "username": email, "password": password, **form},
        auth=(app.client_id, app.client_secret),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def make_user(live: LiveServer, app: App | None = None, **kw: Any) -> TestUser:
    """A new user, signed in through an application of their own (or ``app``) with the password grant."""
    account = create_account(live, **kw)
    app = app or make_app(live, account.id)
    body = password_token(live, app, account.email)
    return TestUser(account.id, account.email, PASSWORD, body["access_token"], body["refresh_token"], app)


def app_token(live: LiveServer, app: App) -> str:
    response = httpx.post(
        f"{live.url}/token",
        data={"grant_type": "client_credentials"},
        auth=(app.client_id, app.client_secret),
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


# --- Registry: device types, devices, organizations (devices area tests) ---------------------------

LAMP_MANIFEST: dict[str, Any] = {
    "fields": [
        {"name": "state", "valueClass": "Boolean"},
        {"name": "temp", "valueClass": "Double", "unit": "Cel"},
        {"name": "location", "children": [{"name": "x", "valueClass": "Double"}]},
    ],
    "actions": [{"name": "setOn"}],
}


def make_device_type(
    live: LiveServer,
    owner_uid: str | None,
    *,
    oid: str | None = None,
    published: bool = True,
    manifests: int = 1,
    documents: list[dict[str, Any]] | None = None,
) -> str:
    """A device type (owned by a user or an organization) with ``manifests`` manifest versions of
    ``LAMP_MANIFEST``, or one version per manifest in ``documents``."""
    from thingcloud.areas.devicetypes import service as devicetypes

    async def work(rt: Any) -> str:
        dt = await devicetypes.create_device_type(
            rt,
            name="Test lamp",
            unique_name=f"com.example.lamp{uuid.uuid4().hex}",
            owner_uid=owner_uid,
            oid=oid,
            published=published,
        )
        for document in documents or [LAMP_MANIFEST] * manifests:
            await devicetypes.add_manifest(rt, dt["id"], document, owner_uid)
        return str(dt["id"])

    return live.call(work)


def make_device(
    live: LiveServer, headers: dict[str, str], dtid: str, name: str = "Office lamp", **body: Any
) -> dict[str, Any]:
    """A device created through ``POST /v1.1/devices``; returns its public form."""
    response = httpx.post(
        f"{live.url}/v1.1/devices", headers=headers, json={"dtid": dtid, "name": name, **body}
    )
    assert response.status_code == 200, response.text
    device: dict[str, Any] = response.json()["data"]
    return device


def make_device_token(live: LiveServer, user: TestUser, did: str) -> str:
    """A (new) device token for ``did``, created by its owner through ``PUT /v1.1/devices/{did}/tokens``."""
    response = httpx.put(f"{live.url}/v1.1/devices/{did}/tokens", headers=user.headers)
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["accessToken"]
    return token


def make_org(live: LiveServer, members: dict[str, str]) -> str:
    """An organization with ``{uid: role}`` members, written directly (the organizations area's own
    endpoints are tested there)."""
    from sqlalchemy import insert

    from thingcloud import tables as t

    oid = uuid.uuid4().hex

    async def work(rt: Any) -> None:
        now = rt.clock.now_ms()
        async with rt.db.write() as conn:
            await conn.execute(
                insert(t.organizations).values(id=oid, name="Test org", created_on=now, modified_on=now)
            )
            for uid, role in members.items():
                await conn.execute(
                    insert(t.organization_members).values(oid=oid, uid=uid, role=role, created_on=now)
                )

    live.call(work)
    return oid


def record_bus(live: LiveServer, pattern: str) -> list[tuple[str, dict[str, Any]]]:
    """Subscribe to ``pattern`` on the server's bus; returns the list the events are appended to."""
    events: list[tuple[str, dict[str, Any]]] = []

    async def handler(subject: str, payload: dict[str, Any]) -> None:
        events.append((subject, payload))

    async def work(rt: Any) -> None:
        await rt.bus.subscribe(pattern, handler)

    live.call(work)
    return events


# --- Registry: organizations -------------------------------------------------------------------------


def make_org_app(
    live: LiveServer, owner_uid: str, oid: str, name: str = "Org App", *, password_grant: bool = False
) -> App:
    """An application belonging to organization ``oid`` (its owner must be a member); with
    ``password_grant`` its users can sign in through it (``password_token``)."""
    redirect_uri = "http://127.0.0.1:9/callback"

    async def work(rt: Any) -> Any:
        return await apps.create_application(
            rt, name, owner_uid, [redirect_uri], password_grant=password_grant, oid=oid
        )

    app, secret = live.call(work)
    return App(app.id, secret, owner_uid, redirect_uri)
