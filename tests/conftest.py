"""Test fixtures: one real ThingCloud server (uvicorn, lifespan and all) per test session.

The server runs in a thread on a free port, against SQLite in a temporary directory, or against
PostgreSQL when ``THINGCLOUD_TEST_DATABASE_URL`` is set (its schema is wiped first). Tests talk to it
over HTTP; factories that need to create accounts call the same service functions the CLI calls, on
the server's own event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text

from thingcloud.app import create_app
from thingcloud.clock import ManualClock
from thingcloud.runtime import Runtime
from thingcloud.settings import Settings

T = TypeVar("T")

TEST_DATABASE_URL = os.environ.get("THINGCLOUD_TEST_DATABASE_URL", "")
ADMIN_PASSWORD = "admin-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reset_postgres(url: str) -> None:
    """Drop everything in the test database so each session starts from an empty schema."""
    sync_url = url.replace("+asyncpg", "+psycopg") if "+asyncpg" in url else url
    try:
        engine = create_engine(sync_url)
    except Exception:  # psycopg not installed: use asyncpg through asyncio
        engine = None
    if engine is not None:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
        return

    async def drop() -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        aengine = create_async_engine(url)
        async with aengine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await aengine.dispose()

    asyncio.run(drop())


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": TEST_DATABASE_URL,
        "secret_key": "test-secret-key-that-is-long-enough",
        "admin_password": ADMIN_PASSWORD,
        "log_json": True,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class LiveServer:
    url: str
    app: Any
    clock: ManualClock
    settings: Settings
    loop: asyncio.AbstractEventLoop

    @property
    def rt(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    def call(self, work: Callable[[Runtime], Awaitable[T]], timeout: float = 30) -> T:
        """Run a service call on the server's event loop (what the CLI does in its own process)."""
        future = asyncio.run_coroutine_threadsafe(_invoke(work, self.rt), self.loop)
        return future.result(timeout=timeout)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


async def _invoke(work: Callable[[Runtime], Awaitable[T]], rt: Runtime) -> T:
    return await work(rt)


class ServerThread:
    """A uvicorn server in a background thread, started and stopped like the real one."""

    def __init__(self, app: Any, port: int) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            proxy_headers=False,  # as `thingcloud serve`: trusted proxies are our setting
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> asyncio.AbstractEventLoop:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server failed to start")
            time.sleep(0.02)
        assert self.loop is not None
        return self.loop

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_live(
    data_dir: Path, *, run_migrations: bool = True, **overrides: Any
) -> tuple[LiveServer, ServerThread]:
    port = free_port()
    # ``public_url`` may be overridden (an https URL, to test Secure cookies).
    settings = make_settings(
        data_dir,
        # MQTT on a free port too: CI machines run Mosquitto on 1883.
        **{"port": port, "public_url": f"http://127.0.0.1:{port}", "mqtt_port": free_port(), **overrides},
    )
    clock = ManualClock()
    app = create_app(settings, clock=clock, run_migrations=run_migrations)
    thread = ServerThread(app, port)
    loop = thread.start()
    return LiveServer(f"http://127.0.0.1:{port}", app, clock, settings, loop), thread


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    if TEST_DATABASE_URL:
        reset_postgres(TEST_DATABASE_URL)
    server, thread = start_live(tmp_path_factory.mktemp("live"))
    yield server
    thread.stop()


@pytest.fixture()
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


def scratch_database_url() -> str:
    """An empty PostgreSQL database beside the test one (``<name>2``, created on first use), for tests
    that need a database of their own: concurrent migrations, a server on an unmigrated schema, an
    outage. Only meaningful when ``THINGCLOUD_TEST_DATABASE_URL`` is set."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    url = make_url(TEST_DATABASE_URL)
    name = f"{url.database}2"

    async def ensure() -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            found = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if not found:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await engine.dispose()

    asyncio.run(ensure())
    scratch = url.set(database=name).render_as_string(hide_password=False)
    reset_postgres(scratch)
    return scratch
