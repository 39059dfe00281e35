"""``POST /v1.1/messages/import`` (extension): JSON-lines and CSV files of a device's past messages,
stored as history through the ingest path — normalized, deduplicated (against live messages and a
re-import), bad rows reported by line — without /live frames or feed entries, and without replacing a
snapshot value that has a newer ts."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update

from thingcloud import tables as t
from thingcloud.areas.exports import imports
from thingcloud.runtime import Runtime

from .conftest import TEST_DATABASE_URL, LiveServer, scratch_database_url, start_live
from .factories import make_user, record_bus
from .test_live import firehose
from .test_messages_ingest import Lamp, new_lamp, stored_messages
from .test_websocket_device import recv

DAY = 86_400_000
MINUTE = 60_000


def upload(
    client: httpx.Client, headers: dict[str, str], sdid: str, content: bytes, content_type: str, **params: str
) -> httpx.Response:
    return client.post(
        "/v1.1/messages/import",
        headers={**headers, "Content-Type": content_type},
        params={"sdid": sdid, **params},
        content=content,
    )


def imported(
    client: httpx.Client, headers: dict[str, str], sdid: str, content: bytes, content_type: str
) -> dict[str, Any]:
    response = upload(client, headers, sdid, content, content_type)
    assert response.status_code == 200, response.text
    started = response.json()["data"]
    assert started["status"] == "Received" and started["sdid"] == sdid
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = client.get(f"/v1.1/messages/import/{started['importId']}", headers=headers)
        assert status.status_code == 200, status.text
        found: dict[str, Any] = status.json()["data"]
        if found["status"] not in ("Received", "InProgress"):
            return found
        time.sleep(0.05)
    raise AssertionError("import did not finish")


def jsonl(rows: list[Any]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def feed_refs(live: LiveServer, did: str) -> set[str]:
    async def read(rt: Runtime) -> set[str]:
        async with rt.db.read() as conn:
            return set((await conn.execute(select(t.feed.c.ref).where(t.feed.c.did == did))).scalars())

    return live.call(read)


def test_jsonl_import_dedupes_reports_bad_rows_and_stays_off_live(
    live: LiveServer, client: httpx.Client
) -> None:
    lamp = new_lamp(live)
    base = live.clock.now_ms() - 3 * DAY
    sent = client.post(
        "/v1.1/messages", headers=lamp.device, json={"sdid": lamp.did, "ts": base, "data": {"temp": 1.5}}
    )
    assert sent.status_code == 200
    live_mid = sent.json()["data"]["mid"]
    good = [{"ts": base + i * MINUTE, "data": {"temp": i + 0.25, "state": i % 2 == 0}} for i in range(1, 50)]
    rows: list[Any] = [
        {"ts": base, "data": {"temp": 1.5}},  # the live message again: a duplicate
        *good[:20],
        b"{not json",
        {"data": {"temp": 1.0}},  # no ts
        {"ts": base + 5, "data": {"temp": "warm"}},  # not the manifest's type
        {"ts": live.clock.now_ms() + DAY, "data": {"temp": 1.0}},  # in the future
        {"ts": base + 6, "sdid": "f" * 32, "data": {"temp": 1.0}},  # another device
        {"ts": base + 7},  # no data
        *good[20:],
        good[0],  # twice in the file
    ]
    events = record_bus(live, f"message.{lamp.did}")
    with firehose(live, lamp.token) as ws:
        found = imported(client, lamp.owner.headers, lamp.did, jsonl(rows), "application/x-ndjson")
        # The first frame /live shows after the import is a message sent after it.
        after = client.post(
            "/v1.1/messages", headers=lamp.device, json={"sdid": lamp.did, "data": {"temp": 9.5}}
        )
        assert recv(ws)["mid"] == after.json()["data"]["mid"]
    assert found["status"] == "Success", found
    assert (found["totalRows"], found["imported"], found["duplicates"], found["failed"]) == (
        len(rows),
        49,
        2,
        6,
    )
    assert [e["line"] for e in found["errors"]] == [22, 23, 24, 25, 26, 27]
    assert "ts" in found["errors"][1]["message"] and "data" in found["errors"][5]["message"]

    stored = {m["ts"]: m for m in stored_messages(live, lamp.did)}
    assert len(stored) == 51  # the live message, 49 imported, the one sent after
    assert stored[base]["mid"] == live_mid
    for row in good:
        message = stored[row["ts"]]
        assert (
            message["data"] == row["data"]
            and message["uid"] == lamp.owner.id
            and message["sdtid"] == lamp.dtid
        )
    imported_mids = {stored[r["ts"]]["mid"] for r in good}
    assert not imported_mids & feed_refs(live, lamp.did)  # no rules, notifications, /live
    assert not [e for e in events if e[1]["mid"] in imported_mids]

    again = imported(client, lamp.owner.headers, lamp.did, jsonl(good), "application/x-ndjson")
    assert (again["imported"], again["duplicates"], again["failed"]) == (0, 49, 0)
    assert len(stored_messages(live, lamp.did)) == 51


def status_of(client: httpx.Client, lamp: Lamp) -> dict[str, Any]:
    response = client.get(
        f"/v1.1/devices/{lamp.did}/status",
        headers=lamp.owner.headers,
        params={"includeSnapshot": "true", "includeSnapshotTimestamp": "true"},
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_csv_import_keeps_newer_snapshot_values(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    now = live.clock.now_ms()
    recent = now - MINUTE
    sent = client.post(
        "/v1.1/messages", headers=lamp.device, json={"sdid": lamp.did, "ts": recent, "data": {"temp": 30.5}}
    )
    assert sent.status_code == 200
    before = status_of(client, lamp)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["mid", "sdid", "sdtid", "uid", "ts", "cts", "mv", "data"])  # the csv1 export layout
    old = now - DAY
    writer.writerow(
        ["x", lamp.did, lamp.dtid, lamp.owner.id, old, old, 1, json.dumps({"temp": 10.5, "state": True})]
    )
    writer.writerow(
        ["y", lamp.did, lamp.dtid, lamp.owner.id, old + 1, old, 1, json.dumps({"location": {"x": 2.5}})]
    )
    writer.writerow(["z", lamp.did, lamp.dtid, lamp.owner.id, "soon", old, 1, "{}"])
    found = imported(client, lamp.owner.headers, lamp.did, out.getvalue().encode(), "text/csv")
    assert (found["imported"], found["failed"], found["errors"][0]["line"]) == (2, 1, 4), found

    after = status_of(client, lamp)
    snapshot = after["snapshot"]
    assert snapshot["temp"] == {"value": 30.5, "ts": recent}  # newer live value kept
    assert snapshot["state"] == {"value": True, "ts": old}  # a field only history had
    assert snapshot["location"]["x"] == {"value": 2.5, "ts": old + 1}
    assert after["lastMessageTs"] == before["lastMessageTs"] == recent

    data = {m["ts"]: m["data"] for m in stored_messages(live, lamp.did)}
    assert data[old] == {"temp": 10.5, "state": True} and data[old + 1] == {"location": {"x": 2.5}}


def test_import_refusals(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    stranger = make_user(live)
    row = jsonl([{"ts": live.clock.now_ms() - DAY, "data": {"temp": 1.0}}])
    assert upload(client, stranger.headers, lamp.did, row, "application/x-ndjson").status_code == 403
    assert upload(client, lamp.owner.headers, "f" * 32, row, "application/x-ndjson").status_code == 404
    missing = client.post("/v1.1/messages/import", headers=lamp.owner.headers, content=row)
    assert missing.status_code == 400 and missing.json()["error"]["errors"][0][0]["field"] == "sdid"
    unknown_type = upload(client, lamp.owner.headers, lamp.did, row, "application/xml")
    assert unknown_type.status_code == 400 and "format" in unknown_type.text
    assert upload(client, lamp.owner.headers, lamp.did, row, "text/plain", format="yaml").status_code == 400
    assert upload(client, lamp.owner.headers, lamp.did, b"", "application/x-ndjson").status_code == 400
    no_header = imported(client, lamp.owner.headers, lamp.did, b"1,2\n", "text/csv")
    assert no_header["failed"] == 1 and "ts and data" in no_header["errors"][0]["message"]
    # A device token imports into its own device; another user's import does not exist for others.
    found = imported(client, lamp.device, lamp.did, row, "application/x-ndjson")
    assert found["imported"] == 1
    other = client.get(f"/v1.1/messages/import/{found['importId']}", headers=stranger.headers)
    assert other.status_code == 404
    assert stored_messages(live, lamp.did)[0]["data"] == {"temp": 1.0}


def test_file_over_the_limit_is_refused_and_not_kept(tmp_path: Path) -> None:
    url = scratch_database_url() if TEST_DATABASE_URL else ""
    live, thread = start_live(tmp_path / "srv", database_url=url, import_max_bytes=1000)
    try:
        lamp = new_lamp(live)
        rows = jsonl([{"ts": live.clock.now_ms() - DAY + i, "data": {"temp": 1.0}} for i in range(40)])
        with live.client() as client:
            response = upload(client, lamp.owner.headers, lamp.did, rows, "application/x-ndjson")
            assert response.status_code == 413 and response.json()["error"]["code"] == 413
            small = b"".join(rows.splitlines(keepends=True)[:10])  # under the limit: accepted
            found = imported(client, lamp.owner.headers, lamp.did, small, "application/x-ndjson")
            assert (found["imported"], found["failed"]) == (10, 0)
        assert not list((tmp_path / "srv" / "exports").glob("*.upload"))  # spooled files are removed
    finally:
        thread.stop()


def test_import_whose_job_was_given_up_is_closed(live: LiveServer, client: httpx.Client) -> None:
    lamp = new_lamp(live)
    row = jsonl([{"ts": live.clock.now_ms() - DAY, "data": {"temp": 1.0}}])
    found = imported(client, lamp.owner.headers, lamp.did, row, "application/x-ndjson")

    async def bury(rt: Runtime) -> int:
        # As if its runner had died during the last attempt: the job dead, the import still running.
        async with rt.db.write() as conn:
            i = t.message_imports
            await conn.execute(update(i).where(i.c.id == found["importId"]).values(status="InProgress"))
            unique = f"import:{found['importId']}"
            await conn.execute(update(t.jobs).where(t.jobs.c.unique_key == unique).values(status="dead"))
        return await imports.close_abandoned(rt)

    assert live.call(bury) == 1
    status = client.get(f"/v1.1/messages/import/{found['importId']}", headers=lamp.owner.headers).json()[
        "data"
    ]
    assert status["status"] == "Failure" and status["error"] == "The import job was given up"
