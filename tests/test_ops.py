"""Operations over HTTP: health and readiness, Prometheus metrics, request ids, CORS, and a database
outage answered with 503 and the ARTIK error body (a real cut connection, through a TCP proxy)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url

from thingcloud.migrate import alembic_config
from thingcloud.runtime import Runtime
from thingcloud.settings import Settings

from .conftest import TEST_DATABASE_URL, LiveServer, free_port, scratch_database_url, start_live
from .factories import make_user

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def migrations_head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_the_current_revision(live: LiveServer, client: httpx.Client) -> None:
    async def stored_revision(rt: Runtime) -> str:
        async with rt.db.read() as conn:
            return str((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one())

    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["revision"] == migrations_head() == live.call(stored_revision)
    assert body["database"] == ("postgresql" if TEST_DATABASE_URL else "sqlite")


def test_readyz_503_while_migrations_are_pending(tmp_path: Path) -> None:
    database_url = scratch_database_url() if TEST_DATABASE_URL else ""
    server, thread = start_live(tmp_path, run_migrations=False, database_url=database_url)
    try:
        response = httpx.get(f"{server.url}/readyz")
        assert response.status_code == 503
        assert response.json() == {"status": "migrations pending", "current": None, "head": migrations_head()}
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        thread.stop()


def test_readyz_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    closed = free_port()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed}/nowhere"
    server, thread = start_live(tmp_path, run_migrations=False, database_url=url)
    try:
        response = httpx.get(f"{server.url}/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        # Liveness does not depend on the database: the process itself is fine.
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        thread.stop()


def test_metrics_count_requests_by_route_template(live: LiveServer, client: httpx.Client) -> None:
    user = make_user(live)
    for _ in range(3):
        assert client.get(f"/v1.1/users/{user.id}/properties", headers=user.headers).status_code in (200, 404)
    assert client.get("/v1.1/users/self").status_code == 401

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    metrics = response.text
    route = "/v1.1/users/{uid}/properties"
    counted = re.findall(
        r'^thingcloud_http_requests_total\{method="GET",route="'
        + re.escape(route)
        + r'",status="(\d+)"\} (\S+)$',
        metrics,
        re.M,
    )
    assert sum(float(n) for _, n in counted) >= 3
    assert user.id not in metrics  # the concrete id never becomes a label
    assert re.search(
        r'^thingcloud_http_requests_total\{method="GET",route="/v1.1/users/self",status="401"\} [1-9]',
        metrics,
        re.M,
    )
    assert re.search(
        r'^thingcloud_http_request_duration_seconds_bucket\{le="\+Inf",method="GET",route="'
        + re.escape(route)
        + r'"\} [1-9]',
        metrics,
        re.M,
    )
    assert re.search(
        r'^thingcloud_http_request_duration_seconds_count\{method="GET",route="' + re.escape(route) + r'"\}',
        metrics,
        re.M,
    )
    assert "thingcloud_http_requests_in_flight" in metrics


def test_unmatched_paths_share_one_metrics_label(client: httpx.Client) -> None:
    assert client.get("/no/such/path/7f3a").status_code == 404
    metrics = client.get("/metrics").text
    assert "/no/such/path/7f3a" not in metrics
    assert re.search(
        r'^thingcloud_http_requests_total\{method="GET",route="unmatched",status="404"\}', metrics, re.M
    )


def test_request_id_header_matches_the_error_body(client: httpx.Client) -> None:
    response = client.get("/v1.1/users/self", headers={"Authorization": "Bearer " + "0" * 32})
    assert response.status_code == 401
    request_id = response.headers["x-request-id"]
    assert HEX32.match(request_id)
    assert response.json()["error"]["id"] == request_id
    # Every response has its own id.
    assert client.get("/healthz").headers["x-request-id"] != request_id


def test_cors_headers_on_every_response(client: httpx.Client) -> None:
    response = client.get("/v1.1/users/self", headers={"Origin": "https://dashboard.example"})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "*"
    assert "X-Rate-Limit-Limit" in response.headers["access-control-expose-headers"]


def test_cors_preflight(client: httpx.Client) -> None:
    response = client.options(
        "/v1.1/users/self",
        headers={
            "Origin": "https://dashboard.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "PUT", "DELETE", "OPTIONS"} <= methods
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed


# --- A database outage ------------------------------------------------------------------------------


class CuttableProxy:
    """A TCP forwarder in front of PostgreSQL; ``cut()`` drops every connection and stops listening,
    as a network outage or a database restart would, and ``restore()`` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def restore(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
            listener, self._listener = self._listener, None
        for sock in [*sockets, *([listener] if listener else [])]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture()
def proxied_server(tmp_path: Path) -> Iterator[tuple[LiveServer, CuttableProxy]]:
    if not TEST_DATABASE_URL:
        pytest.skip("the outage is a cut connection to PostgreSQL: set THINGCLOUD_TEST_DATABASE_URL")
    url = make_url(scratch_database_url())
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.restore()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    server, thread = start_live(tmp_path, database_url=proxied)
    try:
        yield server, proxy
    finally:
        thread.stop()
        proxy.cut()


def test_database_outage_is_a_503_with_the_error_body(
    proxied_server: tuple[LiveServer, CuttableProxy],
) -> None:
    server, proxy = proxied_server
    user = make_user(server)
    with server.client() as client:
        assert client.get("/v1.1/users/self", headers=user.headers).status_code == 200

        proxy.cut()
        response = client.get("/v1.1/users/self", headers=user.headers)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == 503
        assert error["message"] == "Service temporarily unavailable, please retry"
        assert error["id"] == response.headers["x-request-id"]
        assert response.headers["retry-after"] == "1"
        # A token that cannot be checked is not an invalid token: still 503, never 401.
        unknown = client.get("/v1.1/users/self", headers={"Authorization": "Bearer " + "1" * 32})
        assert unknown.status_code == 503
        assert client.get("/readyz").status_code == 503

        proxy.restore()
        response = client.get("/v1.1/users/self", headers=user.headers)
        assert response.status_code == 200
        assert response.json()["data"]["id"] == user.id


def test_readme_documents_every_setting() -> None:
    """The configuration table in README.md lists every THINGCLOUD_* setting, and no stale one."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = set(re.findall(r"^\| `THINGCLOUD_([A-Z_]+)` \|", readme, re.M))
    assert rows == {name.upper() for name in Settings.model_fields}
