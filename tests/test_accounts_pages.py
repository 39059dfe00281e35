"""The accounts server's HTML pages end to end, driven like a browser: an httpx client that keeps
cookies, reads the forms (hidden fields included) with the stdlib HTML parser and submits them.

Covers the authorization-code flow (PKCE and client secret), the implicit flow, consent and denial,
CSRF on every form, sign-up, logout, forced sign-in, the device flow's verification page, sign-in
throttling (per account, per address, behind a trusted proxy) and the security headers.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from thingcloud import tables as t
from thingcloud.areas.users import service as users
from thingcloud.auth import applications as apps

from .conftest import ADMIN_PASSWORD, LiveServer, ServerThread, start_live
from .factories import PASSWORD, App, create_account, make_app, unique_email

# --- A small browser -------------------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.links: list[str] = []
        self._form: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = Form(a.get("action", ""), a.get("method", "get").lower())
            self.forms.append(self._form)
        elif tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif self._form is not None and tag == "input" and a.get("name"):
            self._form.fields[a["name"]] = a.get("value", "")
        elif self._form is not None and tag == "button" and a.get("name"):
            self._form.buttons.append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def parse(page: httpx.Response) -> PageParser:
    parser = PageParser()
    parser.feed(page.text)
    return parser


def only_form(page: httpx.Response) -> Form:
    forms = parse(page).forms
    assert len(forms) == 1, page.text
    return forms[0]


class Browser:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.http.get(path, params=params)

    def submit(self, page: httpx.Response, button: str | None = None, **fields: str) -> httpx.Response:
        form = only_form(page)
        assert form.method == "post"
        data = {**form.fields, **fields}
        if button is not None:
            name = next(n for n, v in form.buttons if v == button)
            data[name] = button
        return self.http.post(urljoin(str(page.url), form.action), data=data)

    def follow(self, response: httpx.Response) -> httpx.Response:
        """Follow the pages' own 303s (sign-in → consent), as a browser would."""
        while response.status_code == 303:
            response = self.http.get(urljoin(str(response.url), response.headers["location"]))
        return response

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture()
def browser(live: LiveServer) -> Iterator[Browser]:
    b = Browser(live.url)
    yield b
    b.close()


# --- Helpers ---------------------------------------------------------------------------------------


@dataclass
class Account:
    id: str
    email: str
    app: App


def account(live: LiveServer, **app_kw: Any) -> Account:
    user = create_account(live)
    return Account(user.id, user.email, make_app(live, user.id, password_grant=False, **app_kw))


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def is_signin(page: httpx.Response) -> bool:
    return page.status_code in (200, 400, 401) and "password" in only_form(page).fields


def is_consent(page: httpx.Response) -> bool:
    return page.status_code == 200 and {v for _, v in only_form(page).buttons} == {"grant", "deny"}


def sign_in(browser: Browser, page: httpx.Response, email: str, password: str = PASSWORD) -> httpx.Response:
    assert is_signin(page), page.text
    response = browser.submit(page, email=email, password=password)
    assert response.status_code == 303, response.text
    return browser.follow(response)


def authorize(browser: Browser, acct: Account, decision: str = "grant", **params: str) -> httpx.Response:
    """Through sign-in and consent; returns the final redirect to the application."""
    query = {"client_id": acct.app.client_id, "response_type": "code", **params}
    consent = sign_in(browser, browser.get("/authorize", **query), acct.email)
    assert is_consent(consent), consent.text
    response = browser.submit(consent, button=decision)
    assert response.status_code == 302, response.text
    return response


def redirected(response: httpx.Response, base: str) -> tuple[dict[str, str], dict[str, str]]:
    """(query, fragment) parameters of a redirect to ``base``."""
    location = response.headers["location"]
    assert location.split("?")[0].split("#")[0] == base, location
    parts = urlsplit(location)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    fragment = {k: v[0] for k, v in parse_qs(parts.fragment).items()}
    return query, fragment


def exchange(live: LiveServer, auth: tuple[str, str] | None = None, **form: str) -> httpx.Response:
    return httpx.post(f"{live.url}/token", data={"grant_type": "authorization_code", **form}, auth=auth)


def self_id(live: LiveServer, token: str) -> str:
    response = httpx.get(f"{live.url}/v1.1/users/self", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    uid: str = response.json()["data"]["id"]
    return uid


def count(live: LiveServer, table: Any, *where: Any) -> int:
    async def work(rt: Any) -> int:
        async with rt.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())

    return live.call(work)


def assert_secure_headers(response: httpx.Response) -> None:
    assert response.headers["x-frame-options"] == "DENY"
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"


# --- Authorization code and implicit flows ---------------------------------------------------------


def test_code_flow_with_pkce(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    verifier, challenge = pkce_pair()
    state = 'st"<b>&x'
    params = {
        "client_id": acct.app.client_id,
        "response_type": "code",
        "redirect_uri": acct.app.redirect_uri,
        "state": state,
        "scope": "read,write",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    page = browser.get("/authorize", **params)
    assert is_signin(page)
    assert "<b>" not in page.text  # escaped, yet carried unchanged in the hidden fields
    hidden = only_form(page).fields
    assert {k: hidden[k] for k in params} == params
    consent = sign_in(browser, page, acct.email)
    assert is_consent(consent)
    assert "Test App" in consent.text and acct.email in consent.text
    assert {k: only_form(consent).fields[k] for k in params} == params
    response = browser.submit(consent, button="grant")
    assert response.status_code == 302
    query, fragment = redirected(response, acct.app.redirect_uri)
    assert set(query) == {"code", "state"} and fragment == {}
    assert query["state"] == state
    assert len(query["code"]) == 32

    token = exchange(
        live,
        code=query["code"],
        client_id=acct.app.client_id,
        code_verifier=verifier,
        redirect_uri=acct.app.redirect_uri,
    )
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600 and body["scope"] == "read,write"
    assert len(body["refresh_token"]) == 32
    assert self_id(live, body["access_token"]) == acct.id

    # The same code again: consumed.
    reused = exchange(
        live,
        code=query["code"],
        client_id=acct.app.client_id,
        code_verifier=verifier,
        redirect_uri=acct.app.redirect_uri,
    )
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"


def test_code_flow_with_client_secret(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    # No redirect_uri: the registered one is used, and none is needed at /token.
    response = authorize(browser, acct, state="s1")
    query, _ = redirected(response, acct.app.redirect_uri)
    assert query["state"] == "s1"
    secretless = exchange(live, code=query["code"], client_id=acct.app.client_id)
    assert secretless.status_code == 401 and secretless.json()["error"] == "invalid_client"

    # That failed attempt consumed the code; a new one, exchanged with the secret.
    second = browser.get("/authorize", client_id=acct.app.client_id, response_type="code")
    assert is_consent(second)  # the session is remembered
    code = redirected(browser.submit(second, button="grant"), acct.app.redirect_uri)[0]["code"]
    wrong = exchange(live, auth=(acct.app.client_id, "0" * 32), code=code)
    assert wrong.status_code == 401
    code = redirected(browser.submit(second, button="grant"), acct.app.redirect_uri)[0]["code"]
    good = exchange(live, auth=(acct.app.client_id, acct.app.client_secret), code=code)
    assert good.status_code == 200, good.text
    assert self_id(live, good.json()["access_token"]) == acct.id


def test_wrong_verifier_and_expired_code(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    verifier, challenge = pkce_pair()
    pkce = {"code_challenge": challenge, "code_challenge_method": "S256"}
    code = redirected(authorize(browser, acct, **pkce), acct.app.redirect_uri)[0]["code"]
    bad = exchange(live, code=code, client_id=acct.app.client_id, code_verifier=verifier + "x")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    # A failed attempt burns the code: the right verifier no longer helps.
    again = exchange(live, code=code, client_id=acct.app.client_id, code_verifier=verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"

    consent = browser.get("/authorize", client_id=acct.app.client_id, response_type="code", **pkce)
    code = redirected(browser.submit(consent, button="grant"), acct.app.redirect_uri)[0]["code"]
    live.clock.advance(61)
    expired = exchange(live, code=code, client_id=acct.app.client_id, code_verifier=verifier)
    assert expired.status_code == 400 and expired.json()["error"] == "invalid_grant"


def test_implicit_flow_returns_the_token_in_the_fragment(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    response = authorize(browser, acct, response_type="token", state="imp", redirect_uri=acct.app.redirect_uri)
    query, fragment = redirected(response, acct.app.redirect_uri)
    assert query == {}
    assert fragment["token_type"] == "bearer"
    assert fragment["expires_in"] == "3600"
    assert fragment["state"] == "imp"
    assert len(fragment["refresh_token"]) == 32
    assert self_id(live, fragment["access_token"]) == acct.id


def test_deny_returns_access_denied(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    query, fragment = redirected(authorize(browser, acct, "deny", state="no"), acct.app.redirect_uri)
    assert query["error"] == "access_denied" and query["state"] == "no" and "code" not in query
    consent = browser.get("/authorize", client_id=acct.app.client_id, response_type="token", state="n2")
    query, fragment = redirected(browser.submit(consent, button="deny"), acct.app.redirect_uri)
    assert query == {}
    assert fragment["error"] == "access_denied" and fragment["state"] == "n2"
    assert "access_token" not in fragment
    assert count(live, t.authorization_codes, t.authorization_codes.c.aid == acct.app.client_id) == 0


def test_unregistered_redirect_uri_is_never_redirected_to(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    for params in (
        {"redirect_uri": "http://evil.example/callback"},
        {"redirect_uri": acct.app.redirect_uri + "/x"},
        {"redirect_uri": acct.app.redirect_uri, "client_id": "0" * 32},
        {"redirect_uri": acct.app.redirect_uri, "client_id": ""},
    ):
        query = {"client_id": acct.app.client_id, "response_type": "code", "state": "s", **params}
        for path in ("/authorize", "/signin"):
            response = browser.get(path, **query)
            assert response.status_code == 400, response.text
            assert "location" not in response.headers
            assert response.headers["content-type"].startswith("text/html")
            assert_secure_headers(response)
    assert "Invalid parameter: redirect_uri" in browser.get(
        "/authorize", client_id=acct.app.client_id, response_type="code", redirect_uri="http://x.example/"
    ).text


def test_other_request_errors_redirect_with_error(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    base = {"client_id": acct.app.client_id, "redirect_uri": acct.app.redirect_uri, "state": "e"}
    cases = [
        ({"response_type": "id_token"}, "unsupported_response_type", False),
        ({}, "invalid_request", False),
        ({"response_type": "code", "code_challenge": "a" * 43, "code_challenge_method": "plain"}, "invalid_request", False),
        ({"response_type": "code", "code_challenge": "a" * 43}, "invalid_request", False),
        ({"response_type": "code", "code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request", False),
        ({"response_type": "token", "code_challenge": "a" * 43, "code_challenge_method": "S1"}, "invalid_request", True),
    ]
    for extra, error, in_fragment in cases:
        response = browser.get("/authorize", **base, **extra)
        assert response.status_code == 302, (extra, response.text)
        query, fragment = redirected(response, acct.app.redirect_uri)
        got = fragment if in_fragment else query
        assert got["error"] == error and got["state"] == "e", (extra, got)
        assert_secure_headers(response)


