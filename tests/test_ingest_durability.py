"""A 200 from ``POST /v1.1/messages`` means committed: concurrent senders against a real ``thingcloud
serve`` that is killed with SIGKILL (or stopped with SIGTERM) mid-stream, then every acknowledged
mid is read back from the database directly. And a durable feed consumer that was stopped while
messages were ingested catches up with each of them exactly once, in commit order."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import create_async_engine

from thingcloud import tables as t
from thingcloud.feed import FeedEntry
from thingcloud.runtime import Runtime

from .conftest import TEST_DATABASE_URL, LiveServer, scratch_database_url
from .factories import LAMP_MANIFEST
from .test_feed import Recorder
from .test_messages_ingest import feed_of, mid_of, new_lamp, stored_messages
from .test_serve import ServeProcess, console_client_id, password_grant

SENDERS = 8
ADMIN_PASSWORD = "admin-password-durability"


@dataclass
class Cloud:
    """A ``thingcloud serve`` subprocess on a database of its own, restartable on that database."""

    data_dir: Path
    database_url: str  # what the server is given ("" = SQLite in data_dir)
    started: list[ServeProcess] = field(default_factory=list)

    def start(self) -> ServeProcess:
        env = {
            "THINGCLOUD_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "THINGCLOUD_RATE_LIMITS": "off",
            "THINGCLOUD_DATABASE_URL": self.database_url,
        }
        server = ServeProcess(self.data_dir, **env)
        self.started.append(server)
        server.wait_ready()
        return server

    @property
    def reader_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'thingcloud.db').as_posix()}"

    def stored(self) -> tuple[list[str], list[str | None]]:
        """Every stored mid, and the ref of every message entry of the feed, read by the test itself."""

        async def read() -> tuple[list[str], list[str | None]]:
            engine = create_async_engine(self.reader_url)
            try:
                async with engine.connect() as conn:
                    mids = list((await conn.execute(select(t.messages.c.mid))).scalars())
                    refs = list(
                        (await conn.execute(select(t.feed.c.ref).where(t.feed.c.kind == "message"))).scalars()
                    )
            finally:
                await engine.dispose()
            return mids, refs

        return asyncio.run(read())


@pytest.fixture()
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    made = Cloud(tmp_path / "data", scratch_database_url() if TEST_DATABASE_URL else "")
    yield made
    for server in made.started:
        server.kill()


def provision(server: ServeProcess, count: int) -> list[str]:
    """Devices of a new lamp type, made over the API by the first-start administrator; their tokens."""
    token = password_grant(server.url, console_client_id(server.stdout), ADMIN_PASSWORD).json()[
        "access_token"
    ]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        created = api.post(
            "/v1.1/devicetypes", json={"name": "Lamp", "uniqueName": f"com.example.l{uuid.uuid4().hex}"}
        )
        assert created.status_code == 200, created.text
        dtid = created.json()["data"]["id"]
        assert api.post(f"/v1.1/devicetypes/{dtid}/manifests", json=LAMP_MANIFEST).status_code == 200
        tokens = []
        for n in range(count):
            device = api.post("/v1.1/devices", json={"dtid": dtid, "name": f"Lamp {n}"})
            assert device.status_code == 200, device.text
            issued = api.put(f"/v1.1/devices/{device.json()['data']['id']}/tokens")
            assert issued.status_code == 200, issued.text
            tokens.append(issued.json()["data"]["accessToken"])
    return tokens


class Senders:
    """Threads that post messages as fast as the server answers until it goes away; they keep every
    acknowledged mid (with the body it acknowledged)."""

    def __init__(self, url: str, tokens: list[str]) -> None:
        self.acked: list[tuple[str, str, dict[str, object]]] = []  # (mid, device token, body)
        self.refusals: list[int] = []
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._send, args=(url, token), daemon=True) for token in tokens
        ]
        for thread in self.threads:
            thread.start()

    def _send(self, url: str, token: str) -> None:
        base = int(time.time() * 1000) - 3_600_000
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            for n in range(1_000_000):
                body: dict[str, object] = {"ts": base + n, "data": {"temp": n, "state": n % 2 == 0}}
                try:
                    response = client.post("/v1.1/messages", json=body)
                except httpx.TransportError:
                    return  # the server is gone
                with self.lock:
                    if response.status_code == 200:
                        self.acked.append((response.json()["data"]["mid"], token, body))
                    else:  # only a server shutting down may refuse (503), never a 500
                        self.refusals.append(response.status_code)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} messages acknowledged"
            time.sleep(0.01)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a sender is still waiting for an answer"


def assert_all_acknowledged_stored(cloud: Cloud, senders: Senders) -> None:
    mids, refs = cloud.stored()
    acked = {mid for mid, _, _ in senders.acked}
    assert len(acked) == len(senders.acked)
    assert acked <= set(mids), f"{len(acked - set(mids))} acknowledged messages lost"
    assert len(mids) == len(set(mids))
    # The feed entry commits with its message: one each, even across the crash.
    assert sorted(mids) == sorted(ref or "" for ref in refs)
    assert set(senders.refusals) <= {503}


def test_sigkill_loses_no_acknowledged_message(cloud: Cloud) -> None:
    server = cloud.start()
    tokens = provision(server, SENDERS)
    senders = Senders(server.url, tokens)
    senders.wait_for(400)
    time.sleep(0.2)  # mid-stream, not at a batch boundary we chose
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    senders.join()
    assert server.proc.returncode == -signal.SIGKILL

    restarted = cloud.start()
    assert_all_acknowledged_stored(cloud, senders)
    # The restarted server takes new messages, and still knows the last acknowledged one as sent.
    last_mid, token, body = senders.acked[-1]
    with httpx.Client(base_url=restarted.url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert mid_of(client.post("/v1.1/messages", json=body)) == last_mid
        new = mid_of(client.post("/v1.1/messages", json={"data": {"temp": 1}}))
    assert new in cloud.stored()[0]
    assert restarted.terminate() == 0


def test_sigterm_loses_no_acknowledged_message(cloud: Cloud) -> None:
    server = cloud.start()
    senders = Senders(server.url, provision(server, SENDERS))
    senders.wait_for(400)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    senders.join()
    assert_all_acknowledged_stored(cloud, senders)


def test_stopped_consumer_catches_up_on_ingested_messages(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    name = f"test.ingest.{uuid.uuid4().hex}"
    first, second = Recorder(), Recorder()

    def mine(recorder: Recorder) -> list[FeedEntry]:
        return [e for e in recorder.entries if e.did == lamp.did]

    def wait_for(recorder: Recorder, count: int) -> None:
        deadline = time.monotonic() + 15
        while len(mine(recorder)) < count:
            assert time.monotonic() < deadline, "the consumer did not catch up"
            time.sleep(0.02)
        time.sleep(0.3)  # and nothing more arrives

    def run(recorder: Recorder) -> None:
        async def add(rt: Runtime) -> None:
            await rt.feed.add(name, recorder, batch=7, start_at="latest")

        live.call(add)

    def stop() -> None:
        async def remove(rt: Runtime) -> None:
            await rt.feed.remove(name)

        live.call(remove)

    def send(n: int) -> str:
        return mid_of(
            client.post("/v1.1/messages", headers=lamp.device, json={"ts": 1_000 + n, "data": {"temp": n}})
        )

    try:
        run(first)
        before = [send(n) for n in range(5)]
        wait_for(first, 5)
        stop()  # its checkpoint stays in the database

        with ThreadPoolExecutor(SENDERS) as pool:
            during = list(pool.map(send, range(5, 45)))
        assert send(5) == during[0]  # a re-send: no new entry
        assert (
            client.post("/v1.1/messages", headers=lamp.device, json={"data": {"temp": "x"}}).status_code
            == 400
        )
        run(second)
        wait_for(second, 40)
    finally:
        stop()

        async def forget(rt: Runtime) -> None:  # a leftover checkpoint would hold back feed trimming
            async with rt.db.write() as conn:
                await conn.execute(delete(t.feed_checkpoints).where(t.feed_checkpoints.c.consumer == name))

        live.call(forget)

    assert [e.ref for e in mine(first)] == before
    caught_up = mine(second)
    assert sorted(e.ref or "" for e in caught_up) == sorted(during)  # every one, exactly once
    # In commit (seq) order, the order of the feed itself; each entry is the stored message.
    assert [e.seq for e in caught_up] == sorted(e.seq for e in caught_up)
    assert mine(first)[-1].seq < caught_up[0].seq
    assert [(e.kind, e.ref, e.payload) for e in caught_up] == feed_of(live, lamp.did)[5:]
    assert {e.ref: e.payload for e in caught_up} == {r["mid"]: r for r in stored_messages(live, lamp.did)[5:]}
