"""OAuth2 grants of the accounts server (REFERENCE.md §1.4), free of any web framework.

Authorization codes (60 s, single use, PKCE S256), the implicit flow, client credentials, refresh,
the password grant (first-party applications created with it only) and the limited-input device
flow. Errors are ``OAuthError`` with RFC 6749 names; the routes render them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from sqlalchemy import delete, insert, select, update

from thingcloud import tables as t
from thingcloud.auth import applications as apps
from thingcloud.auth.applications import Application
from thingcloud.auth.crypto import verify_password
from thingcloud.auth.tokens import IssuedToken, issue_app_token, issue_user_token, normalize_scope, refresh
from thingcloud.errors import NotFound, OAuthError
from thingcloud.ids import token_digest
from thingcloud.runtime import Runtime

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no 0/O or 1/I confusion


def pkce_s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def client_application(rt: Runtime, client_id: str | None) -> Application:
    if not client_id:
        raise OAuthError("invalid_request", "client_id is required")
    try:
        return await apps.get_application(rt, client_id.strip())
    except NotFound:
        raise OAuthError("invalid_client", "Unknown client", status=401) from None


def parse_basic(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:
        raise OAuthError("invalid_client", "Malformed Basic credentials", status=401) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "Malformed Basic credentials", status=401)
    return client_id, secret


async def authenticate_client(
    rt: Runtime, basic: tuple[str, str] | None, client_id: str | None, client_secret: str | None
) -> Application:
    """Client authentication by HTTP Basic or by form fields; failure is 401 invalid_client."""
    if basic is not None:
        client_id, client_secret = basic
    if not client_secret:
        raise OAuthError("invalid_client", "Client authentication required", status=401)
    app = await client_application(rt, client_id)
    if not apps.check_secret(rt, app, client_secret):
        raise OAuthError("invalid_client", "Client authentication failed", status=401)
    return app


def check_redirect_uri(app: Application, redirect_uri: str | None) -> str:
    """The registered URI to redirect to; an unregistered one is never redirected to."""
    if redirect_uri is None or redirect_uri == "":
        return app.redirect_uris[0]
    if redirect_uri not in app.redirect_uris:
        raise OAuthError("invalid_request", "Invalid parameter: redirect_uri")
    return redirect_uri


# --- Authorization code and implicit flows ---------------------------------------------------------


async def create_authorization_code(
    rt: Runtime,
    app: Application,
    uid: str,
    redirect_uri: str,
    redirect_uri_given: bool,
    scope: str,
    code_challenge: str | None,
) -> str:
    code = secrets.token_hex(16)
    async with rt.db.write() as conn:
        await conn.execute(
            insert(t.authorization_codes).values(
                code_hash=token_digest(code),
                aid=app.id,
                uid=uid,
                redirect_uri=redirect_uri,
                redirect_uri_given=redirect_uri_given,
                scope=normalize_scope(scope),
                code_challenge=code_challenge,
                expires_at=rt.clock.now_ms() + rt.settings.authorization_code_ttl * 1000,
            )
        )
    return code


async def implicit_token(rt: Runtime, app: Application, uid: str, scope: str) -> IssuedToken:
    async with rt.db.write() as conn:
        return await issue_user_token(rt, conn, uid, app.id, normalize_scope(scope))


async def grant_authorization_code(
    rt: Runtime,
    form: dict[str, str],
    basic: tuple[str, str] | None,
) -> IssuedToken:
    code = form.get("code", "")
    if not code:
        raise OAuthError("invalid_request", "code is required")
    verifier = form.get("code_verifier")
    if basic is not None or form.get("client_secret"):
        app = await authenticate_client(rt, basic, form.get("client_id"), form.get("client_secret"))
    else:
        if not verifier:
            raise OAuthError(
                "invalid_client", "Client authentication or PKCE code_verifier required", status=401
            )
        app = await client_application(rt, form.get("client_id"))
    async with rt.db.write() as conn:
        # The code is consumed (deleted and committed) before any check: a failed attempt cannot be
        # retried with the same code.
        row = (
            (
                await conn.execute(
                    delete(t.authorization_codes)
                    .where(t.authorization_codes.c.code_hash == token_digest(code))
                    .returning(*t.authorization_codes.c)
                )
            )
            .mappings()
            .first()
        )
    if row is None or row["aid"] != app.id or row["expires_at"] <= rt.clock.now_ms():
        raise OAuthError("invalid_grant", "Invalid, expired or already used authorization code")
    if row["redirect_uri_given"] and form.get("redirect_uri") != row["redirect_uri"]:
        raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    challenge = row["code_challenge"]
    if challenge:
        if not verifier or not hmac.compare_digest(pkce_s256(verifier), challenge):
            raise OAuthError("invalid_grant", "PKCE verification failed")
    elif basic is None and not form.get("client_secret"):
        raise OAuthError("invalid_client", "Client authentication required", status=401)
    async with rt.db.write() as conn:
        return await issue_user_token(rt, conn, row["uid"], app.id, row["scope"])


async def grant_client_credentials(
    rt: Runtime, form: dict[str, str], basic: tuple[str, str] | None
) -> IssuedToken:
    app = await authenticate_client(rt, basic, form.get("client_id"), form.get("client_secret"))
    return await issue_app_token(rt, app.id, normalize_scope(form.get("scope")))


async def grant_refresh_token(
    rt: Runtime, form: dict[str, str], basic: tuple[str, str] | None, bearer: str | None
) -> IssuedToken:
    token = form.get("refresh_token", "")
    if not token:
        raise OAuthError("invalid_request", "refresh_token is required")
    if basic is not None or form.get("client_secret"):
        app = await authenticate_client(rt, basic, form.get("client_id"), form.get("client_secret"))
        return await refresh(rt, token, app.id)
    if bearer:
        # Implicit-flow apps authenticate with their (possibly expired) access token instead.
        async with rt.db.read() as conn:
            aid = (
                await conn.execute(
                    select(t.tokens.c.aid).where(t.tokens.c.access_hash == token_digest(bearer.lower()))
                )
            ).scalar()
        if aid is None:
            raise OAuthError("invalid_client", "Client authentication failed", status=401)
        return await refresh(rt, token, aid)
    raise OAuthError("invalid_client", "Client authentication required", status=401)


async def grant_password(
    rt: Runtime, form: dict[str, str], basic: tuple[str, str] | None, address: str
) -> IssuedToken:
    if basic is not None or form.get("client_secret"):
        app = await authenticate_client(rt, basic, form.get("client_id"), form.get("client_secret"))
    else:
        app = await client_application(rt, form.get("client_id"))
    if not app.password_grant:
        raise OAuthError("unauthorized_client", "This application may not use the password grant")
    username, password = form.get("username", ""), form.get("password", "")
    if not username or not password:
        raise OAuthError("invalid_request", "username and password are required")
    uid = await check_credentials(rt, username, password, address)
    if uid is None:
        raise OAuthError("invalid_grant", "Invalid username or password")
    async with rt.db.write() as conn:
        return await issue_user_token(rt, conn, uid, app.id, normalize_scope(form.get("scope")))


class Throttled(Exception):
    """Too many failed sign-ins for this account or address."""


async def check_credentials(rt: Runtime, email: str, password: str, address: str) -> str | None:
    """The user id for good credentials, None otherwise; raises ``Throttled`` past the limits."""
    email = email.strip().lower()
    if rt.login_throttle.blocked(email, address):
        raise Throttled()
    async with rt.db.read() as conn:
        row = (
            await conn.execute(select(t.users.c.id, t.users.c.password_hash).where(t.users.c.email == email))
        ).first()
    ok = await verify_password(row[1] if row else None, password)
    if not ok or row is None:
        rt.login_throttle.failed(email, address)
        return None
    rt.login_throttle.succeeded(email)
    return str(row[0])


# --- Limited-input device flow ---------------------------------------------------------------------


async def start_device_flow(rt: Runtime, client_id: str | None, scope: str | None) -> dict[str, Any]:
    app = await client_application(rt, client_id)
    device_code = secrets.token_hex(16)
    user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
    async with rt.db.write() as conn:
        await conn.execute(
            insert(t.device_codes).values(
                device_code_hash=token_digest(device_code),
                user_code=user_code,
                aid=app.id,
                scope=normalize_scope(scope),
                status="pending",
                expires_at=rt.clock.now_ms() + rt.settings.device_code_ttl * 1000,
            )
        )
    return {
        "device_code": device_code,
        "user_code": user_code,
        "verification_url": f"{rt.settings.public_base}/device",
        "expires_in": rt.settings.device_code_ttl,
        "interval": rt.settings.device_code_interval,
    }


async def pending_device_code(rt: Runtime, user_code: str) -> tuple[dict[str, Any], Application] | None:
    code = normalize_user_code(user_code)
    async with rt.db.read() as conn:
        row = (
            (await conn.execute(select(t.device_codes).where(t.device_codes.c.user_code == code)))
            .mappings()
            .first()
        )
    if row is None or row["status"] != "pending" or row["expires_at"] <= rt.clock.now_ms():
        return None
    return dict(row), await apps.get_application(rt, row["aid"])


def normalize_user_code(user_code: str) -> str:
    """What people type (``bcdf-ghjk``, spaces) → the stored form (``BCDFGHJK``)."""
    return user_code.strip().upper().replace("-", "").replace(" ", "")


async def decide_device_code(rt: Runtime, user_code: str, uid: str, approve: bool) -> bool:
    async with rt.db.write() as conn:
        result = await conn.execute(
            update(t.device_codes)
            .where(
                t.device_codes.c.user_code == normalize_user_code(user_code),
                t.device_codes.c.status == "pending",
                t.device_codes.c.expires_at > rt.clock.now_ms(),
            )
            .values(status="approved" if approve else "denied", uid=uid)
        )
    return result.rowcount == 1


async def grant_device_code(rt: Runtime, form: dict[str, str], basic: tuple[str, str] | None) -> IssuedToken:
    if basic is not None or form.get("client_secret"):
        app = await authenticate_client(rt, basic, form.get("client_id"), form.get("client_secret"))
    else:
        app = await client_application(rt, form.get("client_id"))
    device_code = form.get("code") or form.get("device_code") or ""
    if not device_code:
        raise OAuthError("invalid_request", "code is required")
    now = rt.clock.now_ms()
    digest = token_digest(device_code)
    where = t.device_codes.c.device_code_hash == digest
    error: OAuthError  # every branch below sets it or returns
    async with rt.db.write() as conn:
        row = (await conn.execute(select(t.device_codes).where(where))).mappings().first()
        if row is None or row["aid"] != app.id:
            error = OAuthError("invalid_grant", "Unknown device code")
        elif row["expires_at"] <= now:
            await conn.execute(delete(t.device_codes).where(where))
            error = OAuthError("expired_token", "The device code has expired")
        elif row["status"] == "denied":
            await conn.execute(delete(t.device_codes).where(where))
            error = OAuthError("access_denied", "The user denied the request")
        elif row["status"] == "pending":
            last = row["last_poll_at"]
            await conn.execute(update(t.device_codes).where(where).values(last_poll_at=now))
            if last is not None and now - last < rt.settings.device_code_interval * 1000:
                error = OAuthError("slow_down", "Polling too fast")
            else:
                error = OAuthError("authorization_pending", "The user has not yet approved the request")
        elif (await conn.execute(delete(t.device_codes).where(where))).rowcount == 1:
            return await issue_user_token(rt, conn, row["uid"], app.id, row["scope"])
        else:
            # A concurrent poll already took the token (PostgreSQL): one approval, one token.
            error = OAuthError("invalid_grant", "Unknown device code")
    # Raised after the commit, so the poll time and the removal of a dead code are kept.
    raise error


async def exchange(
    rt: Runtime,
    form: dict[str, str],
    basic_header: str | None,
    bearer: str | None,
    address: str,
) -> IssuedToken:
    """``POST /token``: dispatch on ``grant_type``."""
    grant_type = form.get("grant_type", "")
    basic = parse_basic(basic_header)
    if grant_type == "authorization_code":
        return await grant_authorization_code(rt, form, basic)
    if grant_type == "client_credentials":
        return await grant_client_credentials(rt, form, basic)
    if grant_type == "refresh_token":
        return await grant_refresh_token(rt, form, basic, bearer)
    if grant_type == "password":
        try:
            return await grant_password(rt, form, basic, address)
        except Throttled:
            raise OAuthError("slow_down", "Too many failed attempts; try again later", status=429) from None
    if grant_type in ("device_code", "urn:ietf:params:oauth:grant-type:device_code"):
        return await grant_device_code(rt, form, basic)
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    raise OAuthError("unsupported_grant_type", f"Unsupported grant_type '{grant_type}'")
