"""The ``thingcloud`` command, run as a real subprocess against the database of a live test server, whose
HTTP API then shows the effect (users that can sign in, applications that work at ``/token``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory

from thingcloud.migrate import alembic_config

from .conftest import TEST_DATABASE_URL, LiveServer, scratch_database_url, start_live
from .factories import PASSWORD, make_app, make_user, password_token, unique_email

THINGCLOUD = str(Path(sys.executable).parent / "thingcloud")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
TOKEN_CACHE_SECONDS = 31  # a node drops a cached token after 30 s (no shared bus between processes here)


def cli_env(data_dir: Path, database_url: str, secret_key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THINGCLOUD_")}
    env["THINGCLOUD_DATA_DIR"] = str(data_dir)
    env["THINGCLOUD_DATABASE_URL"] = database_url
    if secret_key:
        env["THINGCLOUD_SECRET_KEY"] = secret_key
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [THINGCLOUD, *args], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def server(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of this module's own (its clock is moved here); on PostgreSQL it shares ``live``'s
    database, which ``live`` has reset first."""
    srv, thread = start_live(tmp_path_factory.mktemp("cli"))
    yield srv
    thread.stop()


@pytest.fixture()
def env(server: LiveServer) -> dict[str, str]:
    s = server.settings
    return cli_env(s.data_dir, s.resolved_database_url, s.secret_key)


def ok(env: dict[str, str], *args: str) -> Any:
    result = run(env, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fails(env: dict[str, str], *args: str) -> str:
    """Run a command that must fail cleanly: exit 1, a readable message, no traceback, nothing on stdout."""
    result = run(env, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    return result.stderr


def token_status(server: LiveServer, **form: str) -> httpx.Response:
    return httpx.post(f"{server.url}/token", data=form)


# --- users ------------------------------------------------------------------------------------------


def test_users_create_prints_the_user_who_can_then_sign_in(server: LiveServer, env: dict[str, str]) -> None:
    email = unique_email("cli")
    user = ok(
        env, "users", "create", "--email", email.upper(), "--password", PASSWORD, "--full-name", "Ada L"
    )
    assert HEX32.match(user["id"])
    assert user["email"] == email
    assert user["fullName"] == "Ada L"
    assert user["name"] == email.split("@")[0]

    app = make_app(server, user["id"])
    token = password_token(server, app, email)["access_token"]
    me = httpx.get(f"{server.url}/v1.1/users/self", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json()["data"]["id"] == user["id"]


def test_users_create_refuses_a_duplicate_email(env: dict[str, str]) -> None:
    email = unique_email("dup")
    ok(env, "users", "create", "--email", email, "--password", PASSWORD)
    message = fails(env, "users", "create", "--email", email, "--password", "another-password-1")
    assert message == "error: Email already registered. (HTTP 409, code 1202)\n"


def test_users_create_reports_each_bad_field(env: dict[str, str]) -> None:
    message = fails(env, "users", "create", "--email", "not-an-email", "--password", "short")
    assert message.splitlines() == [
        "error: Validation Error (HTTP 400, code 4001)",
        "  email: Invalid email",
        "  password: Minimum length 8",
    ]


def test_users_set_password(server: LiveServer, env: dict[str, str]) -> None:
    user = make_user(server)
    done = ok(env, "users", "set-password", "--email", user.email, "--password", "a-brand-new-secret")
    assert done == {"id": user.id, "email": user.email}

    auth = (user.app.client_id, user.app.client_secret)
    form = {"grant_type": "password", "username": user.email}
    old = httpx.post(f"{server.url}/token", data={**form, "password": PASSWORD}, auth=auth)
    assert old.status_code == 400
    assert old.json()["error"] == "invalid_grant"
    new = httpx.post(f"{server.url}/token", data={**form, "password": "a-brand-new-secret"}, auth=auth)
    assert new.status_code == 200

    assert fails(
        env, "users", "set-password", "--email", unique_email("nobody"), "--password", "whatever-1"
    ) == ("error: User does not exist. (HTTP 404, code 1201)\n")


def test_users_delete_removes_the_user_and_what_they_own(server: LiveServer, env: dict[str, str]) -> None:
    user = make_user(server)  # signed in through an application the user owns
    headers = user.headers
    assert httpx.get(f"{server.url}/v1.1/users/self", headers=headers).status_code == 200

    done = ok(env, "users", "delete", "--email", user.email)
    assert done == {"id": user.id, "email": user.email, "deleted": True}

    # Another process deleted the user: this node notices once its token cache entry runs out.
    server.clock.advance(TOKEN_CACHE_SECONDS)
    response = httpx.get(f"{server.url}/v1.1/users/self", headers=headers)
    assert response.status_code == 401
    refresh = token_status(
        server,
        grant_type="refresh_token",
        refresh_token=user.refresh_token,
        client_id=user.app.client_id,
        client_secret=user.app.client_secret,
    )
    assert refresh.status_code in (400, 401)  # the application itself is gone
    app_grant = token_status(
        server,
        grant_type="client_credentials",
        client_id=user.app.client_id,
        client_secret=user.app.client_secret,
    )
    assert app_grant.status_code == 401
    assert app_grant.json()["error"] == "invalid_client"

    assert fails(env, "users", "delete", "--email", user.email) == (
        "error: User does not exist. (HTTP 404, code 1201)\n"
    )


# --- applications -----------------------------------------------------------------------------------


def test_apps_create_prints_credentials_that_work(server: LiveServer, env: dict[str, str]) -> None:
    owner = make_user(server)
    app = ok(
        env,
        "apps",
        "create",
        "--name",
        "Dashboard",
        "--owner",
        owner.email,
        "--redirect-uri",
        "http://127.0.0.1:9/cb",
        "--redirect-uri",
        "myapp://callback",
        "--password-grant",
    )
    assert HEX32.match(app["client_id"])
    assert HEX32.match(app["client_secret"])
    assert app["name"] == "Dashboard"
    assert app["owner"] == owner.id
    assert app["redirect_uris"] == ["http://127.0.0.1:9/cb", "myapp://callback"]
    assert app["password_grant"] is True

    auth = (app["client_id"], app["client_secret"])
    app_token = httpx.post(f"{server.url}/token", data={"grant_type": "client_credentials"}, auth=auth)
    assert app_token.status_code == 200
    assert HEX32.match(app_token.json()["access_token"])
    user_token = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "password", "username": owner.email, "password": PASSWORD},
        auth=auth,
    )
    assert user_token.status_code == 200
    me = httpx.get(
        f"{server.url}/v1.1/users/self",
        headers={"Authorization": f"Bearer {user_token.json()['access_token']}"},
    )
    assert me.json()["data"]["id"] == owner.id


def test_apps_create_without_password_grant(server: LiveServer, env: dict[str, str]) -> None:
    owner = make_user(server)
    app = ok(
        env, "apps", "create", "--name", "Web", "--owner", owner.email, "--redirect-uri", "https://x.test/cb"
    )
    assert app["password_grant"] is False
    refused = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "password", "username": owner.email, "password": PASSWORD},
        auth=(app["client_id"], app["client_secret"]),
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "unauthorized_client"


def test_apps_create_with_narrowed_permissions(server: LiveServer, env: dict[str, str]) -> None:
    owner = make_user(server)
    app = ok(
        env,
        "apps",
        "create",
        "--name",
        "Read only",
        "--owner",
        owner.email,
        "--redirect-uri",
        "https://x.test/cb",
        "--password-grant",
        "--permissions",
        "profile:READ",
    )
    token = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "password", "username": owner.email, "password": PASSWORD},
        auth=(app["client_id"], app["client_secret"]),
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{server.url}/v1.1/users/self", headers=headers).status_code == 200
    write = httpx.post(
        f"{server.url}/v1.1/users/{owner.id}/properties",
        headers=headers,
        json={"properties": "x"},
    )
    assert write.status_code == 403


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--owner", "nobody@example.com"],
            "error: No user with email nobody@example.com (HTTP 404, code 1201)",
        ),
        (["--permissions", "profile:DELETE"], "  permissions: Rights must be READ and/or WRITE in 'profile'"),
        (["--permissions", "gadgets:READ"], "  permissions: Unknown permission target 'gadgets'"),
    ],
)
def test_apps_create_bad_input(
    server: LiveServer, env: dict[str, str], args: list[str], message: str
) -> None:
    owner = make_user(server)
    base = {"--name": "Bad", "--owner": owner.email, "--redirect-uri": "https://x.test/cb"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [part for pair in base.items() for part in pair]
    assert message in fails(env, "apps", "create", *argv).splitlines()


def test_apps_rotate_secret(server: LiveServer, env: dict[str, str]) -> None:
    owner = make_user(server)
    app = ok(
        env,
        "apps",
        "create",
        "--name",
        "Rotating",
        "--owner",
        owner.email,
        "--redirect-uri",
        "https://x.test/",
    )
    rotated = ok(env, "apps", "rotate-secret", app["client_id"])
    assert rotated["client_id"] == app["client_id"]
    assert HEX32.match(rotated["client_secret"])
    assert rotated["client_secret"] != app["client_secret"]

    old = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "client_credentials"},
        auth=(app["client_id"], app["client_secret"]),
    )
    assert old.status_code == 401
    assert old.json()["error"] == "invalid_client"
    new = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "client_credentials"},
        auth=(app["client_id"], rotated["client_secret"]),
    )
    assert new.status_code == 200

    assert "Traceback" not in fails(env, "apps", "rotate-secret", "0" * 32)


# --- openapi and migrate ----------------------------------------------------------------------------


def test_openapi_prints_the_document(tmp_path: Path) -> None:
    result = run(cli_env(tmp_path, ""), "openapi")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "ThingCloud"
    assert "get" in document["paths"]["/v1.1/users/self"]
    assert "post" in document["paths"]["/token"]
    assert not (tmp_path / "thingcloud.db").exists()  # no server, no database


def migrate_three_at_once(env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(
            [THINGCLOUD, "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(3)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def test_migrate_three_at_once_on_sqlite(tmp_path: Path) -> None:
    results = migrate_three_at_once(cli_env(tmp_path, ""))
    for result in results:
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"database at revision {head()}\n"
    assert (tmp_path / "thingcloud.db").exists()


@pytest.mark.skipif(not TEST_DATABASE_URL, reason="needs THINGCLOUD_TEST_DATABASE_URL (PostgreSQL)")
def test_migrate_three_at_once_on_postgresql(tmp_path: Path) -> None:
    results = migrate_three_at_once(cli_env(tmp_path, scratch_database_url()))
    for result in results:
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"database at revision {head()}\n"


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://postgres:hunter2-secret@127.0.0.1:1/thingcloud"
    message = fails(cli_env(tmp_path, url), "users", "create", "--email", "a@b.cd", "--password", PASSWORD)
    assert message.startswith(
        "error: cannot use the database postgresql+asyncpg://postgres:***@127.0.0.1:1/thingcloud: "
    )
    assert "hunter2" not in message
