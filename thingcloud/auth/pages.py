"""HTML pages of the accounts server (REFERENCE.md §1.4): sign-in, consent, sign-up, logout, the
limited-input device verification page and the console's OAuth callback.

Handlers stay short: validation, sessions and CSRF live in ``auth.accounts``, grants in ``auth.oauth``.
Every response forbids framing and caching and sends no referrer (codes travel in URLs). Links and
form actions are relative, so the pages also work under a path prefix behind a proxy.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ConfigDict

from thingcloud.areas.users import service as users
from thingcloud.auth import accounts, oauth
from thingcloud.auth import applications as apps
from thingcloud.errors import Conflict, ValidationFailed
from thingcloud.rest.deps import RuntimeDep, client_address
from thingcloud.runtime import Runtime

router = APIRouter(tags=["Accounts (HTML)"])
templates = Environment(
    loader=PackageLoader("thingcloud.auth", "templates"), autoescape=select_autoescape(default=True)
)


class AuthorizeParams(BaseModel):
    """The ``/authorize`` query (REFERENCE.md §1.4); unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore")
    client_id: str | None = None
    response_type: str | None = None
    redirect_uri: str | None = None
    state: str | None = None
    scope: str | None = None
    account_type: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None


AuthorizeQuery = Annotated[AuthorizeParams, Query()]


# --- Responses -------------------------------------------------------------------------------------


def _headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


def _set_cookie(rt: Runtime, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=rt.settings.web_session_ttl,
        path="/",
        httponly=True,
        samesite="lax",
        secure=rt.settings.public_base.startswith("https://"),
    )


@dataclass(frozen=True)
class Browser:
    key: str
    fresh: bool
    session: str | None


def _browser(request: Request) -> Browser:
    session = request.cookies.get(accounts.SESSION_COOKIE)
    key = request.cookies.get(accounts.BROWSER_COOKIE)
    if key and len(key) <= accounts.MAX_COOKIE:
        return Browser(key, False, session)
    return Browser(accounts.new_browser_key(), True, session)


def render(rt: Runtime, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page with a fresh CSP nonce and this browser's CSRF token (its key cookie set if new)."""
    nonce = secrets.token_urlsafe(16)
    browser = _browser(request)
    context.setdefault("hidden", {})
    html = templates.get_template(template).render(
        nonce=nonce, csrf=accounts.csrf_token(rt, browser.key, browser.session), **context
    )
    csp = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    response = HTMLResponse(html, status_code=status, headers=_headers(csp))
    if browser.fresh:
        _set_cookie(rt, response, accounts.BROWSER_COOKIE, browser.key)
    return response


def message(
    rt: Runtime, request: Request, status: int, title: str, text: str, **context: Any
) -> HTMLResponse:
    return render(rt, request, "message.html", status, title=title, message=text, **context)


def redirect(location: str, status: int = 302) -> Response:
    headers = _headers("default-src 'none'; frame-ancestors 'none'")
    headers["Location"] = location
    return Response(status_code=status, headers=headers)


async def _form(rt: Runtime, request: Request) -> dict[str, str] | Response:
    """The submitted form, or the refusal: a 403 when its CSRF token does not match this browser."""
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    browser = request.cookies.get(accounts.BROWSER_COOKIE)
    session = request.cookies.get(accounts.SESSION_COOKIE)
    if not accounts.csrf_valid(rt, browser, session, form.get("csrf_token")):
        return message(
            rt,
            request,
            403,
            "Request refused",
            "This form has expired or was not sent from this site. Go back, reload the page and try again.",
        )
    if not all(accounts.acceptable_text(v) for v in form.values()):
        return message(
            rt, request, 400, "Invalid request", "A field is too long or contains invalid characters."
        )
    return form


def _signin_page(
    rt: Runtime, request: Request, hidden: dict[str, str], status: int = 200, **context: Any
) -> HTMLResponse:
    signup = f"signup?{urlencode(hidden)}" if rt.settings.signup_enabled else None
    return render(
        rt, request, "signin.html", status, title="Sign in", hidden=hidden, signup_link=signup, **context
    )


async def _authorization(
    rt: Runtime, request: Request, params: dict[str, str]
) -> accounts.AuthorizationRequest | Response:
    """The validated request, or the response for a bad one (a 400 page, or the error redirect)."""
    try:
        return await accounts.parse_authorization_request(rt, params)
    except accounts.InvalidClientRequest as exc:
        return message(rt, request, 400, "Invalid request", str(exc))
    except accounts.RedirectError as exc:
        return redirect(exc.location)


async def _continue_after_signin(rt: Runtime, request: Request, form: dict[str, str]) -> str | Response:
    """Where a successful sign-in or sign-up goes next: back to the authorization or device page."""
    if form.get("flow") == "device":
        code = form.get("user_code", "")
        return "device" + (f"?{urlencode({'user_code': code})}" if code else "")
    found = await _authorization(rt, request, form)
    if isinstance(found, Response):
        return found
    return f"authorize?{urlencode(found.params)}"


# --- Authorization: sign-in and consent ------------------------------------------------------------


async def _authorize(rt: Runtime, request: Request, params: AuthorizeParams, fresh_login: bool) -> Response:
    found = await _authorization(rt, request, params.model_dump(exclude_none=True))
    if isinstance(found, Response):
        return found
    uid = (
        None
        if fresh_login
        else await accounts.resolve_session(rt, request.cookies.get(accounts.SESSION_COOKIE))
    )
    if uid is None:
        return _signin_page(rt, request, dict(found.params), app=found.app)
    if found.app.first_party:  # our own console: the user already trusts it
        return redirect(await accounts.complete_authorization(rt, found, uid))
    user = await users.get_user(rt, uid)
    return render(
        rt,
        request,
        "consent.html",
        title="Grant access",
        hidden=found.params,
        app=found.app,
        email=user.email,
        scopes=found.scope.split(","),
        switch_link=f"signin?{urlencode(found.params)}",
    )


@router.get("/authorize", response_class=HTMLResponse, summary="Sign in and authorize an application")
async def authorize(request: Request, rt: RuntimeDep, params: AuthorizeQuery) -> Response:
    return await _authorize(rt, request, params, fresh_login=False)


@router.get("/signin", response_class=HTMLResponse, summary="Like /authorize, forcing a fresh sign-in")
async def signin(request: Request, rt: RuntimeDep, params: AuthorizeQuery) -> Response:
    return await _authorize(rt, request, params, fresh_login=True)


@router.post("/signin", response_class=HTMLResponse, summary="Sign-in form submission")
async def signin_submit(request: Request, rt: RuntimeDep) -> Response:
    form = await _form(rt, request)
    if isinstance(form, Response):
        return form
    following = await _continue_after_signin(rt, request, form)
    if isinstance(following, Response):
        return following
    hidden = _carried(form)
    email, password = form.get("email", "").strip(), form.get("password", "")
    if not email or not password:
        return _signin_page(rt, request, hidden, 400, error="Enter your email and password.", email=email)
    try:
        uid = await oauth.check_credentials(rt, email, password, client_address(request.scope, rt))
    except oauth.Throttled:
        return message(
            rt,
            request,
            429,
            "Too many attempts",
            "Too many failed sign-ins. Wait a few minutes and try again.",
        )
    if uid is None:
        return _signin_page(rt, request, hidden, 401, error="Wrong email or password.", email=email)
    return await _signed_in(rt, request, uid, redirect(following, 303))


async def _signed_in(rt: Runtime, request: Request, uid: str, response: Response) -> Response:
    """Replace any previous session by a new one (no session fixation)."""
    await accounts.end_session(rt, request.cookies.get(accounts.SESSION_COOKIE))
    _set_cookie(rt, response, accounts.SESSION_COOKIE, await accounts.create_session(rt, uid))
    return response


@router.post("/authorize", response_class=HTMLResponse, summary="Consent form submission (Grant / Deny)")
async def consent_submit(request: Request, rt: RuntimeDep) -> Response:
    form = await _form(rt, request)
    if isinstance(form, Response):
        return form
    found = await _authorization(rt, request, form)
    if isinstance(found, Response):
        return found
    uid = await accounts.resolve_session(rt, request.cookies.get(accounts.SESSION_COOKIE))
    if uid is None:  # the session ended while the page was open: sign in again
        return redirect(f"authorize?{urlencode(found.params)}", 303)
    decision = form.get("decision")
    if decision == "grant":
        return redirect(await accounts.complete_authorization(rt, found, uid))
    if decision == "deny":
        return redirect(accounts.denied_location(found))
    return message(rt, request, 400, "Invalid request", "Choose Grant or Deny.")


# --- Sign-up ---------------------------------------------------------------------------------------


def _signup_disabled(rt: Runtime, request: Request) -> HTMLResponse:
    return message(
        rt, request, 404, "Sign-up is disabled", "Ask the administrator of this server for an account."
    )


@router.get("/signup", response_class=HTMLResponse, summary="Sign-up page (when enabled)")
async def signup(request: Request, rt: RuntimeDep) -> Response:
    if not rt.settings.signup_enabled:
        return _signup_disabled(rt, request)
    hidden = _carried(dict(request.query_params))
    return render(
        rt, request, "signup.html", title="Create an account", hidden=hidden, signin_link=_signin_link(hidden)
    )


def _carried(values: dict[str, str]) -> dict[str, str]:
    """The authorization (or device) context a sign-up page passes on to where it came from."""
    names = (*accounts.AUTHORIZE_PARAMS, "flow", "user_code")
    return {k: values[k] for k in names if values.get(k)}


def _signin_link(hidden: dict[str, str]) -> str | None:
    if hidden.get("flow") == "device":
        return "device" + (
            f"?{urlencode({'user_code': hidden['user_code']})}" if "user_code" in hidden else ""
        )
    return f"authorize?{urlencode(hidden)}" if hidden.get("client_id") else None


@router.post("/signup", response_class=HTMLResponse, summary="Sign-up form submission")
async def signup_submit(request: Request, rt: RuntimeDep) -> Response:
    if not rt.settings.signup_enabled:
        return _signup_disabled(rt, request)
    form = await _form(rt, request)
    if isinstance(form, Response):
        return form
    hidden = _carried(form)
    following: str | None = None
    if hidden:  # check where the account is going before creating it
        target = await _continue_after_signin(rt, request, hidden)
        if isinstance(target, Response):
            return target
        following = target
    email, full_name = form.get("email", "").strip(), form.get("full_name", "").strip()

    def again(status: int, problems: list[str]) -> HTMLResponse:
        return render(
            rt,
            request,
            "signup.html",
            status,
            title="Create an account",
            hidden=hidden,
            problems=problems,
            email=email,
            full_name=full_name,
            signin_link=_signin_link(hidden),
        )

    if len(full_name) > 200:
        return again(400, ["Full name: at most 200 characters"])
    try:
        user = await accounts.sign_up(rt, email, form.get("password", ""), full_name=full_name)
    except ValidationFailed as exc:
        return again(400, [f"{e.field.capitalize()}: {'; '.join(e.messages)}" for e in exc.errors])
    except Conflict as exc:
        return again(409, [exc.message])
    if following is None:
        done = message(rt, request, 200, "Account created", f"You are signed in as {user.email}.")
        return await _signed_in(rt, request, user.id, done)
    return await _signed_in(rt, request, user.id, redirect(following, 303))


# --- Logout ----------------------------------------------------------------------------------------


@router.get("/logout", response_class=HTMLResponse, summary="End the accounts-server session")
async def logout(
    request: Request, rt: RuntimeDep, redirect_uri: str | None = None, state: str | None = None
) -> Response:
    if redirect_uri and not await accounts.registered_redirect_uri(rt, redirect_uri):
        # Never an open redirect, and a refused request changes nothing.
        return message(rt, request, 400, "Invalid request", "Invalid parameter: redirect_uri")
    await accounts.end_session(rt, request.cookies.get(accounts.SESSION_COOKIE))
    if redirect_uri:
        reply = {"status": "logout", **({"state": state} if state is not None else {})}
        response: Response = redirect(accounts.with_params(redirect_uri, reply))
    else:
        response = message(rt, request, 200, "Signed out", "You are signed out of ThingCloud.")
    response.delete_cookie(
        accounts.SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=rt.settings.public_base.startswith("https://"),
    )
    return response


# --- Limited-input device flow ---------------------------------------------------------------------


async def _device_page(rt: Runtime, request: Request, uid: str, user_code: str) -> HTMLResponse:
    if not user_code:
        return render(rt, request, "device.html", title="Connect a device")
    valid = accounts.acceptable_text(user_code, limit=32)
    pending = await oauth.pending_device_code(rt, user_code) if valid else None
    if pending is None:
        error = "That code is not valid or has expired. Check the code on your device."
        return render(
            rt, request, "device.html", 400, title="Connect a device", error=error, user_code=user_code
        )
    row, app = pending
    user = await users.get_user(rt, uid)
    return render(
        rt,
        request,
        "device.html",
        title="Connect a device",
        app=app,
        email=user.email,
        user_code=row["user_code"],
        hidden={"user_code": row["user_code"]},
    )


@router.get("/device", response_class=HTMLResponse, summary="Verification page of the device flow")
async def device(request: Request, rt: RuntimeDep, user_code: str | None = None) -> Response:
    uid = await accounts.resolve_session(rt, request.cookies.get(accounts.SESSION_COOKIE))
    if uid is None:
        hidden = {"flow": "device", **({"user_code": user_code} if user_code else {})}
        return _signin_page(rt, request, hidden, intro="Sign in to connect your device.")
    return await _device_page(rt, request, uid, user_code or "")


@router.post("/device", response_class=HTMLResponse, summary="Device flow: enter, approve or deny a code")
async def device_submit(request: Request, rt: RuntimeDep) -> Response:
    form = await _form(rt, request)
    if isinstance(form, Response):
        return form
    uid = await accounts.resolve_session(rt, request.cookies.get(accounts.SESSION_COOKIE))
    if uid is None:
        return redirect("device", 303)
    user_code, decision = form.get("user_code", "").strip(), form.get("decision")
    if decision not in ("approve", "deny"):
        return await _device_page(rt, request, uid, user_code)
    if not await oauth.decide_device_code(rt, user_code[:32], uid, decision == "approve"):
        error = "That code is not valid, has expired or was already used."
        return render(rt, request, "device.html", 400, title="Connect a device", error=error)
    if decision == "approve":
        return message(rt, request, 200, "Device connected", "You can go back to your device now.")
    return message(rt, request, 200, "Request denied", "The device was not given access to your account.")


# --- The console's redirect target -----------------------------------------------------------------


@router.get("/oauth/callback", response_class=HTMLResponse, summary="Redirect target of ThingCloud Console")
async def console_callback(
    request: Request,
    rt: RuntimeDep,
    code: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    console = await apps.find_console(rt)
    base = rt.settings.public_base
    shown_error = f"{error}: {error_description}" if error and error_description else error
    return render(
        rt,
        request,
        "callback.html",
        title="ThingCloud Console",
        error=shown_error,
        code=code,
        code_ttl=rt.settings.authorization_code_ttl,
        base=base,
        client_id=console.id if console else "CLIENT_ID",
        redirect_uri=f"{base}/oauth/callback",
    )
