"""Message exports over HTTP (S56–S59): archives downloaded, unpacked and compared with what was sent
(JSON and csv1, with and without headers), every combination of uids/sdids/sdtids, limits (nothing
created), permissions, unknown ids, a device deleted mid-run, expiry, history paging, and the
official SDK's ExportApi."""

from __future__ import annotations

import csv
import email
import email.policy
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import artikcloud
import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import update

from thingcloud import tables as t
from thingcloud.areas.exports import service as exports
from thingcloud.auth.permissions import AppPermissions
from thingcloud.runtime import Runtime

from .conftest import TEST_DATABASE_URL, LiveServer, free_port, scratch_database_url, start_live
from .factories import (
    LAMP_MANIFEST,
    app_token,
    make_app,
    make_device,
    make_device_token,
    make_device_type,
    make_user,
    password_token,
)
from .sdk.conftest import Sdk, sdk  # noqa: F401  (the fixture)
from .test_messages_ingest import Lamp, new_lamp
from .test_serve import ADMIN, THINGCLOUD, ServeProcess, console_client_id, password_grant

DAY = 86_400_000
MINUTE = 60_000


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def send(client: httpx.Client, lamp: Lamp, ts: int, data: dict[str, Any]) -> dict[str, Any]:
    response = client.post(
        "/v1.1/messages", headers=lamp.device, json={"sdid": lamp.did, "ts": ts, "data": data}
    )
    assert response.status_code == 200, response.text
    return {"mid": response.json()["data"]["mid"], "sdid": lamp.did, "ts": ts, "data": data}


@dataclass
class Fleet:
    """One owner's three lamps (two of type A, one of type B) and what each sent."""

    owner: Any
    a1: Lamp
    a2: Lamp
    b1: Lamp
    base: int
    sent: list[dict[str, Any]] = field(default_factory=list)

    def of(self, *lamps: Lamp, start: int | None = None, end: int | None = None) -> list[dict[str, Any]]:
        dids = {lamp.did for lamp in lamps}
        lo = self.base if start is None else start
        hi = self.base + 10 * DAY if end is None else end
        rows = [m for m in self.sent if m["sdid"] in dids and lo <= m["ts"] <= hi]
        return sorted(rows, key=lambda m: (m["ts"], m["mid"]))


@pytest.fixture(scope="module")
def fleet(live: LiveServer) -> Fleet:
    owner = make_user(live)
    dt_a, dt_b = make_device_type(live, owner.id), make_device_type(live, owner.id)
    a1, a2, b1 = new_lamp(live, owner, dt_a), new_lamp(live, owner, dt_a), new_lamp(live, owner, dt_b)
    found = Fleet(owner, a1, a2, b1, live.clock.now_ms() - 5 * DAY)
    with live.client() as client:
        for i in range(60):
            lamp = (a1, a2, b1)[i % 3]
            # Pairs of messages share a ts, so (ts, mid) order is exercised.
            ts = found.base + (i // 2) * 97 * MINUTE
            data: dict[str, Any] = {"state": i % 2 == 0, "temp": i + 0.5}
            if i % 4 == 0:
                data["location"] = {"x": float(i)}
            found.sent.append(send(client, lamp, ts, data))
    return found


def request_export(client: httpx.Client, headers: dict[str, str], **body: Any) -> str:
    response = client.post("/v1.1/messages/export", headers=headers, json=body)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    for key in ("uids", "sdids", "sdtids", "trialId", "url", "csvHeaders", "order", "format"):
        assert key in data
    export_id: str = data["exportId"]
    return export_id


def wait_done(
    client: httpx.Client, headers: dict[str, str], export_id: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1.1/messages/export/{export_id}/status", headers=headers)
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        if status["status"] not in ("Received", "InProgress"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"export {export_id} did not finish")


def download(
    client: httpx.Client, headers: dict[str, str], export_id: str
) -> tuple[httpx.Response, dict[str, bytes]]:
    response = client.get(f"/v1.1/messages/export/{export_id}/result", headers=headers)
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    return response, files


def exported(client: httpx.Client, headers: dict[str, str], **body: Any) -> dict[str, bytes]:
    export_id = request_export(client, headers, **body)
    status = wait_done(client, headers, export_id)
    assert status["status"] == "Success", status
    response, files = download(client, headers, export_id)
    assert hashlib.md5(response.content).hexdigest() == status["md5"]
    assert int(response.headers["content-length"]) == status["fileSize"] == len(response.content)
    assert response.headers["x-sami-total-messages"] == str(status["totalMessages"])
    assert response.headers["x-artik-total-messages"] == str(status["totalMessages"])
    return files


def expect_json(files: dict[str, bytes], source: str, messages: list[dict[str, Any]], fleet: Fleet) -> None:
    first = messages[0]["ts"] if messages else 0
    body = json.loads(files[f"{source}-{first}.json"])
    assert body["size"] == len(messages) == len(body["data"])
    assert [(m["mid"], m["sdid"], m["ts"], m["data"]) for m in body["data"]] == [
        (m["mid"], m["sdid"], m["ts"], m["data"]) for m in messages
    ]
    for message in body["data"]:
        assert message["uid"] == fleet.owner.id
        assert set(message) == {"mid", "sdid", "sdtid", "uid", "ts", "cts", "mv", "data"}


# --- contents -----------------------------------------------------------------------------------------


def test_export_of_a_device_as_json_is_what_was_sent(
    live: LiveServer, fleet: Fleet, client: httpx.Client
) -> None:
    start, end = fleet.base, fleet.base + 2 * DAY
    export_id = request_export(
        client,
        fleet.owner.headers,
        sdids=fleet.a1.did,
        startDate=start,
        endDate=end,
        url="https://x.example/a",
    )
    status = wait_done(client, fleet.owner.headers, export_id)
    assert status["status"] == "Success" and status["totalMessages"] == len(fleet.of(fleet.a1, end=end))
    assert status["expirationDate"] > live.clock.now_ms() and int(status["ttl"]) > 0
    response, files = download(client, fleet.owner.headers, export_id)
    assert response.headers["content-type"] == "application/x-compressed"
    assert response.headers["content-disposition"] == f'attachment; filename="{export_id}.tgz"'
    assert "x-rate-limit-limit" in response.headers
    assert len(files) == 1
    expect_json(files, fleet.a1.did, fleet.of(fleet.a1, end=end), fleet)
    served = client.get(f"/v1.1/messages/export/{export_id}/status", headers=fleet.owner.headers).json()
    assert served["status"] == "Served" and served["md5"] == status["md5"]
    _, files_again = download(client, fleet.owner.headers, export_id)  # still downloadable
    assert files_again == files


@pytest.mark.parametrize("headers_flag", [None, True, "0", False])
def test_export_csv1_with_and_without_headers(fleet: Fleet, client: httpx.Client, headers_flag: Any) -> None:
    body: dict[str, Any] = {"sdids": fleet.b1.did, "startDate": fleet.base, "endDate": fleet.base + 9 * DAY}
    body["format"] = "csv1"
    if headers_flag is not None:
        body["csvHeaders"] = headers_flag
    files = exported(client, fleet.owner.headers, **body)
    messages = fleet.of(fleet.b1)
    lines = list(csv.reader(io.StringIO(files[f"{fleet.b1.did}-{messages[0]['ts']}.csv"].decode())))
    if headers_flag in (None, True):
        assert lines.pop(0) == ["mid", "sdid", "sdtid", "uid", "ts", "cts", "mv", "data"]
    assert [(r[0], r[1], int(r[4]), json.loads(r[7])) for r in lines] == [
        (m["mid"], m["sdid"], m["ts"], m["data"]) for m in messages
    ]
    assert {r[3] for r in lines} == {fleet.owner.id} and {r[2] for r in lines} == {fleet.b1.dtid}


def test_export_by_user_by_types_and_combined(fleet: Fleet, client: httpx.Client) -> None:
    h, window = fleet.owner.headers, {"startDate": fleet.base, "endDate": fleet.base + 9 * DAY}
    files = exported(client, h, uids=fleet.owner.id, **window)
    expect_json(files, fleet.owner.id, fleet.of(fleet.a1, fleet.a2, fleet.b1), fleet)

    files = exported(client, h, uids=fleet.owner.id, sdtids=fleet.a1.dtid, **window)
    expect_json(files, fleet.owner.id, fleet.of(fleet.a1, fleet.a2), fleet)

    files = exported(
        client, h, uids=fleet.owner.id, sdtids=fleet.b1.dtid, sdids=f"{fleet.a1.did},{fleet.a2.did}", **window
    )
    assert len(files) == 3
    expect_json(files, fleet.owner.id, fleet.of(fleet.b1), fleet)
    expect_json(files, fleet.a1.did, fleet.of(fleet.a1), fleet)
    expect_json(files, fleet.a2.did, fleet.of(fleet.a2), fleet)


def test_export_desc_order_range_and_empty(live: LiveServer, fleet: Fleet, client: httpx.Client) -> None:
    start, end = fleet.base + DAY, fleet.base + 2 * DAY
    files = exported(
        client, fleet.owner.headers, sdids=fleet.a2.did, startDate=start, endDate=end, order="desc"
    )
    expected = fleet.of(fleet.a2, start=start, end=end)[::-1]
    body = json.loads(files[f"{fleet.a2.did}-{expected[0]['ts']}.json"])
    assert [m["mid"] for m in body["data"]] == [m["mid"] for m in expected]

    later = live.clock.now_ms() + DAY
    files = exported(client, fleet.owner.headers, sdids=fleet.a2.did, startDate=later, endDate=later + DAY)
    assert json.loads(files[f"{fleet.a2.did}-0.json"]) == {"size": 0, "data": []}


# --- bad input and permissions ------------------------------------------------------------------------


def history_total(client: httpx.Client, headers: dict[str, str]) -> int:
    response = client.get("/v1.1/messages/export/history", headers=headers)
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


def test_limits_and_bad_requests_create_nothing(fleet: Fleet, client: httpx.Client) -> None:
    h = fleet.owner.headers
    before = history_total(client, h)
    window = {"startDate": fleet.base, "endDate": fleet.base + DAY}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"sdids": ",".join(f"{n:032x}" for n in range(31)), **window}, "sdids"),
        ({"uids": ",".join([fleet.owner.id] + [f"{n:032x}" for n in range(30)]), **window}, "uids"),
        ({"sdids": fleet.a1.did, "startDate": fleet.base, "endDate": fleet.base + 32 * DAY}, "endDate"),
        ({"sdids": fleet.a1.did, "startDate": fleet.base + DAY, "endDate": fleet.base}, "endDate"),
        ({"sdids": fleet.a1.did, "endDate": fleet.base}, "startDate"),
        ({"sdtids": fleet.a1.dtid, **window}, "sdtids"),
        ({**window}, "uids"),
        ({"sdids": fleet.a1.did, "format": "xml", **window}, "format"),
        ({"sdids": fleet.a1.did, "order": "up", **window}, "order"),
        ({"sdids": fleet.a1.did, "csvHeaders": "maybe", **window}, "csvHeaders"),
        ({"sdids": fleet.a1.did, "startDate": "yesterday", "endDate": fleet.base}, "startDate"),
    ]
    for body, field_name in cases:
        response = client.post("/v1.1/messages/export", headers=h, json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == 4001 and field_name in [e["field"] for e in error["errors"][0]], (body, error)
    for key in ("trialId", "trialID"):
        response = client.post("/v1.1/messages/export", headers=h, json={key: "t1", **window})
        assert response.status_code == 400
        assert "trials are not available" in response.text.lower()
    assert history_total(client, h) == before


def test_permissions_and_unknown_ids(live: LiveServer, fleet: Fleet, client: httpx.Client) -> None:
    stranger = make_user(live)
    window = {"startDate": fleet.base, "endDate": fleet.base + DAY}
    forbidden = [
        {"sdids": fleet.a1.did},
        {"uids": fleet.owner.id},
        {"uids": stranger.id, "sdids": fleet.b1.did},
    ]
    for body in forbidden:
        response = client.post("/v1.1/messages/export", headers=stranger.headers, json={**body, **window})
        assert response.status_code == 403, response.text
    unknown = [{"sdids": "f" * 32}, {"uids": "e" * 32}, {"uids": fleet.owner.id, "sdtids": "dt" + "d" * 32}]
    for body in unknown:
        response = client.post("/v1.1/messages/export", headers=fleet.owner.headers, json={**body, **window})
        assert response.status_code == 404, response.text
    assert history_total(client, stranger.headers) == 0
    # Someone else's export does not exist for the stranger.
    export_id = request_export(client, fleet.owner.headers, sdids=fleet.a1.did, **window)
    for path in ("status", "result"):
        response = client.get(f"/v1.1/messages/export/{export_id}/{path}", headers=stranger.headers)
        assert response.status_code == 404
        assert (
            client.get(f"/v1.1/messages/export/{'0' * 32}/{path}", headers=fleet.owner.headers).status_code
            == 404
        )
    # A device token may export its own device, not another.
    assert request_export(client, fleet.a1.device, sdids=fleet.a1.did, **window)
    response = client.post(
        "/v1.1/messages/export", headers=fleet.a1.device, json={"sdids": fleet.a2.did, **window}
    )
    assert response.status_code == 403


def test_user_export_holds_only_the_types_the_application_may_read(live: LiveServer, fleet: Fleet) -> None:
    window = {"startDate": fleet.base, "endDate": fleet.base + 9 * DAY}
    only_a = make_app(
        live, fleet.owner.id, permissions=AppPermissions(device_types={fleet.a1.dtid: frozenset({"READ"})})
    )
    but_a = make_app(
        live,
        fleet.owner.id,
        permissions=AppPermissions(device_types={"*": frozenset({"READ"}), fleet.a1.dtid: frozenset()}),
    )
    with live.client() as client:
        h = bearer(password_token(live, only_a, fleet.owner.email)["access_token"])
        files = exported(client, h, uids=fleet.owner.id, **window)
        expect_json(files, fleet.owner.id, fleet.of(fleet.a1, fleet.a2), fleet)
        response = client.post(
            "/v1.1/messages/export",
            headers=h,
            json={"uids": fleet.owner.id, "sdtids": fleet.b1.dtid, **window},
        )
        assert response.status_code == 403 and fleet.b1.dtid in response.json()["error"]["message"]
        h = bearer(password_token(live, but_a, fleet.owner.email)["access_token"])
        files = exported(client, h, uids=fleet.owner.id, **window)
        expect_json(files, fleet.owner.id, fleet.of(fleet.b1), fleet)


def test_history_is_paged_newest_first(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    now = live.clock.now_ms()
    ids = [
        request_export(client, lamp.owner.headers, sdids=lamp.did, startDate=now - DAY, endDate=now)
        for _ in range(3)
    ]
    for export_id in ids:
        wait_done(client, lamp.owner.headers, export_id)
    page = client.get("/v1.1/messages/export/history", headers=lamp.owner.headers, params={"count": 2}).json()
    assert page["total"] == 3 and page["count"] == 2 and page["offset"] == 0
    rest = client.get(
        "/v1.1/messages/export/history", headers=lamp.owner.headers, params={"count": 2, "offset": 2}
    ).json()
    listed = page["data"]["exports"] + rest["data"]["exports"]
    assert sorted(e["exportId"] for e in listed) == sorted(ids)
    first = listed[0]
    assert first["status"] == "Success" and first["totalMessages"] == 0 and first["md5"]
    assert first["request"]["sdids"] == lamp.did and first["request"]["format"] == "json"
    assert first["request"]["requestDate"] >= now


def test_device_deleted_mid_run_ends_consistently(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    base = live.clock.now_ms() - DAY
    for i in range(40):
        send(client, lamp, base + i * MINUTE, {"temp": float(i)})
    export_id = request_export(client, lamp.owner.headers, sdids=lamp.did, startDate=base, endDate=base + DAY)
    assert client.delete(f"/v1.1/devices/{lamp.did}", headers=lamp.owner.headers).status_code == 200
    status = wait_done(client, lamp.owner.headers, export_id)
    assert status["status"] == "Success"
    _, files = download(client, lamp.owner.headers, export_id)
    (content,) = files.values()
    body = json.loads(content)
    # Whatever the job read before the device's messages were purged, the archive agrees with itself.
    assert body["size"] == len(body["data"]) == status["totalMessages"] <= 40
    assert all(m["sdid"] == lamp.did for m in body["data"])


# --- expiry -------------------------------------------------------------------------------------------


class Inbox:
    """A real local SMTP server (aiosmtpd) keeping what it receives."""

    def __init__(self) -> None:
        self.mails: list[Any] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        self.mails.append(envelope)
        return "250 OK"

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.controller.port}"

    def wait(self, count: int) -> list[Any]:
        deadline = time.monotonic() + 30
        while len(self.mails) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.mails


@pytest.fixture()
def inbox() -> Iterator[Inbox]:
    found = Inbox()
    found.controller.start()
    yield found
    found.controller.stop()


def own_server(tmp_path: Path, **settings: Any) -> tuple[LiveServer, Any]:
    url = scratch_database_url() if TEST_DATABASE_URL else ""
    return start_live(tmp_path / "srv", database_url=url, job_poll_interval=0.05, **settings)


def own_lamp(live: LiveServer) -> Lamp:
    owner = make_user(live)
    dtid = make_device_type(live, owner.id)
    did = make_device(live, owner.headers, dtid)["id"]
    return Lamp(owner, dtid, did, make_device_token(live, owner, did))


@pytest.fixture()
def short_lived(tmp_path: Path, inbox: Inbox) -> Iterator[LiveServer]:
    server, thread = own_server(tmp_path, export_ttl=600, smtp_url=inbox.url, mail_from="cloud@example.com")
    yield server
    thread.stop()


def test_export_expires_after_its_ttl(short_lived: LiveServer) -> None:
    live = short_lived
    lamp = own_lamp(live)
    owner, did = lamp.owner, lamp.did
    now = live.clock.now_ms()
    with live.client() as client:
        send(client, lamp, now - MINUTE, {"temp": 1.0})
        body = {"sdids": did, "startDate": now - DAY, "endDate": now, "url": "https://app.example/done"}
        export_id = request_export(client, owner.headers, **body)
        status = wait_done(client, owner.headers, export_id)
        assert status["status"] == "Success" and status["totalMessages"] == 1
        path = exports.archive_path(live.rt, export_id)
        assert path.exists()
        assert status["expirationDate"] == pytest.approx(live.clock.now_ms() + 600_000, abs=30_000)

        async def expire(rt: Runtime) -> dict[str, int]:
            return await exports.expire(rt)

        assert live.call(expire)["expired"] == 0  # not yet
        live.clock.advance(601)
        assert live.call(expire)["expired"] == 1
        assert not path.exists()
        assert (
            client.get(f"/v1.1/messages/export/{export_id}/status", headers=owner.headers).json()["status"]
            == "Expired"
        )
        response = client.get(f"/v1.1/messages/export/{export_id}/result", headers=owner.headers)
        assert response.status_code == 410 and response.json()["error"]["code"] == 410


def test_ready_export_is_mailed_to_the_requester(short_lived: LiveServer, inbox: Inbox) -> None:
    live = short_lived
    lamp = own_lamp(live)
    now = live.clock.now_ms()
    with live.client() as client:
        body = {"sdids": lamp.did, "startDate": now - DAY, "endDate": now, "url": "https://app.example/done"}
        export_id = request_export(client, lamp.owner.headers, **body)
        assert wait_done(client, lamp.owner.headers, export_id)["status"] == "Success"
        (mail,) = inbox.wait(1)
        assert mail.mail_from == "cloud@example.com" and mail.rcpt_tos == [lamp.owner.email]
        message = email.message_from_bytes(mail.content, policy=email.policy.default)
        assert message["Subject"] == f"Your ThingCloud export {export_id} is ready"
        text = message.get_body().get_content()  # type: ignore[union-attr]
        assert f"{live.url}/v1.1/messages/export/{export_id}/result" in text
        assert "https://app.example/done" in text
        # An application token's export has no address to mail: it is only logged.
        app = bearer(app_token(live, lamp.owner.app))
        by_app = request_export(client, app, sdids=lamp.did, startDate=now - DAY, endDate=now)
        assert wait_done(client, app, by_app)["status"] == "Success"
        assert history_total(client, app) == 1 and history_total(client, lamp.owner.headers) == 1
    time.sleep(0.5)
    assert len(inbox.mails) == 1


def test_export_that_cannot_be_written_ends_in_failure(tmp_path: Path, inbox: Inbox) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the export directory should be")
    live, thread = own_server(tmp_path, export_dir=blocked, job_max_attempts=1, smtp_url=inbox.url)
    try:
        lamp = own_lamp(live)
        now = live.clock.now_ms()
        with live.client() as client:
            export_id = request_export(
                client, lamp.owner.headers, sdids=lamp.did, startDate=now - DAY, endDate=now
            )
            status = wait_done(client, lamp.owner.headers, export_id)
            assert status["status"] == "Failure" and status["md5"] is None
            response = client.get(f"/v1.1/messages/export/{export_id}/result", headers=lamp.owner.headers)
            assert response.status_code == 409 and "failed" in response.json()["error"]["message"]
        (mail,) = inbox.wait(1)
        subject = email.message_from_bytes(mail.content, policy=email.policy.default)["Subject"]
        assert subject == f"Your ThingCloud export {export_id} failed"

        # A job given up without its handler's say (its runner died on the last attempt): the
        # recurring expiry closes the export instead of leaving it InProgress forever.
        with live.client() as client:
            window = {"startDate": now - DAY, "endDate": now}
            stuck = request_export(client, lamp.owner.headers, sdids=lamp.did, **window)
            wait_done(client, lamp.owner.headers, stuck)

        async def bury(rt: Runtime) -> dict[str, int]:
            async with rt.db.write() as conn:
                await conn.execute(
                    update(t.exports).where(t.exports.c.id == stuck).values(status="InProgress")
                )
                await conn.execute(
                    update(t.jobs).where(t.jobs.c.unique_key == f"export:{stuck}").values(status="dead")
                )
            return await exports.expire(rt)

        assert live.call(bury)["failed"] == 1
        with live.client() as client:
            status = client.get(f"/v1.1/messages/export/{stuck}/status", headers=lamp.owner.headers).json()
        assert status["status"] == "Failure"
    finally:
        thread.stop()


# --- the official SDK ---------------------------------------------------------------------------------


def test_sdk_export_api(live: LiveServer, fleet: Fleet, sdk: Sdk) -> None:  # noqa: F811
    api = artikcloud.ExportApi(sdk.messages.api_client)
    sdk.use(fleet.owner.token)
    info = artikcloud.ExportRequestInfo(
        sdids=fleet.a1.did,
        start_date=fleet.base,
        end_date=fleet.base + 9 * DAY,
        format="csv1",
        csv_headers=True,
    )
    created = api.export_request(info)
    export_id = created.data.export_id
    assert created.data.sdids == fleet.a1.did and created.data.format == "csv1"
    with live.client() as client:
        wait_done(client, fleet.owner.headers, export_id)
    status = api.get_export_status(export_id)
    assert status.status == "Success" and status.md5
    history = api.get_export_history(count=100)
    assert export_id in [e.export_id for e in history.data.exports]
    found = next(e for e in history.data.exports if e.export_id == export_id)
    assert found.request.sdids == fleet.a1.did and found.total_messages == len(fleet.of(fleet.a1))
    api.get_export_result(export_id, _preload_content=False)
    assert api.get_export_status(export_id).status == "Served"


# --- a server killed mid-export -----------------------------------------------------------------------

KILLED_ROWS = 100_000
ADMIN_PASSWORD = "admin-password-for-exports"
UNIQUE_NAME = ("--unique-name", "com.example.restart.lamp", "--published")


def test_export_of_a_killed_server_is_retried_to_success(tmp_path: Path) -> None:
    url = scratch_database_url() if TEST_DATABASE_URL else ""
    data_dir = tmp_path / "data"
    env = {
        "THINGCLOUD_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "THINGCLOUD_SECRET_KEY": "export-restart-secret-key-long-enough",
        "THINGCLOUD_DATABASE_URL": url,
        "THINGCLOUD_JOB_LEASE_SECONDS": "2",
        "THINGCLOUD_RATE_LIMITS": "off",
    }
    servers = [ServeProcess(data_dir, **env)]
    try:
        first = servers[0]
        first.wait_ready()
        token = password_grant(first.url, console_client_id(first.stdout), ADMIN_PASSWORD).json()[
            "access_token"
        ]
        h = bearer(token)
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("THINGCLOUD_")}
        cli_env.update(env, THINGCLOUD_DATA_DIR=str(data_dir))
        created = subprocess.run(
            [THINGCLOUD, "devicetypes", "create", "--owner", ADMIN, "--name", "Lamp", *UNIQUE_NAME],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        dtid = json.loads(created.stdout)["id"]
        subprocess.run(
            [THINGCLOUD, "devicetypes", "add-manifest", dtid, "-"],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            input=json.dumps(LAMP_MANIFEST),
        )
        with httpx.Client(base_url=first.url, timeout=60) as client:
            device = client.post("/v1.1/devices", headers=h, json={"dtid": dtid, "name": "Restart lamp"})
            assert device.status_code == 200, device.text
            did = device.json()["data"]["id"]
            base = int(time.time() * 1000) - 20 * DAY
            rows = b"".join(
                b'{"ts":%d,"data":{"temp":%d.5,"state":true}}\n' % (base + i * 10, i)
                for i in range(KILLED_ROWS)
            )
            started = client.post(
                "/v1.1/messages/import",
                headers={**h, "Content-Type": "application/x-ndjson"},
                params={"sdid": did},
                content=rows,
            ).json()["data"]
            deadline = time.monotonic() + 300
            while (
                client.get(f"/v1.1/messages/import/{started['importId']}", headers=h).json()["data"]["status"]
                != "Success"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            export_id = request_export(client, h, sdids=did, startDate=base, endDate=base + 30 * DAY)
            seen = []
            while not seen or seen[-1] == "Received":
                seen.append(
                    client.get(f"/v1.1/messages/export/{export_id}/status", headers=h).json()["status"]
                )
            assert seen[-1] == "InProgress", seen  # caught while the archive is being written
            first.kill()
        second = ServeProcess(data_dir, **env)
        servers.append(second)
        second.wait_ready()
        with httpx.Client(base_url=second.url, timeout=60) as client:
            status = wait_done(client, h, export_id, timeout=300)
            assert status["status"] == "Success" and status["totalMessages"] == KILLED_ROWS
            _, files = download(client, h, export_id)
        (content,) = files.values()
        body = json.loads(content)
        assert body["size"] == KILLED_ROWS and body["data"][-1]["ts"] == base + (KILLED_ROWS - 1) * 10
        assert not list((data_dir / "exports").glob("*.work"))  # the interrupted attempt's files are gone
    finally:
        for server in servers:
            server.kill()
