"""Deliveries survive a crash: a ``thingcloud serve`` process killed (SIGKILL) while it is POSTing a
notification; the next process retries the same notification once the dead one's job lease expires."""

from __future__ import annotations

from pathlib import Path

import httpx

from .callback_server import CallbackServer
from .conftest import TEST_DATABASE_URL, scratch_database_url, start_live
from .test_serve import ServeProcess
from .test_subscriptions import Env, owner, subscribe

SECRET = "test-secret-key-that-is-long-enough"


def test_notification_in_flight_when_killed_is_delivered_after_restart(tmp_path: Path) -> None:
    database_url = scratch_database_url() if TEST_DATABASE_URL else ""
    data_dir = tmp_path / "data"
    cb = CallbackServer().start()
    cb.hang_seconds = 15
    try:
        # Accounts, device and a validated subscription, made through an in-process server.
        live, thread = start_live(
            data_dir, database_url=database_url, secret_key=SECRET, allow_insecure_callbacks=True
        )
        with live.client() as http:
            o = owner(Env(live, cb, http))
            sub = subscribe(Env(live, cb, http), o, "restart", sdid=o.did)
        thread.stop()

        env = {
            "THINGCLOUD_SECRET_KEY": SECRET,
            "THINGCLOUD_DATABASE_URL": database_url,
            "THINGCLOUD_ALLOW_INSECURE_CALLBACKS": "1",
            "THINGCLOUD_NOTIFICATION_TIMEOUT": "60",
            "THINGCLOUD_JOB_LEASE_SECONDS": "2",
            "THINGCLOUD_FEED_LEASE_SECONDS": "2",
            "THINGCLOUD_JOB_POLL_INTERVAL": "0.2",
            "THINGCLOUD_FEED_POLL_INTERVAL": "0.2",
            "THINGCLOUD_JOB_RETRY_BASE_SECONDS": "0.2",
        }
        cb.behaviour["restart"] = ["hang", "ok"]
        first = ServeProcess(data_dir, **env)
        try:
            first.wait_ready()
            sent = httpx.post(
                f"{first.url}/v1.1/messages",
                headers=o.user.headers,
                json={"sdid": o.did, "type": "message", "data": {"temp": 5.0}},
            )
            assert sent.status_code == 200, sent.text
            mid = sent.json()["data"]["mid"]
            in_flight = cb.wait("restart", 1, signed=True)[0]  # the POST is hanging now
        finally:
            first.kill()
        assert first.proc.returncode != 0

        second = ServeProcess(data_dir, **env)
        try:
            second.wait_ready()
            delivered = cb.wait("restart", 2, signed=True, timeout=60)[1]
            assert delivered.json["id"] == in_flight.json["id"]
            assert delivered.json["subscriptionId"] == sub["id"]
            assert delivered.signature_valid
            page = httpx.get(
                f"{second.url}/v1.1/notifications/{delivered.json['id']}/messages", headers=o.user.headers
            )
            assert [m["mid"] for m in page.json()["data"]] == [mid]
        finally:
            second.terminate()
    finally:
        cb.stop()
