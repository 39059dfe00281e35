"""``thingcloud serve`` as a real process: the first-start message, JSON logs without secrets, graceful
shutdown on SIGTERM with a request in flight, and clear failures (port taken, database unreachable)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import free_port

THINGCLOUD = str(Path(sys.executable).parent / "thingcloud")
ADMIN = "admin@thingcloud.local"


class ServeProcess:
    """One ``thingcloud serve`` on a free port, its output captured to files (pipes could fill up)."""

    def __init__(self, data_dir: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        clean = {k: v for k, v in os.environ.items() if not k.startswith("THINGCLOUD_")}
        clean.update({"THINGCLOUD_DATA_DIR": str(data_dir), "THINGCLOUD_DATABASE_URL": "", **env})
        run_dir = data_dir.parent / f"{data_dir.name}-run-{self.port}"
        run_dir.mkdir(parents=True)
        self.stdout_path, self.stderr_path = run_dir / "stdout", run_dir / "stderr"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [THINGCLOUD, "serve", "--port", str(self.port), *args],
                env=clean,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr.splitlines()]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited early:\n{self.stderr}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not become ready:\n{self.stderr}")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[ServeProcess] = []

    def start(*args: str, data_dir: Path | None = None, **env: str) -> ServeProcess:
        process = ServeProcess(data_dir or tmp_path / "data", *args, **env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def console_client_id(text: str) -> str:
    found = re.search(r"^ +Console app +client_id ([0-9a-f]{32})$", text, re.M)
    assert found, text
    return found.group(1)


def first_start_credentials(text: str) -> tuple[str, str]:
    password = re.search(r"^ +Password +(\S+)$", text, re.M)
    assert password, text
    return password.group(1), console_client_id(text)


def password_grant(url: str, client_id: str, password: str) -> httpx.Response:
    form = {"grant_type": "password", "client_id": client_id, "username": ADMIN, "password": password}
    return httpx.post(f"{url}/token", data=form)


def test_first_start_shows_the_credentials_once(serve: Any, tmp_path: Path) -> None:
    first = serve()
    first.wait_ready()
    shown = first.stdout
    password, client_id = first_start_credentials(shown)
    assert f"Administrator   {ADMIN}" in shown

    saved = tmp_path / "data" / "first-start.txt"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_text().strip() == shown.strip()

    token = password_grant(first.url, client_id, password)
    assert token.status_code == 200, token.text
    me = httpx.get(
        f"{first.url}/v1.1/users/self", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["data"]["email"] == ADMIN
    assert first.terminate() == 0
    assert password not in first.stderr  # shown to the person, never logged

    second = serve()
    second.wait_ready()
    assert second.terminate() == 0
    assert second.stdout == ""
    assert "Password" not in second.stderr
    # The administrator still signs in with the password shown the first time.
    assert saved.read_text().strip() == shown.strip()


def test_logs_are_json_with_request_ids_and_no_secrets(serve: Any, tmp_path: Path) -> None:
    server = serve(THINGCLOUD_ADMIN_PASSWORD="admin-password-for-logs")
    server.wait_ready()
    client_id = console_client_id(server.stdout)
    token = password_grant(server.url, client_id, "admin-password-for-logs").json()["access_token"]
    refresh = "f" * 32

    in_query = httpx.get(
        f"{server.url}/v1.1/users/self",
        params={
            "Authorization": f"bearer {token}",
            "access_token": token,
            "refresh_token": refresh,
            "x": "1",
        },
    )
    failed = httpx.get(f"{server.url}/v1.1/users/self", headers={"Authorization": "Bearer " + "0" * 32})
    assert failed.status_code == 401
    assert server.terminate() == 0

    output = server.stdout + server.stderr
    for secret in (token, refresh, "admin-password-for-logs"):
        assert secret not in output

    logs = server.logs()  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in logs)
    database = f"sqlite+aiosqlite:///{(tmp_path / 'data' / 'thingcloud.db').as_posix()}"
    starting = next(e for e in logs if e["msg"].startswith("starting: listening on"))
    assert starting["msg"] == f"starting: listening on {server.url}, database {database}"
    assert starting["listen"] == f"127.0.0.1:{server.port}"
    assert starting["database"] == database

    access = [e for e in logs if e["logger"] == "thingcloud.access" and e["path"] == "/v1.1/users/self"]
    by_id = {e["request_id"]: e for e in access}
    logged = by_id[in_query.headers["x-request-id"]]
    assert logged["query"] == "Authorization=***&access_token=***&refresh_token=***&x=1"
    assert logged["status"] == in_query.status_code
    assert by_id[failed.headers["x-request-id"]]["status"] == 401
    assert any(e["msg"] == "thingcloud stopped" for e in logs)


def test_database_password_never_shown(serve: Any) -> None:
    closed = free_port()
    server = serve("--database-url", f"postgresql+asyncpg://postgres:hunter2-secret@127.0.0.1:{closed}/tc")
    assert server.proc.wait(timeout=60) == 1
    output = server.stdout + server.stderr
    assert "hunter2" not in output
    assert (
        f"error: cannot use the database postgresql+asyncpg://postgres:***@127.0.0.1:{closed}/tc: " in output
    )


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def requests_in_flight(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    found = re.search(r"^thingcloud_http_requests_in_flight (\S+)$", metrics, re.M)
    assert found, metrics
    return float(found.group(1))


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_sigterm_finishes_the_request_in_flight(serve: Any) -> None:
    server = serve(THINGCLOUD_ADMIN_PASSWORD="admin-password-sigterm")
    server.wait_ready()
    client_id = console_client_id(server.stdout)
    body = (
        f"grant_type=password&client_id={client_id}&username={ADMIN}&password=admin-password-sigterm".encode()
    )
    head = (
        f"POST /token HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(head + body[:10])  # the request has started; its body is still coming
        # In flight: this one and the /metrics request that reports it.
        wait_until(lambda: requests_in_flight(server.url) >= 2)
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not accepts_connections(server.port))  # no new connections ...
        time.sleep(0.5)
        assert server.proc.poll() is None  # ... but the request in flight is still being served
        conn.sendall(body[10:])
        response = b""
        while chunk := conn.recv(65536):
            response += chunk

    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", response
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["token_type"] == "bearer"
    assert server.proc.wait(timeout=10) == 0
    messages = [e["msg"] for e in server.logs()]
    assert messages[-3:] == [
        "thingcloud stopped",
        "Application shutdown complete.",
        f"Finished server process [{server.proc.pid}]",
    ]


def test_port_already_in_use(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THINGCLOUD_")}
    env["THINGCLOUD_DATA_DIR"] = str(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = subprocess.run(
            [THINGCLOUD, "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert process.returncode == 1
    assert process.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert not (tmp_path / "thingcloud.db").exists()


def test_websocket_compression_is_a_setting(serve: Any, tmp_path: Path) -> None:
    from websockets.sync.client import connect

    def negotiated(process: ServeProcess) -> str | None:
        process.wait_ready()
        url = process.url.replace("http://", "ws://") + "/v1.1/websocket"
        with connect(url, open_timeout=10) as ws:  # the client offers permessage-deflate
            assert ws.response is not None
            return ws.response.headers.get("Sec-WebSocket-Extensions")

    # Off by default (memory per idle socket), on when asked.
    assert negotiated(serve(data_dir=tmp_path / "plain", THINGCLOUD_MQTT_ENABLED="0")) is None
    deflate = serve(
        data_dir=tmp_path / "deflate", THINGCLOUD_MQTT_ENABLED="0", THINGCLOUD_WEBSOCKET_COMPRESSION="1"
    )
    assert "permessage-deflate" in (negotiated(deflate) or "")
