"""The official ``artikcloud==2.2.3`` SDK reads messages back from a live server: ``MessagesApi``
query, paging, last messages, snapshots, presence, aggregates and histograms, asserting on the SDK's
own model objects against values computed here."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from typing import Any

import artikcloud
import httpx
import pytest
from artikcloud.rest import ApiException

from ..conftest import LiveServer
from ..test_message_queries import MINUTE, payload, send
from ..test_messages_ingest import Lamp, new_lamp

DAY = 86_400_000


@pytest.fixture()
def api(live: LiveServer) -> Iterator[tuple[artikcloud.MessagesApi, artikcloud.Configuration]]:
    config = artikcloud.Configuration()
    saved = (config.host, config.access_token)
    config.host = live.url + "/v1.1"
    try:
        yield artikcloud.MessagesApi(artikcloud.ApiClient()), config
    finally:
        config.host, config.access_token = saved


@pytest.fixture(scope="module")
def stored(live: LiveServer) -> tuple[Lamp, int, list[dict[str, Any]]]:
    lamp = new_lamp(live)
    base = live.clock.now_ms() - 2 * DAY
    base -= base % DAY
    with live.client() as client:
        sent = [send(client, lamp.token, lamp.did, base + i * 7 * MINUTE, payload(i)) for i in range(60)]
        for i in range(5):
            body = {
                "ddid": lamp.did,
                "ts": base + i * MINUTE,
                "data": {"actions": [{"name": "setOn", "parameters": {}}]},
            }
            assert client.post("/v1.1/actions", headers=lamp.owner.headers, json=body).status_code == 200
    live.clock.advance(61)
    return lamp, base, sent


def test_query_combinations_and_paging(
    api: tuple[artikcloud.MessagesApi, artikcloud.Configuration],
    stored: tuple[Lamp, int, list[dict[str, Any]]],
) -> None:
    messages, config = api
    lamp, base, sent = stored
    config.access_token = lamp.owner.token
    start, end = base + 30 * MINUTE, base + 300 * MINUTE
    expected = [m for m in sent if start <= m["ts"] <= end]

    seen: list[artikcloud.NormalizedMessage] = []
    offset = None
    while True:
        kwargs: dict[str, Any] = {"sdid": lamp.did, "start_date": start, "end_date": end, "count": 8}
        if offset:
            kwargs["offset"] = offset
        page = messages.get_normalized_messages(**kwargs)
        assert isinstance(page, artikcloud.NormalizedMessagesEnvelope)
        assert (page.sdid, page.uid, page.start_date, page.end_date, page.order) == (
            lamp.did,
            lamp.owner.id,
            start,
            end,
            "asc",
        )
        assert page.size == len(page.data) and page.count == 8
        seen.extend(page.data)
        offset = page.next
        if not offset:
            break
    assert all(isinstance(m, artikcloud.NormalizedMessage) for m in seen)
    assert [(m.mid, m.ts, m.data, m.sdtid, m.mv) for m in seen] == [
        (m["mid"], m["ts"], m["data"], lamp.dtid, 1) for m in expected
    ]

    desc = messages.get_normalized_messages(sdid=lamp.did, start_date=start, end_date=end, order="desc")
    assert [m.mid for m in desc.data] == [m["mid"] for m in expected[::-1]] and desc.next in ("", None)

    one = messages.get_normalized_messages(mid=sent[10]["mid"])
    assert (one.size, one.data[0].mid, one.data[0].data) == (1, sent[10]["mid"], sent[10]["data"])

    located = messages.get_normalized_messages(sdid=lamp.did, field_presence="location.x")
    assert [m.mid for m in located.data] == [m["mid"] for m in sent if "location" in m["data"]]

    filtered = messages.get_normalized_messages(
        sdid=lamp.did, filter="+temp:>10 +state:false", start_date=base, end_date=base + DAY
    )
    assert [m.mid for m in filtered.data] == [
        m["mid"]
        for m in sent
        if m["ts"] <= base + DAY and m["data"].get("temp", 0) > 10 and not m["data"]["state"]
    ]

    by_uid = messages.get_normalized_messages(uid=lamp.owner.id, start_date=start, end_date=end, count=100)
    assert [m.mid for m in by_uid.data] == [m["mid"] for m in expected]

    with pytest.raises(ApiException) as bad:
        messages.get_normalized_messages(sdid=lamp.did, filter="temp:>", start_date=base, end_date=base + DAY)
    assert bad.value.status == 400
    assert json.loads(bad.value.body)["error"]["errors"][0][0]["message"] == [
        "Expected a value for 'temp' at position 7"
    ]
    with pytest.raises(ApiException) as missing:
        messages.get_normalized_messages(mid="0" * 32)
    assert missing.value.status == 404


def test_actions_last_snapshots(
    api: tuple[artikcloud.MessagesApi, artikcloud.Configuration],
    stored: tuple[Lamp, int, list[dict[str, Any]]],
) -> None:
    messages, config = api
    lamp, base, sent = stored
    config.access_token = lamp.owner.token
    actions = messages.get_normalized_actions(ddid=lamp.did, start_date=base, end_date=base + DAY, count=3)
    assert isinstance(actions, artikcloud.NormalizedActionsEnvelope)
    assert (actions.ddid, actions.size, bool(actions.next)) == (lamp.did, 3, True)
    assert all(isinstance(a, artikcloud.NormalizedAction) for a in actions.data)
    assert [a.ts for a in actions.data] == [base, base + MINUTE, base + 2 * MINUTE]
    rest = messages.get_normalized_actions(
        ddid=lamp.did, start_date=base, end_date=base + DAY, count=3, offset=actions.next
    )
    assert [a.ts for a in rest.data] == [base + 3 * MINUTE, base + 4 * MINUTE] and not rest.next
    assert isinstance(rest.data[0].data, artikcloud.ActionArray)
    assert [(a.name, a.parameters) for a in rest.data[0].data.actions] == [("setOn", {})]

    last = messages.get_last_normalized_messages(sdids=lamp.did, count=5)
    assert isinstance(last, artikcloud.NormalizedMessagesEnvelope)
    assert [m.mid for m in last.data] == [m["mid"] for m in sent[::-1][:5]]
    with_x = messages.get_last_normalized_messages(sdids=lamp.did, count=2, field_presence="location.x")
    assert [m.mid for m in with_x.data] == [m["mid"] for m in sent[::-1] if "location" in m["data"]][:2]

    snapshots = messages.get_message_snapshots(lamp.did, include_timestamp=True)
    assert isinstance(snapshots, artikcloud.SnapshotResponses)
    assert isinstance(snapshots.data[0], artikcloud.SnapshotResponse)
    newest_temp = [m for m in sent if "temp" in m["data"]][-1]
    assert snapshots.data[0].sdid == lamp.did
    assert snapshots.data[0].data["temp"] == {"value": newest_temp["data"]["temp"], "ts": newest_temp["ts"]}
    plain = messages.get_message_snapshots(lamp.did)
    assert plain.data[0].data["state"] == sent[-1]["data"]["state"]


def test_analytics(
    api: tuple[artikcloud.MessagesApi, artikcloud.Configuration],
    stored: tuple[Lamp, int, list[dict[str, Any]]],
) -> None:
    messages, config = api
    lamp, base, sent = stored
    config.access_token = lamp.token  # the device's own token may read its analytics
    end = base + DAY
    temps = [m["data"]["temp"] for m in sent if m["ts"] < end and "temp" in m["data"]]
    aggregates = messages.get_message_aggregates(lamp.did, "temp", base, end)
    assert isinstance(aggregates, artikcloud.AggregatesResponse)
    [agg] = aggregates.data
    assert isinstance(agg, artikcloud.AggregateData)
    assert (agg.count, agg.min, agg.max) == (len(temps), min(temps), max(temps))
    assert agg.sum == pytest.approx(sum(temps)) and agg.mean == pytest.approx(statistics.fmean(temps))
    assert agg.variance == pytest.approx(statistics.pvariance(temps))

    histogram = messages.get_aggregates_histogram(base, end, sdid=lamp.did, field="temp", interval="hour")
    assert isinstance(histogram, artikcloud.AggregatesHistogramResponse)
    hours: dict[int, list[float]] = {}
    for m in sent:
        if m["ts"] < end and "temp" in m["data"]:
            hours.setdefault(m["ts"] - m["ts"] % 3_600_000, []).append(m["data"]["temp"])
    assert [(h.ts, h.count, h.min, h.max) for h in histogram.data] == [
        (ts, len(v), min(v), max(v)) for ts, v in sorted(hours.items())
    ]
    assert all(isinstance(h, artikcloud.AggregatesHistogramData) for h in histogram.data)

    presence = messages.get_field_presence(base, end, "hour", sdid=lamp.did, field_presence="location.x")
    assert isinstance(presence, artikcloud.FieldPresenceEnvelope)
    assert [p.start_date for p in presence.data] == sorted(
        {m["ts"] - m["ts"] % 3_600_000 for m in sent if m["ts"] <= end and "location" in m["data"]}
    )
    assert all(isinstance(p, artikcloud.FieldPresence) for p in presence.data)


def test_refused(
    live: LiveServer,
    api: tuple[artikcloud.MessagesApi, artikcloud.Configuration],
    stored: tuple[Lamp, int, list[dict[str, Any]]],
) -> None:
    messages, config = api
    lamp, base, _ = stored
    other = new_lamp(live)
    config.access_token = other.owner.token
    with pytest.raises(ApiException) as refused:
        messages.get_normalized_messages(sdid=lamp.did, start_date=base, end_date=base + DAY)
    assert refused.value.status == 403
    config.access_token = other.token
    with pytest.raises(ApiException) as device:
        messages.get_message_aggregates(lamp.did, "temp", base, base + DAY)
    assert device.value.status == 403
    assert httpx.get(f"{live.url}/v1.1/messages/last", params={"sdids": lamp.did}).status_code == 401
