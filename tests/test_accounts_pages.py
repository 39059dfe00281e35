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

from .conftest import LiveServer, start_live
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

    def submit(
        self,
        page: httpx.Response,
        button: str | None = None,
        headers: dict[str, str] | None = None,
        **fields: str,
    ) -> httpx.Response:
        form = only_form(page)
        assert form.method == "post"
        data = {**form.fields, **fields}
        if button is not None:
            name = next(n for n, v in form.buttons if v == button)
            data[name] = button
        return self.post(page, data, headers)

    def post(
        self, page: httpx.Response, data: dict[str, str], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """Post ``data`` to the page's form action (forged data included)."""
        return self.http.post(urljoin(str(page.url), only_form(page).action), data=data, headers=headers)

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
            return int(
                (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one()
            )

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
    response = authorize(
        browser, acct, response_type="token", state="imp", redirect_uri=acct.app.redirect_uri
    )
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
    assert (
        "Invalid parameter: redirect_uri"
        in browser.get(
            "/authorize", client_id=acct.app.client_id, response_type="code", redirect_uri="http://x.example/"
        ).text
    )


def test_other_request_errors_redirect_with_error(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    base = {"client_id": acct.app.client_id, "redirect_uri": acct.app.redirect_uri, "state": "e"}
    cases = [
        ({"response_type": "id_token"}, "unsupported_response_type", False),
        ({}, "invalid_request", False),
        (
            {"response_type": "code", "code_challenge": "a" * 43, "code_challenge_method": "plain"},
            "invalid_request",
            False,
        ),
        ({"response_type": "code", "code_challenge": "a" * 43}, "invalid_request", False),
        (
            {"response_type": "code", "code_challenge": "short", "code_challenge_method": "S256"},
            "invalid_request",
            False,
        ),
        (
            {"response_type": "token", "code_challenge": "a" * 43, "code_challenge_method": "S1"},
            "invalid_request",
            True,
        ),
    ]
    for extra, error, in_fragment in cases:
        response = browser.get("/authorize", **base, **extra)
        assert response.status_code == 302, (extra, response.text)
        query, fragment = redirected(response, acct.app.redirect_uri)
        got = fragment if in_fragment else query
        assert got["error"] == error and got["state"] == "e", (extra, got)
        assert_secure_headers(response)


# --- CSRF ------------------------------------------------------------------------------------------


def forgeries(live: LiveServer, page: httpx.Response, **fields: str) -> list[dict[str, str]]:
    """The page's form data with no token, a made-up token, and another browser's valid token."""
    data = {**only_form(page).fields, **fields}
    with Browser(live.url) as other:
        foreign = only_form(other.get("/device")).fields["csrf_token"]
    assert foreign != data["csrf_token"]
    without = {k: v for k, v in data.items() if k != "csrf_token"}
    return [without, {**data, "csrf_token": "0" * 64}, {**data, "csrf_token": foreign}]


def assert_refused(browser: Browser, page: httpx.Response, data: dict[str, str]) -> None:
    response = browser.post(page, data)
    assert response.status_code == 403, response.text
    assert "location" not in response.headers
    assert "tc_session" not in response.headers.get("set-cookie", "")
    assert_secure_headers(response)


def test_signin_form_requires_csrf(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    page = browser.get("/authorize", client_id=acct.app.client_id, response_type="code")
    for data in forgeries(live, page, email=acct.email, password=PASSWORD):
        assert_refused(browser, page, data)
    assert "tc_session" not in browser.http.cookies
    assert is_consent(sign_in(browser, page, acct.email))  # the genuine form still works


def test_consent_form_requires_csrf(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    page = browser.get("/authorize", client_id=acct.app.client_id, response_type="code")
    consent = sign_in(browser, page, acct.email)
    for data in forgeries(live, consent, decision="grant"):
        assert_refused(browser, consent, data)
    # A token made for the same browser before it signed in is not valid for the session either.
    assert_refused(
        browser,
        consent,
        {
            **only_form(consent).fields,
            "csrf_token": only_form(page).fields["csrf_token"],
            "decision": "grant",
        },
    )
    assert count(live, t.authorization_codes, t.authorization_codes.c.aid == acct.app.client_id) == 0
    assert count(live, t.grants, t.grants.c.aid == acct.app.client_id) == 0
    assert browser.submit(consent, button="grant").status_code == 302
    assert count(live, t.authorization_codes, t.authorization_codes.c.aid == acct.app.client_id) == 1


def find_user(live: LiveServer, email: str) -> dict[str, Any] | None:
    async def work(rt: Any) -> dict[str, Any] | None:
        return await users.find_user_by_email(rt, email)

    return live.call(work)


def test_signup_form_requires_csrf(live: LiveServer, browser: Browser) -> None:
    email = unique_email("forged")
    page = browser.get("/signup")
    for data in forgeries(live, page, email=email, password=PASSWORD):
        assert_refused(browser, page, data)
    assert find_user(live, email) is None


# --- Sign-up ---------------------------------------------------------------------------------------


def test_signup_then_signin(live: LiveServer, browser: Browser) -> None:
    email = unique_email("Signup").upper()
    page = browser.get("/signup")
    assert page.status_code == 200
    done = browser.submit(page, email=email, password=PASSWORD, full_name="Ada <Lovelace>")
    assert done.status_code == 200, done.text
    assert "Account created" in done.text and "&lt;" not in done.text
    assert "tc_session" in browser.http.cookies
    created = find_user(live, email)
    assert created is not None
    assert created["email"] == email.lower() and created["full_name"] == "Ada <Lovelace>"

    owner = create_account(live)
    app = make_app(live, owner.id, password_grant=False)
    with Browser(live.url) as fresh:
        acct = Account(created["id"], email.lower(), app)
        code = redirected(authorize(fresh, acct), app.redirect_uri)[0]["code"]
    token = exchange(live, auth=(app.client_id, app.client_secret), code=code)
    assert token.status_code == 200
    assert self_id(live, token.json()["access_token"]) == created["id"]


def test_signup_inside_an_authorization(live: LiveServer, browser: Browser) -> None:
    owner = create_account(live)
    app = make_app(live, owner.id, password_grant=False)
    signin_page = browser.get("/authorize", client_id=app.client_id, response_type="code", state="su")
    link = next(href for href in parse(signin_page).links if href.startswith("signup?"))
    signup_page = browser.http.get(urljoin(str(signin_page.url), link))
    assert only_form(signup_page).fields["state"] == "su"
    email = unique_email("inflow")
    after = browser.submit(signup_page, email=email, password=PASSWORD)
    assert after.status_code == 303
    consent = browser.follow(after)
    assert is_consent(consent) and email in consent.text
    query, _ = redirected(browser.submit(consent, button="grant"), app.redirect_uri)
    assert query["state"] == "su" and len(query["code"]) == 32


def test_signup_refuses_bad_input(live: LiveServer, browser: Browser) -> None:
    existing = create_account(live)
    before = count(live, t.users)
    page = browser.get("/signup")
    duplicate = browser.submit(page, email=existing.email.upper(), password=PASSWORD)
    assert duplicate.status_code == 409
    assert "Email already registered." in duplicate.text
    assert only_form(duplicate).fields["email"] == existing.email.upper()
    short = browser.submit(page, email=unique_email(), password="short")
    assert short.status_code == 400 and "Password: Minimum length 8" in short.text
    bad_email = browser.submit(page, email="not-an-email", password=PASSWORD)
    assert bad_email.status_code == 400 and "Email: Invalid email" in bad_email.text
    assert count(live, t.users) == before
    assert "tc_session" not in browser.http.cookies


def test_signup_disabled_and_secure_cookies(tmp_path: Path) -> None:
    srv, thread = start_live(tmp_path, signup_enabled=False, public_url="https://accounts.example.test")
    try:
        owner = create_account(srv)
        app = make_app(srv, owner.id, password_grant=False)
        with Browser(srv.url) as b:
            assert b.get("/signup").status_code == 404
            email = unique_email("closed")
            posted = b.http.post("/signup", data={"email": email, "password": PASSWORD})
            assert posted.status_code == 404
            assert find_user(srv, email) is None
            page = b.get("/authorize", client_id=app.client_id, response_type="code")
            assert is_signin(page)
            assert not [href for href in parse(page).links if "signup" in href]
            cookie = page.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
        started = httpx.post(f"{srv.url}/device/code", data={"client_id": app.client_id})
        assert started.json()["verification_url"] == "https://accounts.example.test/device"
    finally:
        thread.stop()


# --- Sessions: logout, forced sign-in, first-party apps --------------------------------------------


def test_logout_ends_the_session(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    other = account(live, redirect_uri="http://127.0.0.1:9/logged-out")
    authorize(browser, acct)
    session = browser.http.cookies["tc_session"]
    query = {"client_id": acct.app.client_id, "response_type": "code"}

    for uri in ("http://evil.example/", "http://127.0.0.1:9/logged-out/x", "http://127.0.0.1:9/%"):
        refused = browser.get("/logout", redirect_uri=uri, state="x")
        assert refused.status_code == 400 and "location" not in refused.headers
        assert_secure_headers(refused)
    assert is_consent(browser.get("/authorize", **query))  # still signed in

    # Any application's registered URI will do.
    out = browser.get("/logout", redirect_uri=other.app.redirect_uri, state="bye")
    assert out.status_code == 302
    assert out.headers["location"] == "http://127.0.0.1:9/logged-out?status=logout&state=bye"
    assert "tc_session" not in browser.http.cookies
    assert is_signin(browser.get("/authorize", **query))
    # The old cookie value is dead on the server too.
    with Browser(live.url) as replay:
        replay.http.cookies.set("tc_session", session)
        assert is_signin(replay.get("/authorize", **query))

    page = browser.get("/logout")
    assert page.status_code == 200 and "signed out" in page.text


def test_signin_forces_a_new_login(live: LiveServer, browser: Browser) -> None:
    first, second = account(live), account(live)
    authorize(browser, first)
    old = browser.http.cookies["tc_session"]
    query = {"client_id": first.app.client_id, "response_type": "code", "state": "again"}
    assert is_consent(browser.get("/authorize", **query))
    page = browser.get("/signin", **query)
    assert is_signin(page)
    consent = sign_in(browser, page, second.email)
    assert is_consent(consent) and second.email in consent.text
    query_back, _ = redirected(browser.submit(consent, button="grant"), first.app.redirect_uri)
    assert query_back["state"] == "again"
    token = exchange(live, auth=(first.app.client_id, first.app.client_secret), code=query_back["code"])
    assert self_id(live, token.json()["access_token"]) == second.id
    assert browser.http.cookies["tc_session"] != old  # a new session, the old one ended
    with Browser(live.url) as replay:
        replay.http.cookies.set("tc_session", old)
        assert is_signin(replay.get("/authorize", **query))


def test_wrong_password_shows_the_form_again(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    page = browser.get("/authorize", client_id=acct.app.client_id, response_type="code", state="w")
    wrong = browser.submit(page, email=acct.email, password="not-the-password")
    assert wrong.status_code == 401 and "Wrong email or password." in wrong.text
    assert only_form(wrong).fields["state"] == "w"
    assert only_form(wrong).fields["email"] == acct.email
    assert "tc_session" not in browser.http.cookies
    assert is_consent(sign_in(browser, wrong, acct.email))


def test_first_party_app_skips_consent_and_lands_on_the_console_page(
    live: LiveServer, browser: Browser
) -> None:
    user = create_account(live)
    callback = f"{live.url}/oauth/callback"

    async def work(rt: Any) -> tuple[Any, Any]:
        own, _ = await apps.create_application(rt, "First party", user.id, [callback], first_party=True)
        return own, await apps.find_console(rt)

    own, console = live.call(work)
    page = browser.get("/authorize", client_id=own.id, response_type="code", state="fp")
    after = browser.submit(page, email=user.email, password=PASSWORD)
    response = browser.http.get(urljoin(str(after.url), after.headers["location"]))
    assert response.status_code == 302  # no consent page
    query, _ = redirected(response, callback)
    assert query["state"] == "fp"
    shown = browser.http.get(response.headers["location"])
    assert shown.status_code == 200
    assert query["code"] in shown.text
    assert f"-u {console.id}:CLIENT_SECRET" in shown.text
    assert_secure_headers(shown)
    failed = browser.http.get(
        "/oauth/callback", params={"error": "access_denied", "error_description": "<no>"}
    )
    assert "access_denied: &lt;no&gt;" in failed.text


# --- Limited-input device flow ---------------------------------------------------------------------


def poll(live: LiveServer, app: App, device_code: str) -> httpx.Response:
    return httpx.post(
        f"{live.url}/token",
        data={"grant_type": "device_code", "client_id": app.client_id, "code": device_code},
    )


def test_device_flow_approval(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    started = httpx.post(f"{live.url}/device/code", data={"client_id": acct.app.client_id})
    assert started.status_code == 200
    flow = started.json()
    assert flow["verification_url"] == f"{live.url}/device"
    pending = poll(live, acct.app, flow["device_code"])
    assert pending.status_code == 400 and pending.json()["error"] == "authorization_pending"

    page = browser.get("/device")
    assert is_signin(page)
    entry = sign_in(browser, page, acct.email)
    assert entry.status_code == 200 and "user_code" in only_form(entry).fields
    typed = flow["user_code"].lower()
    confirm = browser.submit(entry, user_code=f"{typed[:4]}-{typed[4:]}")
    assert confirm.status_code == 200 and "Test App" in confirm.text and flow["user_code"] in confirm.text
    for data in forgeries(live, confirm, decision="approve"):
        assert_refused(browser, confirm, data)
    live.clock.advance(6)
    assert poll(live, acct.app, flow["device_code"]).json()["error"] == "authorization_pending"

    done = browser.submit(confirm, button="approve")
    assert done.status_code == 200 and "Device connected" in done.text
    live.clock.advance(6)
    granted = poll(live, acct.app, flow["device_code"])
    assert granted.status_code == 200, granted.text
    assert self_id(live, granted.json()["access_token"]) == acct.id
    again = browser.submit(confirm, button="approve")
    assert again.status_code == 400 and "already used" in again.text


def test_device_flow_denial_and_bad_codes(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    flow = httpx.post(f"{live.url}/device/code", data={"client_id": acct.app.client_id}).json()
    # Signing in from a link that carries the code leads straight to the confirmation.
    page = browser.get("/device", user_code=flow["user_code"])
    confirm = sign_in(browser, page, acct.email)
    assert flow["user_code"] in confirm.text
    denied = browser.submit(confirm, button="deny")
    assert denied.status_code == 200 and "denied" in denied.text
    refused = poll(live, acct.app, flow["device_code"])
    assert refused.status_code == 400 and refused.json()["error"] == "access_denied"

    unknown = browser.get("/device", user_code="ZZZZZZZZ")
    assert unknown.status_code == 400 and "not valid" in unknown.text
    too_long = browser.get("/device", user_code="B" * 500)
    assert too_long.status_code == 400


# --- Throttling and client addresses ---------------------------------------------------------------


def test_failed_signins_are_throttled(tmp_path: Path) -> None:
    srv, thread = start_live(tmp_path, login_failures_per_account=3, login_failures_per_address=6)
    try:
        acct = account(srv)
        other = account(srv)
        with Browser(srv.url) as b:
            page = b.get("/authorize", client_id=acct.app.client_id, response_type="code")
            for _ in range(3):
                page = b.submit(page, email=acct.email, password="wrong-password")
                assert page.status_code == 401
            blocked = b.submit(page, email=acct.email, password=PASSWORD)
            assert blocked.status_code == 429 and "Too many" in blocked.text
            assert_secure_headers(blocked)
            assert "tc_session" not in b.http.cookies
            # The address (3 failures of 6) may still sign in to another account.
            page = b.get("/authorize", client_id=other.app.client_id, response_type="code")
            assert b.submit(page, email=other.email, password=PASSWORD).status_code == 303
        with Browser(srv.url) as b:
            # X-Forwarded-For from an untrusted peer is ignored: these all count against 127.0.0.1.
            page = b.get("/authorize", client_id=other.app.client_id, response_type="code")
            for i in range(3):
                spoof = {"X-Forwarded-For": f"198.51.100.{i}"}
                page = b.submit(page, headers=spoof, email=unique_email("nobody"), password="wrong-password")
                assert page.status_code == 401
            spoof = {"X-Forwarded-For": "198.51.100.99"}
            assert b.submit(page, headers=spoof, email=other.email, password=PASSWORD).status_code == 429
    finally:
        thread.stop()


def test_forwarded_address_is_believed_from_trusted_proxies(tmp_path: Path) -> None:
    srv, thread = start_live(
        tmp_path, trusted_proxies=["127.0.0.1"], login_failures_per_address=3, login_failures_per_account=100
    )
    try:
        acct = account(srv)
        with Browser(srv.url) as b:
            page = b.get("/authorize", client_id=acct.app.client_id, response_type="code")
            client = {"X-Forwarded-For": "203.0.113.7"}
            for _ in range(3):
                page = b.submit(page, headers=client, email=unique_email("nobody"), password="wrong-password")
                assert page.status_code == 401
            assert b.submit(page, headers=client, email=acct.email, password=PASSWORD).status_code == 429
            # Through two proxies: the right-most hop that is not a proxy is the client.
            chained = {"X-Forwarded-For": "10.9.9.9, 203.0.113.7, 127.0.0.1"}
            assert b.submit(page, headers=chained, email=acct.email, password=PASSWORD).status_code == 429
            # Another client behind the same proxy, and the proxy itself, are not blocked.
            neighbour = {"X-Forwarded-For": "203.0.113.8"}
            wrong = b.submit(page, headers=neighbour, email=acct.email, password="wrong-password")
            assert wrong.status_code == 401
            assert b.submit(wrong, email=acct.email, password=PASSWORD).status_code == 303
    finally:
        thread.stop()


# --- Headers ---------------------------------------------------------------------------------------


def test_pages_forbid_framing_and_caching(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    for path, params in (
        ("/authorize", {"client_id": acct.app.client_id, "response_type": "code"}),
        ("/signin", {"client_id": acct.app.client_id, "response_type": "code"}),
        ("/signup", {}),
        ("/device", {}),
        ("/logout", {}),
        ("/oauth/callback", {}),
    ):
        page = browser.get(path, **params)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert_secure_headers(page)
        csp = page.headers["content-security-policy"]
        nonce = csp.split("'nonce-")[1].split("'")[0]
        assert f'<style nonce="{nonce}">' in page.text
    fresh = Browser(live.url)
    with fresh:
        first = fresh.get("/device")
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("tc_browser=")
        assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
        assert "secure" not in cookie.lower()  # plain http here; see the https server above
        assert "set-cookie" not in fresh.get("/device").headers  # set once


def test_odd_input_is_refused_cleanly(live: LiveServer, browser: Browser) -> None:
    acct = account(live)
    cid = acct.app.client_id
    for query in (
        {"client_id": "a\x00b", "response_type": "code"},
        {"client_id": cid, "response_type": "code", "state": "x" * 3000},
        {"client_id": cid, "response_type": "code", "redirect_uri": "\x00"},
    ):
        response = browser.get("/authorize", **query)
        assert response.status_code == 400 and "location" not in response.headers
    assert browser.get("/logout", redirect_uri="http://a\x00b/").status_code == 400
    page = browser.get("/authorize", client_id=cid, response_type="code")
    assert browser.submit(page, email="a\x00@example.com", password=PASSWORD).status_code == 400
    signup = browser.get("/signup")
    assert browser.submit(signup, email="nul\x00@example.com", password=PASSWORD).status_code == 400
    assert (
        browser.submit(signup, email=unique_email(), password=PASSWORD, full_name="x" * 201).status_code
        == 400
    )
    for path in ("/signin", "/authorize", "/signup", "/device"):
        as_json = browser.http.post(path, json={"email": acct.email, "password": PASSWORD})
        assert as_json.status_code == 403
    sign_in(browser, page, acct.email)
    assert browser.get("/device", user_code="AB\x00").status_code == 400
    entry = browser.get("/device")
    assert browser.submit(entry, user_code="AB\x00").status_code == 400
