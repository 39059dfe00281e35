"""``thingcloud simulate``: the reading generators on their own (values in range, of the manifest's
types, accepted by the real manifest normalizer; actions change the state), then the simulator
against the live server over HTTP and the WebSocket device channel (devices created then reused,
every acknowledged message stored and fitting the manifest, an action POSTed received and acted on,
the summary matching the database), and the command in a subprocess stopped by SIGINT."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from thingcloud.areas.devicetypes.manifests import compile_manifest
from thingcloud.simulator import SimulationConfig, SimulatorError, simulate
from thingcloud.simulator.fleet import device_names, device_number
from thingcloud.simulator.readings import DeviceModel, numeric_range
from thingcloud.simulator.runner import Simulation

from .conftest import LiveServer
from .factories import TestUser as User
from .factories import make_device_type, make_user
from .test_messages_ingest import stored_messages

MANIFEST: dict[str, Any] = {
    "fields": [
        {"name": "temp", "valueClass": "Double", "unit": "Cel"},
        {"name": "humidity", "valueClass": "Integer", "unit": "%"},
        {"name": "steps", "valueClass": "Long"},
        {"name": "pressure", "valueClass": "Float", "unit": "hPa"},
        {"name": "on", "valueClass": "Boolean"},
        {"name": "mode", "valueClass": "String"},
        {"name": "samples", "valueClass": "Integer", "isCollection": True},
        {
            "name": "location",
            "children": [
                {"name": "lat", "valueClass": "Double"},
                {"name": "lon", "valueClass": "Double"},
                {"name": "type", "valueClass": "String"},
            ],
        },
    ],
    "actions": [
        {"name": "setOn"},
        {"name": "setOff"},
        {"name": "setTemp", "parameters": [{"name": "temp", "valueClass": "Double"}]},
        {"name": "reboot"},
    ],
}
PYTHON_TYPES = {"Double": float, "Float": float, "Integer": int, "Long": int, "Boolean": bool, "String": str}


def properties() -> dict[str, Any]:
    """The API view of MANIFEST, as ``GET …/manifests/latest/properties`` renders it."""
    view: dict[str, Any] = compile_manifest(MANIFEST).properties_view()["properties"]
    return view


def leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- the generators alone -----------------------------------------------------------------------------


def test_readings_fit_the_manifest_and_stay_in_range() -> None:
    model = DeviceModel.from_properties(properties(), seed=7)
    manifest = compile_manifest(MANIFEST)
    specs = {spec.path: spec for spec in model.fields}
    assert set(specs) == {
        "temp", "humidity", "steps", "pressure", "on", "mode", "samples",
        "location.lat", "location.lon", "location.type",
    }  # fmt: skip
    seen: dict[str, set[Any]] = {path: set() for path in specs}
    last_steps = -1
    for _ in range(2000):
        data = model.reading()
        # The real normalizer accepts every reading whole: nothing dropped, nothing coerced.
        assert manifest.normalize(data) == data
        values = leaves(data)
        assert set(values) == set(specs)
        for path, value in values.items():
            spec = specs[path]
            items = value if spec.is_collection else [value]
            assert items and len(items) <= 3
            for item in items:
                assert type(item) is PYTHON_TYPES[spec.value_class], (path, item)
                if spec.value_class in ("Double", "Float", "Integer") and not spec.counter:
                    assert spec.low <= item <= spec.high, (path, item)
                seen[path].add(item)
        assert values["steps"] >= last_steps  # a counter only grows
        last_steps = values["steps"]
    assert (specs["temp"].low, specs["temp"].high) == (-10, 40)
    assert (specs["humidity"].low, specs["humidity"].high) == (0, 100)
    assert (specs["pressure"].low, specs["pressure"].high) == (950, 1050)
    assert (specs["location.lat"].low, specs["location.lon"].high) == (-90, 180)
    assert seen["on"] == {True, False}  # booleans flip now and then
    assert seen["mode"] <= {"auto", "eco", "comfort", "off"} and len(seen["mode"]) > 1
    assert len(seen["temp"]) > 100  # a walk, not a constant
    assert last_steps > 0


def test_walks_are_reproducible_and_move_gradually() -> None:
    one = [DeviceModel.from_properties(properties(), seed="s").reading() for _ in range(2)]
    two = [DeviceModel.from_properties(properties(), seed="s").reading() for _ in range(2)]
    assert one == two
    model = DeviceModel.from_properties(properties(), seed=1)
    temps = [model.reading()["temp"] for _ in range(500)]
    # Steps are a few percent of the 50-degree range: never a jump across it.
    assert max(abs(a - b) for a, b in itertools.pairwise(temps)) < 10


def test_ranges_respect_value_class_limits() -> None:
    assert numeric_range("anything", "Pa", "Integer") == (95_000, 105_000)
    assert numeric_range("latitude", "", "Double") == (-90, 90)
    assert numeric_range("unknown", "", "Long") == (0, 100)


def test_actions_change_the_simulated_state() -> None:
    model = DeviceModel.from_properties(properties(), seed=3)
    assert model.apply({"name": "setOn", "parameters": {}}).changes == {"on": True}
    assert model.reading()["on"] is True
    assert model.apply({"name": "setOff"}).changes == {"on": False}
    assert model.reading()["on"] is False
    assert model.apply({"name": "setTemp", "parameters": {"temp": 31.25}}).changes == {"temp": 31.25}
    assert model.reading()["temp"] == 31.25  # the next reading reports the value set
    assert model.apply({"name": "setTemp", "parameters": {"temp": 500}}).changes == {"temp": 40}  # clamped
    assert model.apply({"name": "setHumidity", "parameters": {"value": "55"}}).changes == {"humidity": 55}
    assert model.apply({"name": "setMode", "parameters": {"mode": "eco"}}).changes == {"mode": "eco"}
    bad = model.apply({"name": "setTemp", "parameters": {"temp": "hot"}})
    assert bad.changes == {} and "number" in bad.note
    assert model.apply({"name": "reboot", "parameters": {}}).note == "not simulated"
    assert model.apply({"name": "setColour", "parameters": {"x": 1}}).note.startswith("no field")


def test_device_names() -> None:
    assert device_names("sim", 3) == ["sim-001", "sim-002", "sim-003"]
    assert device_names("lamp", 1200)[-1] == "lamp-1200"
    # Reuse goes by number, whatever the padding: 20 devices reuse the first 20 of a fleet of 1,000.
    assert [device_number("sim", n) for n in ("sim-0007", "sim-7", "sim-x", "sims-1", "a-sim-1")] == [
        7, 7, None, None, None,
    ]  # fmt: skip
    assert device_number("a-b", "a-b-3") == 3
    with pytest.raises(SimulatorError, match="5-36 characters"):
        device_names("", 2)
    with pytest.raises(SimulatorError, match="5-36 characters"):
        device_names("x" * 34, 2)


# --- against the live server ----------------------------------------------------------------------


def sim_type(live: LiveServer) -> tuple[User, str]:
    user = make_user(live)
    return user, make_device_type(live, user.id, documents=[MANIFEST])


def config(live: LiveServer, user: User, dtid: str, **kw: Any) -> SimulationConfig:
    values: dict[str, Any] = {"url": live.url, "token": user.token, "dtid": dtid, "seed": 1}
    return SimulationConfig(**{**values, **kw})


def user_devices(live: LiveServer, user: User, dtid: str) -> dict[str, str]:
    response = httpx.get(
        f"{live.url}/v1.1/users/{user.id}/devices", headers=user.headers, params={"dtid": dtid, "count": 100}
    )
    assert response.status_code == 200, response.text
    return {d["name"]: d["id"] for d in response.json()["data"]["devices"]}


def assert_stored_fit(live: LiveServer, dids: list[str], dtid: str) -> list[dict[str, Any]]:
    """Every stored message of ``dids``: of the type, with every manifest field, of its value class."""
    manifest = compile_manifest(MANIFEST)
    rows = [row for did in dids for row in stored_messages(live, did)]
    for row in rows:
        data = row["data"] if isinstance(row["data"], dict) else json.loads(row["data"])
        assert row["sdtid"] == dtid
        assert manifest.normalize(data) == data
        assert len(leaves(data)) == 10
    return rows


def test_http_creates_then_reuses_devices_and_everything_acknowledged_is_stored(live: LiveServer) -> None:
    user, dtid = sim_type(live)
    summary = asyncio.run(
        simulate(config(live, user, dtid, devices=3, rate=5, duration=1.5, protocol="http"))
    )
    devices = user_devices(live, user, dtid)
    assert sorted(devices) == ["sim-001", "sim-002", "sim-003"]
    assert (summary.created, summary.reused, summary.connected) == (3, 0, 3)
    assert summary.sent >= 6 and summary.failed == 0
    assert summary.acknowledged == summary.sent
    assert len(assert_stored_fit(live, list(devices.values()), dtid)) == summary.acknowledged

    again = asyncio.run(simulate(config(live, user, dtid, devices=4, rate=5, duration=1, protocol="http")))
    assert (again.created, again.reused) == (1, 3)
    devices_after = user_devices(live, user, dtid)
    assert {k: v for k, v in devices_after.items() if k != "sim-004"} == devices  # same ids reused
    stored = assert_stored_fit(live, list(devices_after.values()), dtid)
    assert len(stored) == summary.acknowledged + again.acknowledged


def test_websocket_receives_and_acts_on_actions(live: LiveServer) -> None:
    user, dtid = sim_type(live)
    simulation = Simulation(config(live, user, dtid, devices=2, rate=10, name_prefix="wsdev"))

    async def scenario() -> None:
        runner = asyncio.create_task(simulation.run())
        async with httpx.AsyncClient(base_url=live.url, headers=user.headers) as http:
            for _ in range(300):
                if simulation.summary.acknowledged >= 4:
                    break
                assert not runner.done(), runner.result()
                await asyncio.sleep(0.05)
            listed = await http.get(f"/v1.1/users/{user.id}/devices", params={"dtid": dtid})
            did = next(d["id"] for d in listed.json()["data"]["devices"] if d["name"] == "wsdev-001")
            actions = [
                {"name": "setTemp", "parameters": {"temp": 33.33}},
                {"name": "setOn", "parameters": {}},
                {"name": "reboot", "parameters": {}},
            ]
            response = await http.post("/v1.1/actions", json={"ddid": did, "data": {"actions": actions}})
            assert response.status_code == 200, response.text
            for _ in range(300):
                if simulation.summary.actions_received == 3:
                    break
                await asyncio.sleep(0.05)
            sent_at_action = simulation.summary.sent
            for _ in range(300):  # a few readings after the actions
                if simulation.summary.acknowledged >= sent_at_action + 4:
                    break
                await asyncio.sleep(0.05)
        simulation.stop.set()
        await runner

    asyncio.run(scenario())
    summary = simulation.summary
    assert summary.actions_received == 3 and summary.actions_applied == 2  # reboot is only logged
    assert summary.failed == 0 and summary.acknowledged == summary.sent > 0
    devices = user_devices(live, user, dtid)
    rows = assert_stored_fit(live, list(devices.values()), dtid)
    assert len(rows) == summary.acknowledged
    first = stored_messages(live, devices["wsdev-001"])
    after = [r["data"] for r in first if r["data"]["temp"] == 33.33]
    assert after, "no message reported the temperature the action set"
    assert after[0]["on"] is True  # the same reading: both actions applied before it
    other = stored_messages(live, devices["wsdev-002"])
    assert all(r["data"]["temp"] != 33.33 for r in other)


def type_without_manifest(live: LiveServer, user: User) -> str:
    from thingcloud.areas.devicetypes import service as devicetypes

    async def work(rt: Any) -> str:
        dt = await devicetypes.create_device_type(
            rt, name="Bare", unique_name=f"com.example.bare{uuid.uuid4().hex}", owner_uid=user.id
        )
        return str(dt["id"])

    return live.call(work)


def test_setup_errors_are_one_clear_line(live: LiveServer) -> None:
    user, dtid = sim_type(live)
    cases = [
        (config(live, user, "dt" + "0" * 32), "HTTP 404"),
        (config(live, user, dtid, token="0" * 32), "HTTP 401"),
        (config(live, user, type_without_manifest(live, user)), "has no manifest"),
        (config(live, user, dtid, url="http://127.0.0.1:9"), "cannot reach"),
    ]
    for case, message in cases:
        with pytest.raises(SimulatorError, match=message):
            asyncio.run(simulate(case))


def test_command_stops_cleanly_on_sigint_with_the_summary(live: LiveServer) -> None:
    user, dtid = sim_type(live)
    env = {**os.environ, "THINGCLOUD_TOKEN": user.token}
    command = [sys.executable, "-m", "thingcloud", "simulate", "--devicetype", dtid, "--devices", "2"]
    command += ["--rate", "20", "--url", live.url, "--protocol", "websocket", "--json"]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(process.stderr or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("sending" in line for line in log):
            assert process.poll() is None, "".join(log)
            assert time.monotonic() < deadline, "".join(log)
            time.sleep(0.1)
        time.sleep(1.5)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(5)
    assert process.returncode == 0, "".join(log)
    summary = json.loads(out)
    assert summary["created"] == 2 and summary["connected"] == 2
    assert summary["sent"] > 10 and summary["acknowledged"] == summary["sent"] and summary["failed"] == 0
    devices = user_devices(live, user, dtid)
    assert len(assert_stored_fit(live, list(devices.values()), dtid)) == summary["acknowledged"]
    assert not any("Traceback" in line for line in log), "".join(log)


def test_unique_prefixes_keep_fleets_apart(live: LiveServer) -> None:
    user, dtid = sim_type(live)
    prefix = f"p{uuid.uuid4().hex[:6]}"
    summary = asyncio.run(
        simulate(
            config(live, user, dtid, devices=1, rate=2, duration=0.6, protocol="http", name_prefix=prefix)
        )
    )
    assert summary.created == 1
    assert list(user_devices(live, user, dtid)) == [f"{prefix}-001"]


# --- over MQTT (the server's own broker, on the live server's MQTT port) ----------------------------


def mqtt_config(live: LiveServer, user: User, dtid: str, **kw: Any) -> SimulationConfig:
    return config(
        live, user, dtid, protocol="mqtt", mqtt_host="127.0.0.1", mqtt_port=live.settings.mqtt_port, **kw
    )


def test_mqtt_sends_receives_actions_and_counts_what_is_stored(live: LiveServer) -> None:
    user, dtid = sim_type(live)
    simulation = Simulation(mqtt_config(live, user, dtid, devices=2, rate=10, name_prefix="mqdev"))

    async def scenario() -> None:
        runner = asyncio.create_task(simulation.run())
        async with httpx.AsyncClient(base_url=live.url, headers=user.headers) as http:
            for _ in range(300):
                if simulation.summary.acknowledged >= 4:
                    break
                assert not runner.done(), runner.result()
                await asyncio.sleep(0.05)
            listed = await http.get(f"/v1.1/users/{user.id}/devices", params={"dtid": dtid})
            did = next(d["id"] for d in listed.json()["data"]["devices"] if d["name"] == "mqdev-002")
            actions = [
                {"name": "setTemp", "parameters": {"temp": -7.5}},
                {"name": "setOff", "parameters": {}},
            ]
            response = await http.post("/v1.1/actions", json={"ddid": did, "data": {"actions": actions}})
            assert response.status_code == 200, response.text
            for _ in range(300):
                if simulation.summary.actions_received == 2:
                    break
                await asyncio.sleep(0.05)
            sent_at_action = simulation.summary.sent
            for _ in range(300):
                if simulation.summary.acknowledged >= sent_at_action + 4:
                    break
                await asyncio.sleep(0.05)
        simulation.stop.set()
        await runner

    asyncio.run(scenario())
    summary = simulation.summary
    assert (summary.connected, summary.actions_received, summary.actions_applied) == (2, 2, 2)
    assert summary.failed == 0 and summary.acknowledged == summary.sent > 0
    devices = user_devices(live, user, dtid)
    assert len(assert_stored_fit(live, list(devices.values()), dtid)) == summary.acknowledged
    acted = [r["data"] for r in stored_messages(live, devices["mqdev-002"]) if r["data"]["temp"] == -7.5]
    assert acted and acted[0]["on"] is False


def test_mqtt_refused_messages_count_as_failed(live: LiveServer) -> None:
    """Readings over the MQTT size limit are PUBACKed and refused with a 413 on the errors topic:
    the summary counts them failed, none acknowledged, and nothing is stored."""
    user = make_user(live)
    limit = live.settings.mqtt_max_message_bytes
    wide = {"fields": [{"name": f"reading{i:03d}", "valueClass": "String"} for i in range(limit // 10)]}
    dtid = make_device_type(live, user.id, documents=[wide])
    summary = asyncio.run(simulate(mqtt_config(live, user, dtid, devices=1, rate=5, duration=1.5)))
    assert summary.sent > 0 and summary.acknowledged == 0 and summary.failed == summary.sent
    assert any(message.startswith("413") for message in summary.errors), summary.errors
    assert stored_messages(live, next(iter(user_devices(live, user, dtid).values()))) == []


@pytest.mark.parametrize("protocol", ["websocket", "mqtt"])
def test_device_taken_over_reconnects_and_counts_stay_exact(
    live: LiveServer, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """Another socket registering a simulated device takes it over (one connection per device across
    /websocket and MQTT): the simulator is disconnected, reconnects, and goes on; what it counts
    acknowledged is stored."""
    from websockets.asyncio.client import connect

    user, dtid = sim_type(live)
    make = mqtt_config if protocol == "mqtt" else config
    simulation = Simulation(make(live, user, dtid, devices=1, rate=10, name_prefix="takeover"))
    ws_url = live.url.replace("http://", "ws://") + "/v1.1/websocket?ack=true"

    async def until(condition: Any) -> None:
        for _ in range(400):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("timed out")

    async def scenario() -> None:
        runner = asyncio.create_task(simulation.run())
        await until(lambda: simulation.summary.acknowledged >= 3)
        did = next(iter(simulation.models))
        async with httpx.AsyncClient(base_url=live.url, headers=user.headers) as http:
            token = (await http.get(f"/v1.1/devices/{did}/tokens")).json()["data"]["accessToken"]
        async with connect(ws_url) as other:
            register = {"type": "register", "sdid": did, "Authorization": f"bearer {token}"}
            await other.send(json.dumps({**register, "cid": "x"}))
            await until(lambda: "disconnected" in caplog.text)
        await until(lambda: "reconnected" in caplog.text)
        acknowledged = simulation.summary.acknowledged
        await until(lambda: simulation.summary.acknowledged >= acknowledged + 3)
        simulation.stop.set()
        await runner

    with caplog.at_level("INFO", logger="thingcloud.simulator"):
        asyncio.run(scenario())
    summary = simulation.summary
    assert summary.sent == summary.acknowledged + summary.failed
    devices = user_devices(live, user, dtid)
    stored = len(assert_stored_fit(live, list(devices.values()), dtid))
    # Every acknowledged message is stored; one whose ack was lost with the replaced connection may
    # be stored too (at least once), and is counted failed.
    assert summary.acknowledged <= stored <= summary.acknowledged + summary.failed
    assert summary.acknowledged >= 6  # three before the takeover, three after
