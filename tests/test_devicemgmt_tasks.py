"""Device-management tasks (issue #10, S90–S98 and the statuses history) end to end: real devices over
MQTT (paho-mqtt) and /websocket get reads, writes, executes and OTA updates and answer them; offline
devices get their tasks when they connect; cancellation, expiry and retries with the server's
injectable clock; bad input (400/403/404, nothing written); the token rules per token kind and
organization role; the official SDK's DevicesManagementApi task calls."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import artikcloud
import httpx
import pytest

from .conftest import LiveServer
from .factories import make_device, make_device_token, make_device_type
from .test_devicemgmt_properties import DM, MANIFEST, Fleet, Org, bearer, enable_device_properties, new_fleet
from .test_devicemgmt_properties import dm_api as dm_api  # fixtures shared with the properties tests
from .test_devicemgmt_properties import org as org
from .test_mqtt import Device
from .test_websocket_device import open_ws, recv, registered, wait_for

TIMEOUT = 20


def tasks_topic(did: str) -> str:
    return f"/v1.1/devicemgmt/{did}/tasks"


def results_topic(did: str) -> str:
    return f"/v1.1/devicemgmt/{did}/results"


class Managed(Device):
    """An MQTT device that takes device-management tasks."""

    def __init__(self, port: int, did: str, token: str) -> None:
        super().__init__(port, did, token, subscribe=False)
        assert self.subscribe(tasks_topic(did), f"/v1.1/errors/{did}") == [0, 0]

    def task(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        topic, body = self.next(timeout)
        assert topic == tasks_topic(self.did), (topic, body)
        message: dict[str, Any] = body
        return message

    def answer(self, tid: str, status: str = "SUCCEEDED", **extra: Any) -> None:
        self.publish({"tid": tid, "status": status, **extra}, topic=results_topic(self.did))


TASKS_MANIFEST: dict[str, Any] = {
    "serverProperties": MANIFEST["serverProperties"],
    "deviceProperties": {
        "device": {**MANIFEST["deviceProperties"]["device"], "model": {"type": "String", "operations": "R"}},
        "firmware": {"update": {"type": "String", "operations": "E"}},
    },
}


def managed_fleet(live: LiveServer, org: Org, client: httpx.Client, devices: int = 2) -> Fleet:
    """A device type of the organization with the tasks' manifest and device properties enabled."""
    dtid = make_device_type(live, org.admin.id, oid=org.oid, published=True)
    put = client.put(f"{DM}/devicetypes/{dtid}/manifest", headers=bearer(org.app_token), json=TASKS_MANIFEST)
    assert put.status_code == 200, put.text
    enable_device_properties(client, org, dtid)
    dids = [make_device(live, org.owner.headers, dtid, name=f"Managed {i}")["id"] for i in range(devices)]
    return Fleet(dtid, dids, make_device_token(live, org.owner, dids[0]))


def token_of(live: LiveServer, org: Org, did: str) -> str:
    return make_device_token(live, org.owner, did)


def create(client: httpx.Client, token: str, **body: Any) -> httpx.Response:
    return client.post(f"{DM}/tasks", headers=bearer(token), json=body)


def created(client: httpx.Client, org: Org, **body: Any) -> dict[str, Any]:
    response = create(client, org.app_token, **body)
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()["data"]
    return task


def task_of(client: httpx.Client, org: Org, tid: str) -> dict[str, Any]:
    response = client.get(f"{DM}/tasks/{tid}", headers=bearer(org.admin_token))
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()["data"]
    return task


def statuses(client: httpx.Client, org: Org, tid: str) -> dict[str, dict[str, Any]]:
    response = client.get(f"{DM}/tasks/{tid}/statuses", headers=bearer(org.admin_token))
    assert response.status_code == 200, response.text
    return {s["did"]: s for s in response.json()["data"]["statuses"]}


def complete(client: httpx.Client, org: Org, tid: str) -> dict[str, Any]:
    task = wait_for(lambda: (t := task_of(client, org, tid))["status"] == "COMPLETE" and t, TIMEOUT)
    assert task, task_of(client, org, tid)
    return task  # type: ignore[no-any-return]


def properties(client: httpx.Client, org: Org, did: str) -> dict[str, Any]:
    response = client.get(f"{DM}/devices/{did}/properties", headers=bearer(org.admin_token))
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


# --- reads, writes, executes over MQTT ----------


def test_write_read_execute_over_mqtt(live: LiveServer, org: Org, client: httpx.Client) -> None:
    fleet = managed_fleet(live, org, client)
    devices = [Managed(live.settings.mqtt_port, did, token_of(live, org, did)) for did in fleet.dids]
    try:
        task = created(
            client,
            org,
            dtid=fleet.dtid,
            dids=fleet.dids,
            taskType="W",
            property="deviceProperties.device.timezone",
            taskParameters={"value": "Europe/Paris", "expiresAfter": 3600},
        )
        assert task["status"] in ("REQUESTED", "QUEUING", "PROCESSING")
        assert task["statusCounts"] == {
            "totalDevices": 2,
            "numCompleted": 0,
            "numSucceeded": 0,
            "numFailed": 0,
            "numCancelled": 0,
        }
        for device in devices:
            message = device.task()
            assert message["tid"] == task["id"]
            assert (message["taskType"], message["property"], message["value"]) == (
                "W",
                "device.timezone",
                "Europe/Paris",
            )
            assert message["attempt"] == 1
        assert set(s["status"] for s in statuses(client, org, task["id"]).values()) == {"PROCESSING"}
        devices[0].answer(task["id"])
        devices[1].answer(task["id"], "FAILED", errorCode="E_TZ", errorMessage="unknown zone")
        done = complete(client, org, task["id"])
        assert done["statusCounts"] == {
            "totalDevices": 2,
            "numCompleted": 2,
            "numSucceeded": 1,
            "numFailed": 1,
            "numCancelled": 0,
        }
        per_device = statuses(client, org, task["id"])
        assert per_device[fleet.dids[1]]["errorCode"] == "E_TZ"
        assert per_device[fleet.dids[1]]["errorMessage"] == "unknown zone"
        assert per_device[fleet.dids[0]]["numAttempts"] == 1
        assert per_device[fleet.dids[0]]["acceptanceStatus"] == "NOT_REQUIRED"
        props = properties(client, org, fleet.dids[0])
        assert props["deviceProperties"]["device"]["timezone"] == "Europe/Paris"

        # A read of a group: the answer becomes the device's properties.
        read = created(
            client,
            org,
            dtid=fleet.dtid,
            dids=fleet.dids[:1],
            taskType="R",
            property="deviceProperties.device",
        )
        message = devices[0].task()
        assert (message["taskType"], message["property"]) == ("R", "device")
        devices[0].answer(read["id"], value={"manufacturer": "Acme", "timezone": "UTC"})
        complete(client, org, read["id"])
        assert properties(client, org, fleet.dids[0])["deviceProperties"]["device"]["manufacturer"] == "Acme"
        assert statuses(client, org, read["id"])[fleet.dids[0]]["result"] == {
            "manufacturer": "Acme",
            "timezone": "UTC",
        }

        # Execute.
        reboot = created(
            client,
            org,
            dtid=fleet.dtid,
            dids=fleet.dids,
            taskType="E",
            property="deviceProperties.device.reboot",
        )
        for device in devices:
            assert device.task()["property"] == "device.reboot"
            device.answer(reboot["id"])
        complete(client, org, reboot["id"])

        history = client.get(f"{DM}/tasks/{task['id']}/statuses/history", headers=bearer(org.app_token))
        assert history.status_code == 200
        mine = [
            (h["status"], h["numAttempts"])
            for h in history.json()["data"]["history"]
            if h["did"] == fleet.dids[1]
        ]
        assert mine == [("REQUESTED", 0), ("QUEUED", 0), ("PROCESSING", 1), ("FAILED", 1)]
        one = client.get(
            f"{DM}/tasks/{task['id']}/statuses/history",
            params={"did": fleet.dids[0]},
            headers=bearer(org.app_token),
        )
        assert {h["did"] for h in one.json()["data"]["history"]} == {fleet.dids[0]}
    finally:
        for device in devices:
            device.close()


def test_list_tasks_and_device_tasks(live: LiveServer, org: Org, client: httpx.Client) -> None:
    fleet = managed_fleet(live, org, client)
    first = created(
        client, org, dtid=fleet.dtid, dids=fleet.dids, taskType="E", property="deviceProperties.device.reboot"
    )
    second = created(
        client, org, dtid=fleet.dtid, dids=fleet.dids[:1], taskType="R", property="deviceProperties.device"
    )
    listed = client.get(f"{DM}/tasks", params={"dtid": fleet.dtid}, headers=bearer(org.admin_token))
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [t["id"] for t in body["data"]["tasks"]] == [second["id"], first["id"]]  # newest first
    assert set(body["statusCounts"]) == {
        "SCHEDULED",
        "REQUESTED",
        "QUEUING",
        "PROCESSING",
        "COMPLETE",
        "CANCELLED",
    }
    assert sum(body["statusCounts"].values()) == 2
    assert (body["total"], body["count"], body["offset"]) == (2, 2, 0)
    asc = client.get(
        f"{DM}/tasks", params={"dtid": fleet.dtid, "sort": "asc", "count": 1}, headers=bearer(org.admin_token)
    )
    assert [t["id"] for t in asc.json()["data"]["tasks"]] == [first["id"]]
    assert asc.json()["total"] == 2
    cancelled = client.put(
        f"{DM}/tasks/{first['id']}", headers=bearer(org.admin_token), json={"status": "CANCELLED"}
    )
    assert cancelled.status_code == 200
    only = client.get(
        f"{DM}/tasks", params={"dtid": fleet.dtid, "status": "CANCELLED"}, headers=bearer(org.admin_token)
    )
    assert [t["id"] for t in only.json()["data"]["tasks"]] == [first["id"]]
    assert only.json()["statusCounts"]["CANCELLED"] == 1

    by_device = client.get(f"{DM}/devices/{fleet.dids[1]}/tasks", headers=bearer(org.app_token))
    assert by_device.status_code == 200, by_device.text
    tasks = by_device.json()["data"]["tasks"]
    assert [t["id"] for t in tasks] == [first["id"]]
    assert tasks[0]["statuses"][0]["did"] == fleet.dids[1]
    assert tasks[0]["statuses"][0]["status"] == "CANCELLED"
    # The device's owner sees its tasks too.
    assert client.get(f"{DM}/devices/{fleet.dids[1]}/tasks", headers=org.owner.headers).status_code == 200
    bad = client.get(
        f"{DM}/tasks", params={"dtid": fleet.dtid, "status": "DONE"}, headers=bearer(org.admin_token)
    )
    assert bad.status_code == 400
    for params in ({"count": "abc"}, {"count": "0"}, {"sort": "up"}, {"order": "name"}, None):
        query = {"dtid": fleet.dtid, **params} if params is not None else {}
        response = client.get(f"{DM}/tasks", params=query, headers=bearer(org.admin_token))
        assert response.status_code == 400, (params, response.text)
    broken = client.post(
        f"{DM}/tasks",
        headers={**bearer(org.app_token), "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert broken.status_code == 400


# --- the device channel ----------


def test_task_over_websocket_and_properties_report(live: LiveServer, org: Org, client: httpx.Client) -> None:
    fleet = managed_fleet(live, org, client, devices=1)
    did = fleet.dids[0]
    with open_ws(live, "/v1.1/websocket", ack="true") as ws:
        registered(ws, did, fleet.device_token)
        task = created(
            client,
            org,
            dtid=fleet.dtid,
            dids=[did],
            taskType="W",
            property="deviceProperties.device.timezone",
            taskParameters={"value": "Asia/Tokyo"},
        )
        frame = recv(ws, TIMEOUT)
        assert frame["type"] == "devicemgmt.task" and frame["ddid"] == did
        assert frame["data"]["tid"] == task["id"] and frame["data"]["value"] == "Asia/Tokyo"
        ws.send(
            json.dumps(
                {
                    "type": "devicemgmt.result",
                    "sdid": did,
                    "cid": "c1",
                    "data": {"tid": task["id"], "status": "SUCCEEDED"},
                }
            )
        )
        assert recv(ws) == {"data": {"code": 200, "message": "OK", "cid": "c1"}}
        complete(client, org, task["id"])
        ws.send(
            json.dumps(
                {
                    "type": "devicemgmt.properties",
                    "sdid": did,
                    "cid": "c2",
                    "data": {"device": {"manufacturer": "WsCo"}},
                }
            )
        )
        assert recv(ws) == {"data": {"code": 200, "message": "OK", "cid": "c2"}}
        assert properties(client, org, did)["deviceProperties"]["device"]["manufacturer"] == "WsCo"
        # An answer for a task the device does not have.
        ws.send(
            json.dumps(
                {
                    "type": "devicemgmt.result",
                    "sdid": did,
                    "cid": "c3",
                    "data": {"tid": "0" * 32, "status": "SUCCEEDED"},
                }
            )
        )
        assert recv(ws)["error"]["code"] == 404


def test_mqtt_properties_topic_and_topic_permissions(
    live: LiveServer, org: Org, client: httpx.Client
) -> None:
    fleet = managed_fleet(live, org, client)
    mine, other = fleet.dids
    with Managed(live.settings.mqtt_port, mine, fleet.device_token) as device:
        device.publish({"device": {"model": "M1"}}, topic=f"/v1.1/devicemgmt/{mine}/properties")
        assert wait_for(
            lambda: properties(client, org, mine)["deviceProperties"].get("device", {}).get("model") == "M1"
        )
        # Another device's topics: no subscription, no publish.
        assert device.subscribe(tasks_topic(other)) == [128]
        assert device.next()[1]["error"]["code"] == 403
        device.publish({"tid": "x", "status": "SUCCEEDED"}, topic=results_topic(other))
        refused = device.next()[1]["error"]
        assert (refused["code"], refused["message"]) == (403, "You do not have publish permission to topic")


# --- offline devices, cancellation, expiry, retries ----------


def test_offline_device_gets_its_task_when_it_connects(
    live: LiveServer, org: Org, client: httpx.Client
) -> None:
    fleet = managed_fleet(live, org, client, devices=1)
    did = fleet.dids[0]
    task = created(
        client, org, dtid=fleet.dtid, dids=[did], taskType="E", property="deviceProperties.device.reboot"
    )
    assert wait_for(lambda: statuses(client, org, task["id"])[did]["status"] == "QUEUED", TIMEOUT)
    assert task_of(client, org, task["id"])["status"] == "PROCESSING"
    with Managed(live.settings.mqtt_port, did, fleet.device_token) as device:
        message = device.task()
        assert message["tid"] == task["id"]
        device.answer(task["id"])
        complete(client, org, task["id"])


def test_cancel_task_and_one_device(live: LiveServer, org: Org, client: httpx.Client) -> None:
    fleet = managed_fleet(live, org, client, devices=3)
    online, offline, single = fleet.dids
    with Managed(live.settings.mqtt_port, online, token_of(live, org, online)) as device:
        task = created(
            client,
            org,
            dtid=fleet.dtid,
            dids=[online, offline],
            taskType="E",
            property="deviceProperties.device.reboot",
        )
        assert device.task()["tid"] == task["id"]
        assert wait_for(lambda: statuses(client, org, task["id"])[offline]["status"] == "QUEUED", TIMEOUT)
        response = client.put(
            f"{DM}/tasks/{task['id']}", headers=bearer(org.admin_token), json={"status": "CANCELLED"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"]["status"] == "CANCELLED"
        assert device.task() == {"tid": task["id"], "cancel": True}
        now = statuses(client, org, task["id"])
        assert (now[online]["status"], now[offline]["status"]) == ("CANCEL_REQUESTED", "CANCELLED")
        device.answer(task["id"], "CANCELLED")
        assert wait_for(lambda: statuses(client, org, task["id"])[online]["status"] == "CANCELLED", TIMEOUT)
        counts = task_of(client, org, task["id"])["statusCounts"]
        assert (counts["numCancelled"], counts["numCompleted"]) == (2, 2)
        again = client.put(
            f"{DM}/tasks/{task['id']}", headers=bearer(org.admin_token), json={"status": "CANCELLED"}
        )
        assert again.status_code == 400

    other = created(
        client,
        org,
        dtid=fleet.dtid,
        dids=[offline, single],
        taskType="E",
        property="deviceProperties.device.reboot",
    )
    wrong = client.put(
        f"{DM}/tasks/{other['id']}/devices/{single}", headers=bearer(org.admin_token), json={"status": "DONE"}
    )
    assert wrong.status_code == 400
    one = client.put(
        f"{DM}/tasks/{other['id']}/devices/{single}",
        headers=bearer(org.admin_token),
        json={"status": "CANCELLED"},
    )
    assert one.status_code == 200, one.text
    assert one.json()["data"]["did"] == single and one.json()["data"]["status"] == "CANCELLED"
    assert wait_for(lambda: task_of(client, org, other["id"])["status"] == "PROCESSING", TIMEOUT)
    assert (
        client.put(
            f"{DM}/tasks/{other['id']}/devices/{'f' * 32}",
            headers=bearer(org.admin_token),
            json={"status": "CANCELLED"},
        ).status_code
        == 404
    )


def test_expiry_fails_open_devices(live: LiveServer, org: Org, client: httpx.Client) -> None:
    fleet = managed_fleet(live, org, client, devices=1)
    did = fleet.dids[0]
    task = created(
        client,
        org,
        dtid=fleet.dtid,
        dids=[did],
        taskType="E",
        property="deviceProperties.device.reboot",
        taskParameters={"expiresAfter": 60},
    )
    assert wait_for(lambda: statuses(client, org, task["id"])[did]["status"] == "QUEUED", TIMEOUT)
    live.clock.advance(61)
    done = complete(client, org, task["id"])
    assert done["statusCounts"]["numFailed"] == 1
    status = statuses(client, org, task["id"])[did]
    assert (status["status"], status["errorCode"]) == ("FAILED", "TASK_EXPIRED")
    # An expired task is not delivered to the device when it connects.
    with Managed(live.settings.mqtt_port, did, fleet.device_token) as device:
        device.nothing_more(1.0)


def test_unanswered_task_is_sent_again_then_fails(live: LiveServer, org: Org, client: httpx.Client) -> None:
    fleet = managed_fleet(live, org, client, devices=1)
    did = fleet.dids[0]
    timeout = live.settings.dm_task_answer_timeout
    with Managed(live.settings.mqtt_port, did, fleet.device_token) as device:
        task = created(
            client, org, dtid=fleet.dtid, dids=[did], taskType="E", property="deviceProperties.device.reboot"
        )
        assert device.task()["attempt"] == 1
        live.clock.advance(timeout + 1)
        assert device.task()["attempt"] == 2  # the sweep re-sent it
        live.clock.advance(2 * timeout + 1)
        assert device.task()["attempt"] == 3
        live.clock.advance(4 * timeout + 1)
        done = complete(client, org, task["id"])
        status = statuses(client, org, task["id"])[did]
        assert (status["status"], status["errorCode"], status["numAttempts"]) == ("FAILED", "NO_ANSWER", 3)
        assert done["statusCounts"]["numFailed"] == 1


# --- server properties and OTA ----------


def test_server_property_bulk_write_by_filter(live: LiveServer, org: Org, client: httpx.Client) -> None:
    fleet = managed_fleet(live, org, client, devices=3)
    for did in fleet.dids[:2]:
        response = client.post(
            f"{DM}/devices/{did}/serverproperties", headers=bearer(org.app_token), json={"enabled": True}
        )
        assert response.status_code == 200, response.text
    task = created(
        client,
        org,
        dtid=fleet.dtid,
        filter="serverProperties.enabled=true",
        taskType="W",
        property="serverProperties.level",
        taskParameters={"value": "7"},
    )
    assert task["status"] == "COMPLETE"
    assert task["filter"] == "serverProperties.enabled=true" and task["dids"] is None
    assert task["statusCounts"]["numSucceeded"] == 2
    assert properties(client, org, fleet.dids[0])["serverProperties"]["level"] == 7
    assert "level" not in properties(client, org, fleet.dids[2])["serverProperties"]


def upload(client: httpx.Client, org: Org, dtid: str, image: bytes, version: str = "2.0.0") -> dict[str, Any]:
    response = client.post(
        f"{DM}/devicetypes/{dtid}/updates",
        params={"version": version, "filename": "fw.bin"},
        headers={**bearer(org.app_token), "Content-Type": "application/octet-stream"},
        content=image,
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_ota_update_with_acceptance(live: LiveServer, org: Org, client: httpx.Client) -> None:
    fleet = managed_fleet(live, org, client)
    accepting, rejecting = fleet.dids
    image = b"\x7fELF firmware " * 1000
    update = upload(client, org, fleet.dtid, image)
    assert update["sha256"] == hashlib.sha256(image).hexdigest() and update["size"] == len(image)
    listed = client.get(f"{DM}/devicetypes/{fleet.dtid}/updates", headers=bearer(org.app_token))
    assert [u["updateId"] for u in listed.json()["data"]] == [update["updateId"]]
    with Managed(live.settings.mqtt_port, accepting, token_of(live, org, accepting)) as device:
        task = created(
            client,
            org,
            dtid=fleet.dtid,
            dids=fleet.dids,
            taskType="E",
            property="deviceProperties.firmware.update",
            taskParameters={"update": {"updateId": update["updateId"]}},
            needsAcceptance=True,
        )
        assert task["needsAcceptance"] is True
        pending = client.get(f"{DM}/devices/{accepting}/pendingtasks", headers=org.owner.headers)
        assert pending.status_code == 200 and pending.json()["data"] == [task["id"]]
        assert wait_for(lambda: task_of(client, org, task["id"])["status"] == "PROCESSING", TIMEOUT)
        assert {s["acceptanceStatus"] for s in statuses(client, org, task["id"]).values()} == {"WAITING"}
        device.nothing_more(0.5)  # not before the owner accepts

        path = f"{DM}/tasks/{task['id']}/devices/{accepting}/acceptance"
        answer = client.post(path, headers=org.owner.headers, json={"acceptanceStatus": "ACCEPTED"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"acceptanceStatus": "ACCEPTED", "data": {"acceptanceStatus": "ACCEPTED"}}
        assert (
            client.post(path, headers=org.owner.headers, json={"acceptanceStatus": "ACCEPTED"}).status_code
            == 400
        )
        message = device.task()
        assert message["property"] == "firmware.update"
        assert message["update"]["sha256"] == update["sha256"] and message["update"]["version"] == "2.0.0"
        downloaded = httpx.get(message["update"]["url"])
        assert (
            downloaded.status_code == 200
            and hashlib.sha256(downloaded.content).hexdigest() == update["sha256"]
        )
        forged = message["update"]["url"][:-4] + "0000"
        assert httpx.get(forged).status_code == 404
        device.publish(
            {"device": {"firmwareVersion": "2.0.0"}}, topic=f"/v1.1/devicemgmt/{accepting}/properties"
        )
        device.answer(task["id"])

        reject = f"{DM}/tasks/{task['id']}/devices/{rejecting}/acceptance"
        assert (
            client.post(reject, headers=org.owner.headers, json={"acceptanceStatus": "REJECTED"}).status_code
            == 200
        )
        done = complete(client, org, task["id"])
        assert (done["statusCounts"]["numSucceeded"], done["statusCounts"]["numFailed"]) == (1, 1)
        per_device = statuses(client, org, task["id"])
        assert (per_device[rejecting]["acceptanceStatus"], per_device[rejecting]["errorCode"]) == (
            "REJECTED",
            "REJECTED",
        )
        assert per_device[accepting]["acceptanceStatus"] == "ACCEPTED"
        assert properties(client, org, accepting)["deviceProperties"]["device"]["firmwareVersion"] == "2.0.0"
        # The task is closed: its download URL no longer works.
        assert httpx.get(message["update"]["url"]).status_code == 404
        assert (
            client.get(f"{DM}/devices/{accepting}/pendingtasks", headers=org.owner.headers).json()["data"]
            == []
        )


# --- bad input and permissions ----------


def task_count(client: httpx.Client, org: Org, dtid: str) -> int:
    response = client.get(f"{DM}/tasks", params={"dtid": dtid}, headers=bearer(org.admin_token))
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (
            {
                "taskType": "W",
                "property": "deviceProperties.device.nothing",
                "taskParameters": {"value": "x"},
            },
            400,
            "property",
        ),
        (
            {
                "taskType": "W",
                "property": "deviceProperties.device.manufacturer",
                "taskParameters": {"value": "x"},
            },
            400,
            "property",
        ),
        ({"taskType": "E", "property": "deviceProperties.device.timezone"}, 400, "property"),
        (
            {"taskType": "W", "property": "serverProperties.level", "taskParameters": {"value": "high"}},
            400,
            "taskParameters.value",
        ),
        ({"taskType": "W", "property": "deviceProperties.device.timezone"}, 400, "taskParameters.value"),
        ({"taskType": "X", "property": "deviceProperties.device.reboot"}, 400, "taskType"),
        ({"taskType": "E"}, 400, "property"),
        (
            {"taskType": "E", "property": "deviceProperties.device.reboot", "needsAcceptance": True},
            400,
            "needsAcceptance",
        ),
        (
            {
                "taskType": "E",
                "property": "deviceProperties.device.reboot",
                "taskParameters": {"expiresAfter": 10},
            },
            400,
            "taskParameters.expiresAfter",
        ),
        (
            {"taskType": "E", "property": "deviceProperties.firmware.update"},
            400,
            "taskParameters.update.updateId",
        ),
        (
            {
                "taskType": "E",
                "property": "deviceProperties.firmware.update",
                "taskParameters": {"update": {"updateId": "f" * 32}},
            },
            404,
            None,
        ),
        (
            {
                "taskType": "E",
                "property": "deviceProperties.device.reboot",
                "filter": "serverProperties.name=nobody",
            },
            400,
            "filter",
        ),
        ({"taskType": "E", "property": "deviceProperties.device.reboot", "dids": []}, 400, "dids"),
        ({"taskType": "E", "property": "deviceProperties.device.reboot", "dids": ["f" * 32]}, 404, None),
    ],
)
def test_bad_task_requests_write_nothing(
    live: LiveServer, org: Org, client: httpx.Client, body: dict[str, Any], status: int, field: str | None
) -> None:
    fleet = managed_fleet(live, org, client, devices=1)
    body = {"dtid": fleet.dtid, "dids": fleet.dids, **body}
    if "filter" in body:
        del body["dids"]
    response = create(client, org.app_token, **body)
    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["error"]["code"] == 4001
        assert response.json()["error"]["errors"][0][0]["field"] == field
    assert task_count(client, org, fleet.dtid) == 0


def test_tasks_mixing_device_types_and_device_properties_off(
    live: LiveServer, org: Org, client: httpx.Client
) -> None:
    fleet, other = managed_fleet(live, org, client, devices=1), managed_fleet(live, org, client, devices=1)
    body = {
        "dtid": fleet.dtid,
        "dids": fleet.dids + other.dids,
        "taskType": "E",
        "property": "deviceProperties.device.reboot",
    }
    response = create(client, org.app_token, **body)
    assert response.status_code == 400 and response.json()["error"]["errors"][0][0]["field"] == "dids"
    plain = new_fleet(live, org, 1)  # devicePropertiesEnabled is off: no device paths
    response = create(
        client,
        org.app_token,
        dtid=plain.dtid,
        dids=plain.dids,
        taskType="E",
        property="deviceProperties.device.reboot",
    )
    assert response.status_code == 400
    assert task_count(client, org, fleet.dtid) == 0


def test_acceptance_for_a_task_that_needs_none(live: LiveServer, org: Org, client: httpx.Client) -> None:
    fleet = managed_fleet(live, org, client, devices=1)
    task = created(
        client, org, dtid=fleet.dtid, dids=fleet.dids, taskType="E", property="deviceProperties.device.reboot"
    )
    path = f"{DM}/tasks/{task['id']}/devices/{fleet.dids[0]}/acceptance"
    response = client.post(path, headers=org.owner.headers, json={"acceptanceStatus": "ACCEPTED"})
    assert response.status_code == 400 and response.json()["error"]["code"] == 4001
    assert (
        client.post(path, headers=org.outsider.headers, json={"acceptanceStatus": "ACCEPTED"}).status_code
        == 403
    )
    assert client.post(
        path, headers=bearer(fleet.device_token), json={"acceptanceStatus": "ACCEPTED"}
    ).status_code in (400, 403)
    assert statuses(client, org, task["id"])[fleet.dids[0]]["acceptanceStatus"] == "NOT_REQUIRED"


def test_token_rules(live: LiveServer, org: Org, client: httpx.Client) -> None:
    fleet = managed_fleet(live, org, client, devices=1)
    body = {
        "dtid": fleet.dtid,
        "dids": fleet.dids,
        "taskType": "E",
        "property": "deviceProperties.device.reboot",
    }
    for token in (org.developer_token, org.owner.token, org.outsider.token, fleet.device_token):
        assert create(client, token, **body).status_code == 403
    assert task_count(client, org, fleet.dtid) == 0
    task = created(client, org, **body)
    for token in (org.admin_token, org.app_token):
        assert client.get(f"{DM}/tasks/{task['id']}", headers=bearer(token)).status_code == 200
    for token in (org.developer_token, org.outsider.token, fleet.device_token):
        assert client.get(f"{DM}/tasks/{task['id']}", headers=bearer(token)).status_code == 403
        assert client.get(f"{DM}/tasks/{task['id']}/statuses", headers=bearer(token)).status_code == 403
        assert (
            client.put(
                f"{DM}/tasks/{task['id']}", headers=bearer(token), json={"status": "CANCELLED"}
            ).status_code
            == 403
        )
    assert client.get(f"{DM}/devices/{fleet.dids[0]}/tasks", headers=org.outsider.headers).status_code == 403
    assert (
        client.get(f"{DM}/devices/{fleet.dids[0]}/pendingtasks", headers=org.outsider.headers).status_code
        == 403
    )
    assert client.get(f"{DM}/tasks/{'f' * 32}", headers=bearer(org.admin_token)).status_code == 404
    assert client.post(f"{DM}/tasks", json=body).status_code == 401
    image = client.post(
        f"{DM}/devicetypes/{fleet.dtid}/updates",
        params={"version": "1"},
        headers=org.outsider.headers,
        content=b"x",
    )
    assert image.status_code == 403
    assert task_of(client, org, task["id"])["status"] != "CANCELLED"


# --- the official SDK ----------


def test_sdk_devices_management_api_tasks(
    live: LiveServer, org: Org, client: httpx.Client, dm_api: artikcloud.DevicesManagementApi
) -> None:
    fleet = managed_fleet(live, org, client, devices=1)
    artikcloud.Configuration().access_token = org.app_token  # the SDK's configuration is one shared object
    api = dm_api
    request = artikcloud.TaskRequest(
        dtid=fleet.dtid,
        dids=fleet.dids,
        task_type="W",
        _property="deviceProperties.device.timezone",
        task_parameters=artikcloud.TaskParameters(value="America/Los_Angeles", expires_after=3600),
    )
    task = api.create_tasks(request).data
    assert task.id and task.status_counts.total_devices == 1
    assert api.get_task_by_id(task.id).data.task_parameters.value == "America/Los_Angeles"
    listed = api.get_tasks(fleet.dtid, count=10, offset=0)
    assert [t.id for t in listed.data.tasks] == [task.id]
    assert listed.status_counts is not None
    with Managed(live.settings.mqtt_port, fleet.dids[0], fleet.device_token) as device:
        device.answer(device.task()["tid"])
        complete(client, org, task.id)
    statuses_ = api.get_statuses(task.id, count=10, offset=0)
    assert statuses_.data.statuses[0].status == "SUCCEEDED"
    history = api.get_statuses_history(task.id, did=fleet.dids[0])
    assert [h.status for h in history.data.history][-1] == "SUCCEEDED"
    by_did = api.get_all_by_did(fleet.dids[0], count=10, offset=0)
    assert by_did.data.tasks[0].id == task.id
    second = api.create_tasks(
        artikcloud.TaskRequest(
            dtid=fleet.dtid, dids=fleet.dids, task_type="E", _property="deviceProperties.device.reboot"
        )
    ).data
    one = api.update_task_for_device(
        second.id, fleet.dids[0], artikcloud.DeviceTaskUpdateRequest(status="CANCELLED")
    )
    assert one.data.status in ("CANCELLED", "CANCEL_REQUESTED")
    third = api.create_tasks(
        artikcloud.TaskRequest(
            dtid=fleet.dtid, dids=fleet.dids, task_type="E", _property="deviceProperties.device.reboot"
        )
    ).data
    assert (
        api.update_task(third.id, artikcloud.TaskUpdateRequest(status="CANCELLED")).data.status == "CANCELLED"
    )
