"""The device-management protocol beyond one test device: the simulator's device side (``thingcloud
simulate`` devices report their properties and carry out reads, writes, reboots and OTA updates, over
MQTT and /websocket); task state surviving a killed server (a device that got a task before the crash
gets it again, an offline device gets it once it connects, a scheduled task is dispatched by the
restarted node); two nodes over NATS (a task created on node B reaches the MQTT device on node A)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from thingcloud.simulator import SimulationConfig
from thingcloud.simulator.runner import Simulation

from .conftest import ADMIN_PASSWORD, TEST_DATABASE_URL, LiveServer, free_port, scratch_database_url
from .factories import make_device_type
from .test_devicemgmt_properties import Org, enable_device_properties
from .test_devicemgmt_properties import org as org  # the module-scoped fixture
from .test_devicemgmt_tasks import TASKS_MANIFEST, Managed
from .test_mqtt import mqtt_cluster as mqtt_cluster  # the two-node fixture
from .test_nats import Cluster
from .test_serve import ServeProcess, console_client_id, password_grant
from .test_websocket_device import wait_for

DM = "/v1.1/devicemgmt"
TIMEOUT = 30


def fleet(url: str, headers: dict[str, str], count: int) -> tuple[str, list[tuple[str, str]]]:
    """A device type of the caller with the tasks' manifest, device properties on, and devices."""
    with httpx.Client(base_url=url, headers=headers, timeout=30) as api:
        body = {"name": "Managed", "uniqueName": f"com.example.m{uuid.uuid4().hex}"}
        dtid = api.post("/v1.1/devicetypes", json=body).json()["data"]["id"]
        assert api.put(f"{DM}/devicetypes/{dtid}/manifest", json=TASKS_MANIFEST).status_code == 200
        assert api.put(f"{DM}/devicetypes/{dtid}", json={"devicePropertiesEnabled": True}).status_code == 200
        devices = []
        for n in range(count):
            response = api.post("/v1.1/devices", json={"dtid": dtid, "name": f"Managed {n}"})
            assert response.status_code == 200, response.text
            did = response.json()["data"]["id"]
            devices.append((did, api.put(f"/v1.1/devices/{did}/tokens").json()["data"]["accessToken"]))
    return dtid, devices


def task_status(url: str, headers: dict[str, str], tid: str) -> dict[str, Any]:
    response = httpx.get(f"{url}{DM}/tasks/{tid}/statuses", headers=headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_tasks_survive_a_killed_server(tmp_path: Path) -> None:
    env = {
        "THINGCLOUD_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "THINGCLOUD_RATE_LIMITS": "off",
        "THINGCLOUD_DATABASE_URL": scratch_database_url() if TEST_DATABASE_URL else "",
        "THINGCLOUD_JOB_POLL_INTERVAL": "0.2",
    }
    port = free_port()
    server = ServeProcess(tmp_path / "data", **env, THINGCLOUD_MQTT_PORT=str(port))
    try:
        server.wait_ready()
        token = password_grant(server.url, console_client_id(server.stdout), ADMIN_PASSWORD).json()[
            "access_token"
        ]
        headers = {"Authorization": f"Bearer {token}"}
        dtid, devices = fleet(server.url, headers, 2)
        (online, online_token), (offline, offline_token) = devices
        body = {
            "dtid": dtid,
            "dids": [online, offline],
            "taskType": "E",
            "property": "deviceProperties.device.reboot",
        }
        with Managed(port, online, online_token) as device:
            response = httpx.post(f"{server.url}{DM}/tasks", headers=headers, json=body)
            assert response.status_code == 200, response.text
            tid = response.json()["data"]["id"]
            assert device.task()["attempt"] == 1  # received, never answered: the server dies first
            scheduled = httpx.post(
                f"{server.url}{DM}/tasks",
                headers=headers,
                json={
                    **body,
                    "dids": [offline],
                    "taskParameters": {"scheduledOn": int(time.time() * 1000) + 3000},
                },
            ).json()["data"]
            assert scheduled["status"] == "SCHEDULED"
            server.kill()
        restarted = ServeProcess(tmp_path / "data", **env, THINGCLOUD_MQTT_PORT=str(port))
        try:
            restarted.wait_ready()
            before = task_status(restarted.url, headers, tid)
            assert before["status"] == "PROCESSING"
            assert {s["did"]: s["status"] for s in before["statuses"]} == {
                online: "PROCESSING",
                offline: "QUEUED",
            }
            with Managed(port, online, online_token) as again, Managed(port, offline, offline_token) as late:
                message = again.task()
                assert (message["tid"], message["attempt"]) == (tid, 2)
                again.answer(tid)
                got = {late.task()["tid"], late.task()["tid"]}  # the first task, and the scheduled one
                assert got == {tid, scheduled["id"]}
                late.answer(tid)
                late.answer(scheduled["id"], "FAILED", errorCode="BUSY")
                for task in (tid, scheduled["id"]):
                    assert wait_for(
                        lambda t=task: task_status(restarted.url, headers, t)["status"] == "COMPLETE", TIMEOUT
                    )
            counts = task_status(restarted.url, headers, scheduled["id"])["statusCounts"]
            assert counts["numFailed"] == 1
            assert restarted.terminate() == 0, restarted.stderr
        finally:
            restarted.kill()
    finally:
        server.kill()


def test_task_created_on_b_reaches_the_mqtt_device_on_a(mqtt_cluster: tuple[Cluster, int, int]) -> None:
    cluster, port_a, _port_b = mqtt_cluster
    dtid, devices = fleet(cluster.a.url, cluster.headers, 1)
    did, token = devices[0]
    with Managed(port_a, did, token) as device:
        body = {
            "dtid": dtid,
            "dids": [did],
            "taskType": "W",
            "property": "deviceProperties.device.timezone",
            "taskParameters": {"value": "UTC"},
        }
        response = httpx.post(f"{cluster.b.url}{DM}/tasks", headers=cluster.headers, json=body)
        assert response.status_code == 200, response.text
        tid = response.json()["data"]["id"]
        assert device.task()["tid"] == tid
        device.answer(tid)
        assert wait_for(
            lambda: task_status(cluster.b.url, cluster.headers, tid)["status"] == "COMPLETE", TIMEOUT
        )
        cancel_me = httpx.post(
            f"{cluster.a.url}{DM}/tasks",
            headers=cluster.headers,
            json={**body, "taskType": "R", "property": "deviceProperties.device"},
        ).json()["data"]
        assert device.task()["tid"] == cancel_me["id"]
        cancelled = httpx.put(
            f"{cluster.b.url}{DM}/tasks/{cancel_me['id']}",
            headers=cluster.headers,
            json={"status": "CANCELLED"},
        )
        assert cancelled.status_code == 200
        assert device.task() == {"tid": cancel_me["id"], "cancel": True}


# --- the simulator's device side ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["mqtt", "websocket"])
def test_simulated_devices_carry_out_tasks(live: LiveServer, org: Org, protocol: str) -> None:
    dtid = make_device_type(live, org.admin.id, oid=org.oid, published=True)
    admin = {"Authorization": f"Bearer {org.app_token}"}
    with httpx.Client(base_url=live.url, headers=admin, timeout=30) as api:
        assert api.put(f"{DM}/devicetypes/{dtid}/manifest", json=TASKS_MANIFEST).status_code == 200
        enable_device_properties(api, org, dtid)
        image = b"simulated firmware 2.1.0" * 100
        update = api.post(
            f"{DM}/devicetypes/{dtid}/updates", params={"version": "2.1.0"}, content=image
        ).json()["data"]
    config = SimulationConfig(
        url=live.url,
        token=org.owner.token,
        dtid=dtid,
        devices=2,
        rate=0.5,
        protocol=protocol,  # type: ignore[arg-type]
        mqtt_host="127.0.0.1",
        mqtt_port=live.settings.mqtt_port,
        name_prefix=f"dm{protocol[:2]}",
        seed=1,
    )
    simulation = Simulation(config)

    async def scenario() -> dict[str, Any]:
        runner = asyncio.create_task(simulation.run())
        async with httpx.AsyncClient(base_url=live.url, headers=admin, timeout=30) as http:

            async def props(did: str) -> dict[str, Any]:
                response = await http.get(f"{DM}/devices/{did}/properties")
                device: dict[str, Any] = response.json()["data"]["deviceProperties"].get("device", {})
                return device

            async def until(check: Any) -> None:
                for _ in range(600):
                    assert not runner.done(), runner.result()
                    if await check():
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError("condition not met in time")

            await until(lambda: asyncio.sleep(0, simulation.summary.connected == 2))
            listed = await http.get(
                f"/v1.1/users/{org.owner.id}/devices", params={"dtid": dtid}, headers=org.owner.headers
            )
            dids = [d["id"] for d in listed.json()["data"]["devices"]]
            assert len(dids) == 2

            async def reported() -> bool:
                return [(await props(did)).get("firmwareVersion") for did in dids] == ["1.0.0"] * 2

            await until(reported)
            tids = {}
            for name, body in {
                "write": {
                    "taskType": "W",
                    "property": "deviceProperties.device.timezone",
                    "taskParameters": {"value": "Europe/Oslo"},
                },
                "read": {"taskType": "R", "property": "deviceProperties.device"},
                "reboot": {"taskType": "E", "property": "deviceProperties.device.reboot"},
                "update": {
                    "taskType": "E",
                    "property": "deviceProperties.firmware.update",
                    "taskParameters": {"update": {"updateId": update["updateId"]}},
                },
            }.items():
                response = await http.post(f"{DM}/tasks", json={"dtid": dtid, "dids": dids, **body})
                assert response.status_code == 200, response.text
                tids[name] = response.json()["data"]["id"]

            async def all_complete() -> bool:
                for tid in tids.values():
                    task = (await http.get(f"{DM}/tasks/{tid}")).json()["data"]
                    if task["status"] != "COMPLETE":
                        return False
                return True

            await until(all_complete)

            async def installed() -> bool:
                return [(await props(did)).get("firmwareVersion") for did in dids] == ["2.1.0"] * 2

            await until(installed)
            out = {"props": {did: await props(did) for did in dids}, "tasks": {}}
            for name, tid in tids.items():
                out["tasks"][name] = (await http.get(f"{DM}/tasks/{tid}/statuses")).json()["data"]
        simulation.stop.set()
        await runner
        return out

    seen = asyncio.run(scenario())
    for name, task in seen["tasks"].items():
        assert task["statusCounts"]["numSucceeded"] == 2, (name, task["statuses"])
    for did, device in seen["props"].items():
        assert (device["timezone"], device["bootCount"], device["firmwareVersion"]) == (
            "Europe/Oslo",
            2,
            "2.1.0",
        ), did
    read = seen["tasks"]["read"]["statuses"][0]["result"]
    assert read["manufacturer"] == "ThingCloud Simulator"
    summary = simulation.summary
    assert (summary.tasks_received, summary.tasks_succeeded, summary.updates_installed) == (8, 8, 2)
    assert hashlib.sha256(image).hexdigest() == update["sha256"]
