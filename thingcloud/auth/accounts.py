"""The browser side of the accounts server, free of any web framework: sessions, CSRF, sign-up, and
the validation and completion of ``/authorize`` requests (REFERENCE.md §1.4).

Sessions: the cookie holds 256 random bits; only their SHA-256 is stored (``web_sessions``), so a
database dump signs nobody in. A sign-in always starts a new session (no fixation).

CSRF: every form carries ``HMAC(secret key, "csrf|<browser key>|<sha256 of the session cookie>")``.
The browser key is a random value in its own HttpOnly cookie, set by any page with a form, so the
sign-in and sign-up forms are protected before a session exists; once signed in, the token is also
bound to the session, so a forger who managed to plant a browser-key cookie still cannot consent on
the victim's behalf. Nothing is stored server-side for CSRF, and any node can verify the token.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import Text, cast, delete, insert, select

from thingcloud import tables as t
from thingcloud.areas.users import service as users
from thingcloud.areas.users.schemas import User
from thingcloud.auth import oauth
from thingcloud.auth.applications import Application
from thingcloud.auth.tokens import normalize_scope
from thingcloud.errors import NotFound, OAuthError
from thingcloud.ids import token_digest
from thingcloud.runtime import Runtime

SESSION_COOKIE = "tc_session"
BROWSER_COOKIE = "tc_browser"
AUTHORIZE_PARAMS = (
    "client_id",
    "response_type",
    "redirect_uri",
    "state",
    "scope",
    "account_type",
    "code_challenge",
    "code_challenge_method",
)
MAX_PARAM = 2000
MAX_COOKIE = 200
PKCE_CHALLENGE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 §4.2


# --- Browser sessions ------------------------------------------------------------------------------


async def create_session(rt: Runtime, uid: str) -> str:
    """A new session for ``uid``; returns the cookie value (shown to the browser only)."""
    value = secrets.token_urlsafe(32)
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        # Expired sessions of this account go on the way (the uid index makes it cheap).
        await conn.execute(
            delete(t.web_sessions).where(t.web_sessions.c.uid == uid, t.web_sessions.c.expires_at <= now)
        )
        await conn.execute(
            insert(t.web_sessions).values(
                id_hash=token_digest(value),
                uid=uid,
                created_on=now,
                expires_at=now + rt.settings.web_session_ttl * 1000,
            )
        )
    return value


async def resolve_session(rt: Runtime, cookie: str | None) -> str | None:
    """The signed-in user's id, or None for no, unknown or expired session."""
    if not cookie or len(cookie) > MAX_COOKIE:
        return None
    async with rt.db.read() as conn:
        uid = (
            await conn.execute(
                select(t.web_sessions.c.uid).where(
                    t.web_sessions.c.id_hash == token_digest(cookie),
                    t.web_sessions.c.expires_at > rt.clock.now_ms(),
                )
            )
        ).scalar()
    return str(uid) if uid is not None else None


async def end_session(rt: Runtime, cookie: str | None) -> None:
    if not cookie or len(cookie) > MAX_COOKIE:
        return
    async with rt.db.write() as conn:
        await conn.execute(delete(t.web_sessions).where(t.web_sessions.c.id_hash == token_digest(cookie)))


# --- CSRF ------------------------------------------------------------------------------------------


def new_browser_key() -> str:
    return secrets.token_urlsafe(24)


def _csrf_message(browser_key: str, session_cookie: str | None) -> str:
    # The raw cookie's digest, valid or not: a session expiring while a form is open does not
    # turn its submission into a forgery.
    bound = token_digest(session_cookie) if session_cookie else "-"
    return f"csrf|{browser_key}|{bound}"


def csrf_token(rt: Runtime, browser_key: str, session_cookie: str | None) -> str:
    return rt.box.sign(_csrf_message(browser_key, session_cookie))


def csrf_valid(
    rt: Runtime, browser_key: str | None, session_cookie: str | None, presented: str | None
) -> bool:
    if not browser_key or not presented or len(browser_key) > MAX_COOKIE:
        return False
    return rt.box.verify(_csrf_message(browser_key, session_cookie), presented)


# --- Sign-up ---------------------------------------------------------------------------------------


class SignupDisabled(NotFound):
    default_message = "Sign-up is disabled on this server"


async def sign_up(
    rt: Runtime, email: str, password: str, name: str | None = None, full_name: str | None = None
) -> User:
    """A new account from the sign-up page; the same rules as the CLI (``users.create_user``)."""
    if not rt.settings.signup_enabled:
        raise SignupDisabled()
    return await users.create_user(rt, email, password, name=name or None, full_name=full_name or None)


# --- Authorization requests (/authorize, /signin) ---------------------------------------------------


class InvalidClientRequest(Exception):
    """Unknown client or unregistered redirect_uri: shown to the user, never redirected anywhere."""


class RedirectError(Exception):
    """An error the client learns about through its (registered) redirect_uri."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass(frozen=True)
class AuthorizationRequest:
    app: Application
    response_type: str
    redirect_uri: str
    redirect_uri_given: bool
    state: str | None
    scope: str
    code_challenge: str | None
    params: dict[str, str]
    """The request's own parameters, carried unchanged through the sign-in and consent forms."""

    @property
    def in_fragment(self) -> bool:
        return self.response_type == "token"


def acceptable_text(value: str, limit: int = MAX_PARAM) -> bool:
    """Short enough, and free of NUL (which PostgreSQL text cannot hold: a query would fail)."""
    return len(value) <= limit and "\x00" not in value


def with_params(uri: str, values: dict[str, str], fragment: bool = False) -> str:
    """``uri`` with ``values`` added to its query (kept as registered) or set as its fragment."""
    parts = urlsplit(uri)
    if fragment:
        return urlunsplit(parts._replace(fragment=urlencode(values)))
    query = parse_qsl(parts.query, keep_blank_values=True) + list(values.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _reply(values: dict[str, str], state: str | None) -> dict[str, str]:
    return {**values, "state": state} if state is not None else values


async def parse_authorization_request(rt: Runtime, given: dict[str, str]) -> AuthorizationRequest:
    """Validate ``/authorize`` parameters in the order that keeps redirects safe: the client and its
    redirect_uri first (``InvalidClientRequest``), then everything else (``RedirectError``)."""
    params = {k: given[k] for k in AUTHORIZE_PARAMS if given.get(k) is not None}
    if not all(acceptable_text(v) for v in params.values()):
        raise InvalidClientRequest("A request parameter is too long or contains invalid characters")
    try:
        app = await oauth.client_application(rt, params.get("client_id"))
    except OAuthError as exc:
        raise InvalidClientRequest(
            "Invalid parameter: client_id" if exc.error == "invalid_client" else exc.description
        ) from None
    given_uri = params.get("redirect_uri") or None
    try:
        redirect_uri = oauth.check_redirect_uri(app, given_uri)
    except OAuthError:
        raise InvalidClientRequest("Invalid parameter: redirect_uri") from None
    state = params.get("state")
    response_type = params.get("response_type", "")

    def fail(error: str, description: str) -> RedirectError:
        reply = _reply({"error": error, "error_description": description}, state)
        return RedirectError(with_params(redirect_uri, reply, fragment=response_type == "token"))

    if not response_type:
        raise fail("invalid_request", "response_type is required")
    if response_type not in ("code", "token"):
        raise fail("unsupported_response_type", "response_type must be code or token")
    challenge = params.get("code_challenge") or None
    method = params.get("code_challenge_method") or None
    if method is not None and method != "S256":
        raise fail("invalid_request", "Unsupported code_challenge_method: only S256 is supported")
    if challenge is not None and method is None:
        # RFC 7636 would read this as the "plain" method, which is not supported.
        raise fail("invalid_request", "code_challenge_method=S256 is required with code_challenge")
    if method is not None and challenge is None:
        raise fail("invalid_request", "code_challenge is required with code_challenge_method")
    if challenge is not None and not PKCE_CHALLENGE.match(challenge):
        raise fail("invalid_request", "Malformed code_challenge")
    return AuthorizationRequest(
        app=app,
        response_type=response_type,
        redirect_uri=redirect_uri,
        redirect_uri_given=given_uri is not None,
        state=state,
        scope=normalize_scope(params.get("scope")),
        code_challenge=challenge,
        params=params,
    )


async def complete_authorization(rt: Runtime, request: AuthorizationRequest, uid: str) -> str:
    """The user granted access: issue the code (or the implicit token) and return where to go."""
    if request.response_type == "code":
        code = await oauth.create_authorization_code(
            rt,
            request.app,
            uid,
            request.redirect_uri,
            request.redirect_uri_given,
            request.scope,
            request.code_challenge,
        )
        return with_params(request.redirect_uri, _reply({"code": code}, request.state))
    issued = await oauth.implicit_token(rt, request.app, uid, request.scope)
    values = {
        "access_token": issued.access_token,
        "token_type": "bearer",
        "expires_in": str(issued.expires_in),
        "scope": issued.scope,
    }
    if issued.refresh_token:
        values["refresh_token"] = issued.refresh_token
    return with_params(request.redirect_uri, _reply(values, request.state), fragment=True)


def denied_location(request: AuthorizationRequest) -> str:
    reply = _reply({"error": "access_denied", "error_description": "The user denied access"}, request.state)
    return with_params(request.redirect_uri, reply, fragment=request.in_fragment)


# --- Logout ----------------------------------------------------------------------------------------


async def registered_redirect_uri(rt: Runtime, uri: str) -> bool:
    """Whether some application registered ``uri`` (logout may only redirect there)."""
    if not uri or not acceptable_text(uri):
        return False
    # A textual pre-filter on the JSON list keeps this from loading every application; the exact
    # comparison below decides.
    column = cast(t.applications.c.redirect_uris, Text)
    async with rt.db.read() as conn:
        rows = await conn.execute(
            select(t.applications.c.redirect_uris).where(column.contains(uri, autoescape=True))
        )
        return any(uri in list(row[0]) for row in rows)
