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
