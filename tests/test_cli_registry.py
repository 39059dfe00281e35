"""``thingcloud orgs``, ``thingcloud devicetypes`` and ``thingcloud apps create --organization``, run as real
subprocesses against the database of a live test server whose HTTP API then shows the effect."""

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

from .conftest import LiveServer, start_live
from .factories import App, app_token, make_user

THINGCLOUD = str(Path(sys.executable).parent / "thingcloud")
ERROR_LINE = re.compile(r"error: (?P<message>.*) \(HTTP (?P<status>\d+), code (?P<code>\d+)\)")
MANIFEST = {
    "fields": [{"name": "temp", "valueClass": "Double", "unit": "Cel"}],
    "actions": [{"name": "reset"}],
}


@pytest.fixture(scope="module")
def server(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """This module's own server (on PostgreSQL it shares ``live``'s database, which ``live`` reset)."""
    srv, thread = start_live(tmp_path_factory.mktemp("cli-registry"))
    yield srv
    thread.stop()


@pytest.fixture()
def env(server: LiveServer) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("THINGCLOUD_")}
    values["THINGCLOUD_DATA_DIR"] = str(server.settings.data_dir)
    values["THINGCLOUD_DATABASE_URL"] = server.settings.resolved_database_url
    values["THINGCLOUD_SECRET_KEY"] = server.settings.secret_key
    return values


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [THINGCLOUD, *args], env=env, capture_output=True, text=True, timeout=120, input=stdin or ""
    )


def ok(env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    result = run(env, *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fails(env: dict[str, str], *args: str) -> dict[str, Any]:
    """A command that must fail cleanly: exit 1, a readable message on stderr, nothing on stdout.

    Returns the parsed ``error: <message> (HTTP <status>, code <code>)`` line and its field lines.
    """
    result = run(env, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    first, *rest = result.stderr.rstrip("\n").split("\n")
    found = ERROR_LINE.fullmatch(first)
    assert found, result.stderr
    fields = [line.strip().split(": ", 1) for line in rest]
    return {
        "message": found["message"],
        "status": int(found["status"]),
        "code": int(found["code"]),
        "fields": {name: messages for name, messages in fields},
    }


def get(server: LiveServer, path: str, token: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v1.1{path}", headers={"Authorization": f"Bearer {token}"})


def test_orgs(server: LiveServer, env: dict[str, str]) -> None:
    admin, dev = make_user(server), make_user(server)
    org = ok(env, "orgs", "create", "--name", "Acme", "--owner", admin.email, "--description", "Lamps")
    assert len(org["id"]) == 32
    assert (org["name"], org["description"], org["createdBy"], org["role"]) == (
        "Acme",
        "Lamps",
        admin.id,
        "administrator",
    )
    got = get(server, f"/organizations/{org['id']}", admin.token)
    assert got.status_code == 200
    assert got.json()["data"] == org

    member = ok(env, "orgs", "add-member", org["id"], "--email", dev.email, "--role", "developer")
    assert (member["uid"], member["email"], member["role"]) == (dev.id, dev.email, "developer")
    members = get(server, f"/organizations/{org['id']}/members", dev.token).json()
    assert [(m["uid"], m["role"]) for m in members["data"]["members"]] == [
        (admin.id, "administrator"),
        (dev.id, "developer"),
    ]

    assert fails(env, "orgs", "add-member", org["id"], "--email", "nobody@example.com")["code"] == 1201
    assert fails(env, "orgs", "add-member", org["id"], "--email", dev.email)["code"] == 409
    bad_role = fails(env, "orgs", "add-member", org["id"], "--email", admin.email, "--role", "boss")
    assert (bad_role["code"], bad_role["fields"]) == (
        4001,
        {"role": "Must be one of administrator, developer"},
    )
    assert fails(env, "orgs", "create", "--name", "X", "--owner", "nobody@example.com")["code"] == 1201

    # An application of the organization: its token sees the organization.
    app = ok(
        env, "apps", "create", "--name", "Org app", "--owner", admin.email,
        "--redirect-uri", "http://127.0.0.1:9/cb", "--organization", org["id"],
    )  # fmt: skip
    assert app["organization"] == org["id"]
    token = app_token(server, App(app["client_id"], app["client_secret"], admin.id, "http://127.0.0.1:9/cb"))
    assert get(server, f"/organizations/{org['id']}", token).status_code == 200
    outsider = make_user(server)
    refused = fails(
        env, "apps", "create", "--name", "Not mine", "--owner", outsider.email,
        "--redirect-uri", "http://127.0.0.1:9/cb", "--organization", org["id"],
    )  # fmt: skip
    assert refused["code"] == 404


def test_devicetypes(server: LiveServer, env: dict[str, str], tmp_path: Path) -> None:
    owner, stranger = make_user(server), make_user(server)
    unique_name = f"com.example.cli{os.urandom(5).hex()}"
    dt = ok(
        env, "devicetypes", "create", "--owner", owner.email, "--name", "CLI lamp",
        "--unique-name", unique_name, "--published", "--description", "From the CLI",
        "--tag", "lamp", "--tag", "cli",
    )  # fmt: skip
    assert dt["id"].startswith("dt")
    assert (dt["uniqueName"], dt["uid"], dt["published"], dt["latestVersion"]) == (
        unique_name,
        owner.id,
        True,
        0,
    )
    assert dt["tags"] == [{"name": "cli", "isCategory": False}, {"name": "lamp", "isCategory": False}]
    seen = get(server, f"/devicetypes/{dt['id']}", stranger.token)
    assert seen.status_code == 200
    assert seen.json()["data"] == {**dt, "ownedByCurrentUser": False}

    duplicate = fails(
        env, "devicetypes", "create", "--owner", owner.email, "--name", "Again", "--unique-name", unique_name
    )
    assert duplicate["code"] == 409
    bad = fails(
        env, "devicetypes", "create", "--owner", owner.email, "--name", "Bad", "--unique-name", "nodots"
    )
    assert (bad["code"], list(bad["fields"])) == (4001, ["uniqueName"])

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    assert ok(env, "devicetypes", "add-manifest", dt["id"], str(manifest)) == {"version": 1}
    assert ok(env, "devicetypes", "add-manifest", dt["id"], "-", stdin=json.dumps(MANIFEST)) == {"version": 2}
    versions = get(server, f"/devicetypes/{dt['id']}/availablemanifestversions", stranger.token)
    assert versions.json() == {"data": {"versions": [1, 2]}}
    properties = get(server, f"/devicetypes/{dt['id']}/manifests/2/properties", stranger.token).json()
    assert properties["data"]["properties"] == {
        "fields": {"temp": {"type": "Double", "unit": "Cel", "isCollection": False, "description": ""}},
        "actions": {"reset": {"description": "", "parameters": {}}},
    }

    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"fields": [{"name": "x"}, {"valueClass": "Long"}]}))
    error = fails(env, "devicetypes", "add-manifest", dt["id"], str(invalid))
    assert error["message"] == "The manifest content is invalid"
    assert error["fields"] == {
        "fields.0.valueClass": "Required parameter",
        "fields.1.name": "Required parameter",
    }
    not_json = tmp_path / "not.json"
    not_json.write_text("{fields")
    assert fails(env, "devicetypes", "add-manifest", dt["id"], str(not_json))["code"] == 4001
    assert fails(env, "devicetypes", "add-manifest", "dtmissing", str(manifest))["code"] == 1101
    assert get(server, f"/devicetypes/{dt['id']}", owner.token).json()["data"]["latestVersion"] == 2


def test_organization_devicetypes(server: LiveServer, env: dict[str, str]) -> None:
    admin, outsider = make_user(server), make_user(server)
    oid = ok(env, "orgs", "create", "--name", "Org", "--owner", admin.email)["id"]
    unique_name = f"com.example.org{os.urandom(5).hex()}"
    dt = ok(
        env, "devicetypes", "create", "--owner", admin.email, "--organization", oid,
        "--name", "Org lamp", "--unique-name", unique_name,
    )  # fmt: skip
    assert (dt["uid"], dt["oid"], dt["published"]) == (None, oid, False)
    assert get(server, f"/devicetypes/{dt['id']}", admin.token).status_code == 200
    assert get(server, f"/devicetypes/{dt['id']}", outsider.token).status_code == 403
    refused = fails(
        env, "devicetypes", "create", "--owner", outsider.email, "--organization", oid,
        "--name", "Sneaky", "--unique-name", f"{unique_name}.sneaky",
    )  # fmt: skip
    assert (refused["status"], refused["message"]) == (
        403,
        f"{outsider.email} is not a member of organization {oid}",
    )
