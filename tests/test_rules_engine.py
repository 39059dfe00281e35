"""The rules engine end to end: duration conditions on the live server's clock (acceptUpdate both
ways, a condition that stops holding), a rule firing an action that a device connected over
``/v1.1/websocket`` receives, and duration timers surviving ``kill -9`` of a real ``thingcloud serve``
(fired on time, at once when due while down, or recorded as missed beyond the maximum lateness)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import TEST_DATABASE_URL, LiveServer, scratch_database_url
from .test_messages_ingest import stored_actions
from .test_rules import SENSOR_MANIFEST, Home, created, executions, new_home, simple, trace, wait_for
from .test_serve import ServeProcess, console_client_id, password_grant
from .test_websocket_device import open_ws, recv, registered


@pytest.fixture()
def home(live: LiveServer) -> Home:
    return new_home(live)


def with_duration(rule: dict[str, Any], seconds: int, accept_update: bool = True) -> dict[str, Any]:
    rule["if"]["and"][0]["duration"] = {"value": seconds, "acceptUpdate": accept_update}
    return rule


def armed(client: httpx.Client, home: Home, rule_id: str, evaluations: int) -> list[dict[str, Any]]:
    return wait_for(lambda: (e := trace(client, home.user, rule_id)) and len(e) >= evaluations and e)  # type: ignore[no-any-return]


def fired_count(client: httpx.Client, home: Home, rule_id: str) -> int:
    return int(executions(client, home.user, rule_id)["countApply"])


def test_duration_fires_once_held_long_enough(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src, dst = home.devices[0], home.devices[1]
    rule = created(client, home.user, with_duration(simple(src, dst, ">", 30), 60))
    home.send(live, src, {"temp": 35})
    assert armed(client, home, rule["id"], 1)[0]["reason"] == "duration timer armed"
    live.clock.advance(30)
    home.send(live, src, {"temp": 36})  # still above: acceptUpdate keeps the timer running
    assert armed(client, home, rule["id"], 2)[0]["fired"] is False
    time.sleep(1.5)
    assert fired_count(client, home, rule["id"]) == 0
    live.clock.advance(31)
    wait_for(lambda: fired_count(client, home, rule["id"]) == 1)
    wait_for(lambda: trace(client, home.user, rule["id"])[0]["cause"] == "timer")  # written after the count
    assert len(stored_actions(live, dst)) == 1


def test_duration_without_accept_update_restarts(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src, dst = home.devices[0], home.devices[1]
    rule = created(client, home.user, with_duration(simple(src, dst, ">", 30), 60, accept_update=False))
    home.send(live, src, {"temp": 35})
    armed(client, home, rule["id"], 1)
    live.clock.advance(40)
    home.send(live, src, {"temp": 35})  # any new value restarts the wait
    armed(client, home, rule["id"], 2)
    live.clock.advance(25)  # the first timer is due now, but the condition was restarted
    time.sleep(2)
    assert fired_count(client, home, rule["id"]) == 0
    live.clock.advance(40)
    wait_for(lambda: fired_count(client, home, rule["id"]) == 1)


def test_duration_cancelled_when_the_condition_stops(
    live: LiveServer, client: httpx.Client, home: Home
) -> None:
    src, dst = home.devices[0], home.devices[1]
    rule = created(client, home.user, with_duration(simple(src, dst, ">", 30), 60))
    home.send(live, src, {"temp": 35})
    armed(client, home, rule["id"], 1)
    home.send(live, src, {"temp": 20})
    armed(client, home, rule["id"], 2)
    live.clock.advance(61)
    time.sleep(2)
    assert fired_count(client, home, rule["id"]) == 0
    assert stored_actions(live, dst) == []


def test_rule_action_reaches_a_websocket_device(live: LiveServer, client: httpx.Client, home: Home) -> None:
    src, dst = home.devices[0], home.devices[1]
    rule = simple(src, dst, ">", 30)
    rule["then"] = [{"ddid": dst, "action": "setText", "parameters": {"text": {"value": "too hot"}}}]
    created(client, home.user, rule)
    with open_ws(live, "/v1.1/websocket", ack="true") as ws:
        registered(ws, dst, home.tokens[dst])
        home.send(live, src, {"temp": 45})
        frame = recv(ws)
    assert frame["type"] == "action" and frame["ddid"] == dst
    assert frame["data"] == {"actions": [{"name": "setText", "parameters": {"text": "too hot"}}]}
    assert [a["mid"] for a in stored_actions(live, dst)] == [frame["mid"]]


# --- restart durability -----------------------------------------------------------------------------


class Cloud:
    """A ``thingcloud serve`` that can be killed and restarted on the same data, with a signed-in admin."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "data"
        database = scratch_database_url() if TEST_DATABASE_URL else ""
        self.env = {
            "THINGCLOUD_DATABASE_URL": database,
            "THINGCLOUD_ADMIN_PASSWORD": "admin-password-rules",
            "THINGCLOUD_JOB_POLL_INTERVAL": "0.2",
            "THINGCLOUD_FEED_LEASE_SECONDS": "3",
            "THINGCLOUD_MQTT_ENABLED": "false",
            **env,
        }
        self.process = self.start()
        try:
            client_id = console_client_id(self.process.stdout)
            token = password_grant(self.url, client_id, "admin-password-rules").json()["access_token"]
        except BaseException:
            self.process.kill()  # never leave a server behind
            raise
        self.headers = {"Authorization": f"Bearer {token}"}

    def start(self) -> ServeProcess:
        process = ServeProcess(self.data_dir, **self.env)
        process.wait_ready()
        self.process = process
        return process

    @property
    def url(self) -> str:
        return self.process.url

    def call(self, method: str, path: str, **kw: Any) -> Any:
        response = httpx.request(
            method, f"{self.url}{path}", headers=kw.pop("headers", self.headers), timeout=30, **kw
        )
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def setup_rule(self, seconds: int) -> tuple[str, str, str, str]:
        """(rule id, source device, its token, target device) for ``temp > 30 for <seconds>``."""
        me = self.call("GET", "/v1.1/users/self")["id"]
        dt = self.call(
            "POST",
            "/v1.1/devicetypes",
            json={"name": "Sensor", "uniqueName": f"com.example.s{time.time_ns()}"},
        )
        self.call("POST", f"/v1.1/devicetypes/{dt['id']}/manifests", json=SENSOR_MANIFEST)
        src = self.call("POST", "/v1.1/devices", json={"dtid": dt["id"], "name": "Source"})["id"]
        dst = self.call("POST", "/v1.1/devices", json={"dtid": dt["id"], "name": "Target"})["id"]
        token = self.call("PUT", f"/v1.1/devices/{src}/tokens")["accessToken"]
        rule = self.call(
            "POST",
            f"/v1.1/rules?userId={me}",
            json={"name": "Hot", "rule": with_duration(simple(src, dst), seconds)},
        )
        return rule["id"], src, token, dst

    def arm(self, rule_id: str, src: str, token: str) -> int:
        """Send a reading that starts the duration; returns when the engine has armed the timer."""
        sent = time.time()
        self.call(
            "POST",
            "/v1.1/messages",
            headers={"Authorization": f"Bearer {token}"},
            json={"sdid": src, "data": {"temp": 40}},
        )
        wait_for(
            lambda: any(
                e["reason"] == "duration timer armed"
                for e in self.call("GET", f"/v1.1/rules/{rule_id}/trace")
            )
        )
        return int(sent * 1000)

    def executions(self, rule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/v1.1/rules/{rule_id}/executions")
        return result


def test_duration_timer_survives_kill_9(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path)
    try:
        rule_id, src, token, dst = cloud.setup_rule(seconds=4)
        sent = cloud.arm(rule_id, src, token)
        cloud.process.kill()  # SIGKILL: no shutdown of any kind
        cloud.start()
        wait_for(lambda: cloud.executions(rule_id)["countApply"] == 1, timeout=30)
        last = cloud.executions(rule_id)["lastApply"]
        assert last >= sent + 4000  # on time, not early
        actions = cloud.call(
            "GET", "/v1.1/actions", params={"ddid": dst, "startDate": sent - 60_000, "endDate": last + 60_000}
        )
        assert [a["data"] for a in actions] == [{"actions": [{"name": "setOn", "parameters": {}}]}]

        # Due while the server was down: fired as soon as it is back.
        cloud.call(
            "POST", "/v1.1/messages", headers={"Authorization": f"Bearer {token}"}, json={"data": {"temp": 1}}
        )
        wait_for(
            lambda: cloud.call("GET", f"/v1.1/rules/{rule_id}/trace")[0]["conditions"][0].get("value") == 1
        )
        cloud.arm(rule_id, src, token)
        cloud.process.kill()
        time.sleep(5)
        restarted = time.time() * 1000
        cloud.start()
        wait_for(lambda: cloud.executions(rule_id)["countApply"] == 2, timeout=30)
        assert cloud.executions(rule_id)["lastApply"] >= restarted

        # Beyond the maximum lateness: recorded as missed, nothing sent.
        cloud.call(
            "POST", "/v1.1/messages", headers={"Authorization": f"Bearer {token}"}, json={"data": {"temp": 1}}
        )
        wait_for(
            lambda: cloud.call("GET", f"/v1.1/rules/{rule_id}/trace")[0]["conditions"][0].get("value") == 1
        )
        cloud.arm(rule_id, src, token)
        cloud.process.kill()
        time.sleep(7)
        cloud.env["THINGCLOUD_RULE_TIMER_MAX_LATENESS"] = "1"
        cloud.start()
        missed = wait_for(
            lambda: [
                e
                for e in cloud.call("GET", f"/v1.1/rules/{rule_id}/trace")
                if e["reason"].startswith("missed")
            ],
            timeout=30,
        )
        assert missed[0]["cause"] == "timer" and missed[0]["fired"] is False
        assert cloud.executions(rule_id)["countApply"] == 2
        actions = cloud.call(
            "GET",
            "/v1.1/actions",
            params={"ddid": dst, "startDate": sent - 60_000, "endDate": int(time.time() * 1000) + 60_000},
        )
        assert len(actions) == 2
    finally:
        cloud.process.kill()


def test_a_feed_batch_handed_over_again_fires_once(
    live: LiveServer, client: httpx.Client, home: Home
) -> None:
    """At least once: the consumer may see the same entries again (a crash before its checkpoint);
    firing is keyed by the feed seq, so the actions are not sent twice."""
    from thingcloud import feed
    from thingcloud.runtime import Runtime

    src, dst = home.devices[0], home.devices[1]
    rule = created(client, home.user, simple(src, dst))
    mid = home.send(live, src, {"temp": 50})
    wait_for(lambda: fired_count(client, home, rule["id"]) == 1)

    async def replay(rt: Runtime) -> None:
        entries = [e for e in await feed.read_after(rt, 0, 100_000) if e.ref == mid]
        assert len(entries) == 1
        await rt.feed.consumers["rules.engine"].handler(entries)

    live.call(replay)
    assert trace(client, home.user, rule["id"])[0]["reason"].startswith("already handled")
    assert fired_count(client, home, rule["id"]) == 1
    assert len(stored_actions(live, dst)) == 1


def test_a_node_without_the_engine_serves_rules_but_does_not_run_them(tmp_path: Path) -> None:
    from .conftest import start_live

    server, thread = start_live(tmp_path, rules_engine=False)
    try:
        assert "rules.engine" not in server.rt.feed.consumers
        other = new_home(server)
        with server.client() as client:
            rule = created(client, other.user, simple(other.devices[0], other.devices[1]))
            assert client.get(f"/v1.1/rules/{rule['id']}", headers=other.user.headers).status_code == 200
    finally:
        thread.stop()
