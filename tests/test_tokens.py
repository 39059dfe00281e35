"""The accounts server's token endpoints over HTTP: ``POST /token`` for every grant, ``/tokenInfo``,
``/checkToken``, ``/revokeToken`` and ``/device/code`` (REFERENCE.md §1.2–1.4, §3.22).

Client authentication is exercised both ways the contract allows (HTTP Basic and form fields); token
expiry moves the server's clock; cache invalidation is checked on the server's own token cache.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest

from thingcloud.auth import applications as apps
from thingcloud.auth import oauth
from thingcloud.ids import token_digest
from thingcloud.runtime import Runtime

from .conftest import LiveServer
from .factories import PASSWORD, App, create_account, make_app, make_user, password_token

HEX32 = re.compile(r"^[0-9a-f]{32}$")
USER_TOKEN_KEYS = {"access_token", "token_type", "expires_in", "scope", "refresh_token"}
APP_TOKEN_KEYS = {"access_token", "token_type", "expires_in", "scope"}
UNAUTHORIZED = "Please provide a valid authorization header"


def post_token(
    client: httpx.Client,
    app: App | None,
    how: str,
    form: dict[str, str],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """``POST /token`` with the client authenticated by ``how``: basic, form, or public (id only)."""
    data = dict(form)
    auth = None
    if app is not None:
        if how == "basic":
            auth = (app.client_id, app.client_secret)
        elif how == "form":
            data.update(client_id=app.client_id, client_secret=app.client_secret)
        else:
            data["client_id"] = app.client_id
    return client.post("/token", data=data, auth=auth, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert set(body) <= {"error", "error_description"}
    assert response.headers["cache-control"] == "no-store"


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == 401
    assert error["message"] == UNAUTHORIZED


def is_cached(live: LiveServer, token: str) -> bool:
    async def work(rt: Runtime) -> bool:
        return rt.token_cache.get(token_digest(token)) is not None

    return live.call(work)


def token_rows(live: LiveServer) -> list[dict[str, Any]]:
    async def work(rt: Runtime) -> list[dict[str, Any]]:
        from sqlalchemy import select

        from thingcloud import tables as t

        async with rt.db.read() as conn:
            return [dict(r) for r in (await conn.execute(select(t.tokens))).mappings()]

    return live.call(work)


# --- client_credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["basic", "form"])
def test_client_credentials_issues_an_application_token(
    live: LiveServer, client: httpx.Client, how: str
) -> None:
    owner = create_account(live)
    app = make_app(live, owner.id, password_grant=False)
    response = post_token(client, app, how, {"grant_type": "client_credentials"})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == APP_TOKEN_KEYS
    assert HEX32.match(body["access_token"])
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read,write"
    info = client.get("/tokenInfo", headers=bearer(body["access_token"]))
    assert info.status_code == 200
    data = info.json()["data"]
    assert set(data) == {"client_id", "expires_in"}
    assert data["client_id"] == app.client_id
    assert 3599 <= data["expires_in"] <= 3600


def test_client_credentials_scope_is_narrowed(live: LiveServer, client: httpx.Client) -> None:
    owner = create_account(live)
    app = make_app(live, owner.id)
    response = post_token(client, app, "basic", {"grant_type": "client_credentials", "scope": "read"})
    assert response.json()["scope"] == "read"


@pytest.mark.parametrize("how", ["basic", "form"])
def test_bad_client_secret_is_401_invalid_client(live: LiveServer, client: httpx.Client, how: str) -> None:
    owner = create_account(live)
    app = make_app(live, owner.id)
    wrong = App(app.client_id, "0" * 32, app.owner_uid, app.redirect_uri)
    for grant in ("client_credentials", "password", "refresh_token"):
        response = post_token(
            client,
            wrong,
            how,
            {"grant_type": grant, "username": owner.email, "password": PASSWORD, "refresh_token": "0" * 32},
        )
        assert_oauth_error(response, 401, "invalid_client")
        assert response.headers["www-authenticate"] == 'Basic realm="thingcloud"'
    unknown = App("f" * 32, app.client_secret, app.owner_uid, app.redirect_uri)
    response = post_token(client, unknown, how, {"grant_type": "client_credentials"})
    assert_oauth_error(response, 401, "invalid_client")


def test_client_credentials_needs_a_secret(live: LiveServer, client: httpx.Client) -> None:
    owner = create_account(live)
    app = make_app(live, owner.id)
    response = post_token(client, app, "public", {"grant_type": "client_credentials"})
    assert_oauth_error(response, 401, "invalid_client")
    assert_oauth_error(
        client.post("/token", data={"grant_type": "client_credentials"}), 401, "invalid_client"
    )


def test_malformed_basic_header_is_401(live: LiveServer, client: httpx.Client) -> None:
    owner = create_account(live)
    app = make_app(live, owner.id)
    no_colon = base64.b64encode(app.client_id.encode()).decode()
    for header in (
        "Basic !!!not-base64!!!",
        f"Basic {no_colon}",
        "Basic",
        "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
    ):
        response = client.post(
            "/token", data={"grant_type": "client_credentials"}, headers={"Authorization": header}
        )
        assert_oauth_error(response, 401, "invalid_client")
        assert response.headers["www-authenticate"] == 'Basic realm="thingcloud"'


def test_grant_type_missing_or_unknown(live: LiveServer, client: httpx.Client) -> None:
    owner = create_account(live)
    app = make_app(live, owner.id)
    assert_oauth_error(post_token(client, app, "basic", {}), 400, "invalid_request")
    assert_oauth_error(post_token(client, app, "basic", {"grant_type": ""}), 400, "invalid_request")
    response = post_token(client, app, "basic", {"grant_type": "telepathy"})
    assert_oauth_error(response, 400, "unsupported_grant_type")
    # A JSON body is not a form: nothing to read a grant type from.
    response = client.post(
        "/token", json={"grant_type": "client_credentials"}, auth=(app.client_id, app.client_secret)
    )
    assert_oauth_error(response, 400, "invalid_request")


def test_token_alias_on_the_api_host(live: LiveServer, client: httpx.Client) -> None:
    owner = create_account(live)
    app = make_app(live, owner.id)
    response = client.post(
        "/v1.1/accounts/token",
        data={"grant_type": "client_credentials"},
        auth=(app.client_id, app.client_secret),
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert set(response.json()) == APP_TOKEN_KEYS


# --- password --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["basic", "form"])
def test_password_grant_issues_a_user_token(live: LiveServer, client: httpx.Client, how: str) -> None:
    account = create_account(live)
    app = make_app(live, account.id, password_grant=True)
    form = {"grant_type": "password", "username": account.email.upper(), "password": PASSWORD}
    response = post_token(client, app, how, form)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == USER_TOKEN_KEYS
    assert HEX32.match(body["access_token"]) and HEX32.match(body["refresh_token"])
    assert body["access_token"] != body["refresh_token"]
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("bearer", 3600, "read,write")
    me = client.get("/v1.1/users/self", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["data"]["id"] == account.id
    info = client.get("/tokenInfo", headers=bearer(body["access_token"])).json()["data"]
    assert set(info) == {"client_id", "user_id", "expires_in"}
    assert (info["client_id"], info["user_id"]) == (app.client_id, account.id)


def test_password_grant_only_for_applications_allowed_to(live: LiveServer, client: httpx.Client) -> None:
    account = create_account(live)
    app = make_app(live, account.id, password_grant=False)
    form = {"grant_type": "password", "username": account.email, "password": PASSWORD}
    for how in ("basic", "form", "public"):
        assert_oauth_error(post_token(client, app, how, form), 400, "unauthorized_client")


def test_password_grant_bad_credentials(live: LiveServer, client: httpx.Client) -> None:
    account = create_account(live)
    app = make_app(live, account.id)
    wrong = {"grant_type": "password", "username": account.email, "password": "not-the-password"}
    assert_oauth_error(post_token(client, app, "basic", wrong), 400, "invalid_grant")
    unknown = {"grant_type": "password", "username": "nobody-" + account.email, "password": PASSWORD}
    assert_oauth_error(post_token(client, app, "basic", unknown), 400, "invalid_grant")
    missing = {"grant_type": "password", "username": account.email}
    assert_oauth_error(post_token(client, app, "basic", missing), 400, "invalid_request")
    # No token was issued by any of these.
    assert [r for r in token_rows(live) if r["uid"] == account.id] == []


# --- refresh_token ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["basic", "form"])
def test_refresh_rotates_the_pair_and_kills_the_old_one_at_once(
    live: LiveServer, client: httpx.Client, how: str
) -> None:
    user = make_user(live)
    assert client.get("/v1.1/users/self", headers=user.headers).status_code == 200
    assert is_cached(live, user.token)
    response = post_token(
        client, user.app, how, {"grant_type": "refresh_token", "refresh_token": user.refresh_token}
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == USER_TOKEN_KEYS
    assert body["access_token"] not in (user.token, user.refresh_token)
    assert body["refresh_token"] not in (user.token, user.refresh_token)
    assert (body["expires_in"], body["scope"]) == (3600, "read,write")
    # The old access token was cached: the refresh dropped it from the cache, not 30 s later.
    assert not is_cached(live, user.token)
    assert_unauthorized(client.get("/v1.1/users/self", headers=user.headers))
    again = post_token(
        client, user.app, how, {"grant_type": "refresh_token", "refresh_token": user.refresh_token}
    )
    assert_oauth_error(again, 400, "invalid_grant")
    me = client.get("/v1.1/users/self", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.json()["data"]["id"] == user.id
    second = post_token(
        client, user.app, how, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    )
    assert second.status_code == 200
    assert_unauthorized(client.get("/v1.1/users/self", headers=bearer(body["access_token"])))


def test_refresh_with_another_client_is_invalid_grant(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    other = make_app(live, user.id)
    form = {"grant_type": "refresh_token", "refresh_token": user.refresh_token}
    assert_oauth_error(post_token(client, other, "basic", form), 400, "invalid_grant")
    # The failed attempt did not burn the token for its own client, nor kill the access token.
    assert client.get("/v1.1/users/self", headers=user.headers).status_code == 200
    assert post_token(client, user.app, "basic", form).status_code == 200


def test_refresh_bad_input(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    assert_oauth_error(
        post_token(client, user.app, "basic", {"grant_type": "refresh_token"}), 400, "invalid_request"
    )
    garbage = {"grant_type": "refresh_token", "refresh_token": "0" * 32}
    assert_oauth_error(post_token(client, user.app, "basic", garbage), 400, "invalid_grant")
    # An access token is not a refresh token.
    swapped = {"grant_type": "refresh_token", "refresh_token": user.token}
    assert_oauth_error(post_token(client, user.app, "basic", swapped), 400, "invalid_grant")
    # No client authentication at all.
    form = {"grant_type": "refresh_token", "refresh_token": user.refresh_token}
    assert_oauth_error(post_token(client, user.app, "public", form), 401, "invalid_client")
    assert client.get("/v1.1/users/self", headers=user.headers).status_code == 200


def test_application_tokens_cannot_be_refreshed(live: LiveServer, client: httpx.Client) -> None:
    owner = create_account(live)
    app = make_app(live, owner.id)
    token = post_token(client, app, "basic", {"grant_type": "client_credentials"}).json()["access_token"]
    form = {"grant_type": "refresh_token", "refresh_token": token}
    assert_oauth_error(post_token(client, app, "basic", form), 400, "invalid_grant")


def test_tokens_expire_and_refresh_after_expiry(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    owner_app_token = post_token(client, user.app, "basic", {"grant_type": "client_credentials"}).json()
    assert client.get("/v1.1/users/self", headers=user.headers).status_code == 200
    live.clock.advance(3601)
    assert_unauthorized(client.get("/v1.1/users/self", headers=user.headers))
    assert_unauthorized(client.get("/tokenInfo", headers=user.headers))
    assert_unauthorized(client.get("/tokenInfo", headers=bearer(owner_app_token["access_token"])))
    form = {"grant_type": "refresh_token", "refresh_token": user.refresh_token}
    response = post_token(client, user.app, "basic", form)
    assert response.status_code == 200, response.text
    fresh = response.json()["access_token"]
    assert client.get("/v1.1/users/self", headers=bearer(fresh)).status_code == 200
    # Refresh tokens last 14 days past the access token's expiry, not longer.
    live.clock.advance(15 * 86400)
    late = {"grant_type": "refresh_token", "refresh_token": response.json()["refresh_token"]}
    assert_oauth_error(post_token(client, user.app, "basic", late), 400, "invalid_grant")


# --- authorization_code (codes minted through the service; the pages are tested elsewhere) ---------


def mint_code(live: LiveServer, app: App, uid: str, challenge: str | None = None, given: bool = True) -> str:
    async def work(rt: Runtime) -> str:
        application = await apps.get_application(rt, app.client_id)
        return await oauth.create_authorization_code(
            rt, application, uid, app.redirect_uri, given, "read,write", challenge
        )

    return live.call(work)


@pytest.mark.parametrize("how", ["basic", "form"])
def test_authorization_code_grant(live: LiveServer, client: httpx.Client, how: str) -> None:
    account = create_account(live)
    app = make_app(live, account.id, password_grant=False)
    code = mint_code(live, app, account.id)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": app.redirect_uri}
    response = post_token(client, app, how, form)
    assert response.status_code == 200, response.text
    assert set(response.json()) == USER_TOKEN_KEYS
    me = client.get("/v1.1/users/self", headers=bearer(response.json()["access_token"]))
    assert me.json()["data"]["id"] == account.id
    # Single use.
    assert_oauth_error(post_token(client, app, how, form), 400, "invalid_grant")


def test_authorization_code_with_pkce_and_bad_input(live: LiveServer, client: httpx.Client) -> None:
    account = create_account(live)
    app = make_app(live, account.id, password_grant=False)
    verifier = "v" * 50
    code = mint_code(live, app, account.id, challenge=oauth.pkce_s256(verifier))
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": app.redirect_uri}
    assert_oauth_error(
        post_token(client, app, "public", {**form, "code_verifier": "w" * 50}), 400, "invalid_grant"
    )
    # The failed attempt consumed the code.
    assert_oauth_error(
        post_token(client, app, "public", {**form, "code_verifier": verifier}), 400, "invalid_grant"
    )
    code = mint_code(live, app, account.id, challenge=oauth.pkce_s256(verifier))
    ok = post_token(client, app, "public", {**form, "code": code, "code_verifier": verifier})
    assert ok.status_code == 200, ok.text
    # A public client without PKCE cannot redeem a code.
    code = mint_code(live, app, account.id)
    assert_oauth_error(post_token(client, app, "public", {**form, "code": code}), 401, "invalid_client")
    # redirect_uri must match the one of the authorization request.
    code = mint_code(live, app, account.id)
    other_uri = {**form, "code": code, "redirect_uri": "http://127.0.0.1:9/elsewhere"}
    assert_oauth_error(post_token(client, app, "basic", other_uri), 400, "invalid_grant")
    # Codes live 60 s.
    code = mint_code(live, app, account.id)
    live.clock.advance(61)
    assert_oauth_error(post_token(client, app, "basic", {**form, "code": code}), 400, "invalid_grant")
    # Another application's code.
    other = make_app(live, account.id)
    code = mint_code(live, app, account.id)
    assert_oauth_error(post_token(client, other, "basic", {**form, "code": code}), 400, "invalid_grant")
    assert_oauth_error(
        post_token(client, app, "basic", {"grant_type": "authorization_code"}), 400, "invalid_request"
    )


# --- device_code -----------------------------------------------------------------------------------


def start_device_flow(client: httpx.Client, app: App) -> dict[str, Any]:
    response = client.post("/device/code", data={"client_id": app.client_id})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def decide(live: LiveServer, user_code: str, uid: str, approve: bool) -> bool:
    async def work(rt: Runtime) -> bool:
        return await oauth.decide_device_code(rt, user_code, uid, approve)

    return live.call(work)


@pytest.mark.parametrize("how", ["basic", "form", "public"])
def test_device_flow_approved(live: LiveServer, client: httpx.Client, how: str) -> None:
    account = create_account(live)
    app = make_app(live, account.id, password_grant=False)
    started = start_device_flow(client, app)
    assert set(started) == {"device_code", "user_code", "verification_url", "expires_in", "interval"}
    assert HEX32.match(started["device_code"])
    assert re.match(r"^[BCDFGHJKLMNPQRSTVWXZ]{8}$", started["user_code"])
    assert started["verification_url"] == f"{live.url}/device"
    assert (started["expires_in"], started["interval"]) == (1800, 5)
    poll = {"grant_type": "device_code", "code": started["device_code"]}
    assert_oauth_error(post_token(client, app, how, poll), 400, "authorization_pending")
    assert_oauth_error(post_token(client, app, how, poll), 400, "slow_down")
    live.clock.advance(6)
    assert_oauth_error(post_token(client, app, how, poll), 400, "authorization_pending")
    # What a person types: lower case, a dash in the middle.
    typed = started["user_code"][:4].lower() + "-" + started["user_code"][4:].lower()
    assert decide(live, typed, account.id, approve=True) is True
    assert decide(live, typed, account.id, approve=False) is False  # already decided
    response = post_token(client, app, how, poll)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == USER_TOKEN_KEYS
    info = client.get("/tokenInfo", headers=bearer(body["access_token"])).json()["data"]
    assert (info["client_id"], info["user_id"]) == (app.client_id, account.id)
    # A device code yields one token only.
    assert_oauth_error(post_token(client, app, how, poll), 400, "invalid_grant")


def test_device_flow_denied_expired_and_foreign(live: LiveServer, client: httpx.Client) -> None:
    account = create_account(live)
    app = make_app(live, account.id)
    denied = start_device_flow(client, app)
    assert decide(live, denied["user_code"], account.id, approve=False) is True
    poll = {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": denied["device_code"],
    }
    assert_oauth_error(post_token(client, app, "public", poll), 400, "access_denied")
    assert_oauth_error(post_token(client, app, "public", poll), 400, "invalid_grant")

    foreign = start_device_flow(client, app)
    other = make_app(live, account.id)
    poll = {"grant_type": "device_code", "code": foreign["device_code"]}
    assert_oauth_error(post_token(client, other, "public", poll), 400, "invalid_grant")

    expired = start_device_flow(client, app)
    live.clock.advance(1801)
    assert decide(live, expired["user_code"], account.id, approve=True) is False
    poll = {"grant_type": "device_code", "code": expired["device_code"]}
    assert_oauth_error(post_token(client, app, "public", poll), 400, "expired_token")

    assert_oauth_error(
        post_token(client, app, "public", {"grant_type": "device_code"}), 400, "invalid_request"
    )
    assert_oauth_error(client.post("/device/code", data={}), 400, "invalid_request")
    assert_oauth_error(client.post("/device/code", data={"client_id": "f" * 32}), 401, "invalid_client")


# --- tokenInfo, checkToken, revokeToken ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tokenInfo", "/v1.1/accounts/tokenInfo"])
def test_token_info_bodies(live: LiveServer, client: httpx.Client, path: str) -> None:
    user = make_user(live)
    response = client.get(path, headers={"Authorization": f"bearer {user.token}"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"data"}
    assert set(body["data"]) == {"client_id", "user_id", "expires_in"}
    assert body["data"]["client_id"] == user.app.client_id
    assert body["data"]["user_id"] == user.id
    assert 3599 <= body["data"]["expires_in"] <= 3600
    live.clock.advance(1000)
    later = client.get(path, headers=user.headers).json()["data"]["expires_in"]
    assert 2599 <= later <= 2600
    assert_unauthorized(client.get(path))
    assert_unauthorized(client.get(path, headers=bearer("0" * 32)))
    assert_unauthorized(client.get(path, headers=bearer("not-a-token")))


@pytest.mark.parametrize("path", ["/checkToken", "/v1.1/accounts/checkToken"])
def test_check_token(live: LiveServer, client: httpx.Client, path: str) -> None:
    user = make_user(live)
    valid = client.post(path, json={"token": user.token})
    assert valid.status_code == 200
    assert valid.json() == {"data": {"message": "Valid token"}}
    assert_unauthorized(client.post(path, json={"token": "0" * 32}))
    assert_unauthorized(client.post(path, json={"token": "garbage"}))
    assert_unauthorized(client.post(path, json={"token": None}))
    assert_unauthorized(client.post(path, json={}))
    assert_unauthorized(client.post(path))
    malformed = client.post(path, content=b"{nope", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == 4001
    # Refresh tokens are not access tokens.
    assert_unauthorized(client.post(path, json={"token": user.refresh_token}))


def test_revoke_token(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    second = password_token(live, user.app, user.email)["access_token"]
    assert client.get("/v1.1/users/self", headers=user.headers).status_code == 200
    assert is_cached(live, user.token)
    response = client.put("/revokeToken", headers=user.headers)
    assert response.status_code == 200
    assert response.json() == {"data": {"message": "Token successfully revoked"}}
    assert not is_cached(live, user.token)
    assert_unauthorized(client.get("/v1.1/users/self", headers=user.headers))
    assert_unauthorized(client.put("/revokeToken", headers=user.headers))
    form = {"grant_type": "refresh_token", "refresh_token": user.refresh_token}
    assert_oauth_error(post_token(client, user.app, "basic", form), 400, "invalid_grant")
    # Only that token: the user's other session goes on.
    assert client.get("/v1.1/users/self", headers=bearer(second)).status_code == 200
    assert_unauthorized(client.put("/revokeToken"))


def test_revoke_application_token(live: LiveServer, client: httpx.Client) -> None:
    owner = create_account(live)
    app = make_app(live, owner.id)
    token = post_token(client, app, "basic", {"grant_type": "client_credentials"}).json()["access_token"]
    assert client.get("/tokenInfo", headers=bearer(token)).status_code == 200
    assert client.put("/revokeToken", headers=bearer(token)).status_code == 200
    assert_unauthorized(client.get("/tokenInfo", headers=bearer(token)))


def test_only_digests_are_stored(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    app_tok = post_token(client, user.app, "basic", {"grant_type": "client_credentials"}).json()[
        "access_token"
    ]
    started = start_device_flow(client, user.app)
    rows = token_rows(live)
    dump = repr(rows)
    for secret in (user.token, user.refresh_token, app_tok):
        assert HEX32.match(secret)
        assert secret not in dump
    mine = [r for r in rows if r["access_hash"] == token_digest(user.token)]
    assert len(mine) == 1
    assert mine[0]["refresh_hash"] == token_digest(user.refresh_token)
    assert (mine[0]["kind"], mine[0]["uid"], mine[0]["aid"]) == ("user", user.id, user.app.client_id)
    assert [r["kind"] for r in rows if r["access_hash"] == token_digest(app_tok)] == ["app"]

    async def device_codes(rt: Runtime) -> str:
        from sqlalchemy import select

        from thingcloud import tables as t

        async with rt.db.read() as conn:
            return repr([dict(r) for r in (await conn.execute(select(t.device_codes))).mappings()])

    codes = live.call(device_codes)
    assert started["device_code"] not in codes
    assert token_digest(started["device_code"]) in codes
