"""The official ``artikcloud==2.2.3`` SDK sends messages and actions to a live server:
``MessagesApi.send_message`` and ``send_actions``, with the SDK's own models, and its errors."""

from __future__ import annotations

import json
from collections.abc import Iterator

import artikcloud
import pytest
from artikcloud.rest import ApiException

from ..conftest import LiveServer
from ..factories import make_user
from ..test_messages_ingest import new_lamp, stored_actions, stored_messages


@pytest.fixture()
def messages(live: LiveServer) -> Iterator[tuple[artikcloud.MessagesApi, artikcloud.Configuration]]:
    config = artikcloud.Configuration()
    saved = (config.host, config.access_token)
    config.host = live.url + "/v1.1"
    try:
        yield artikcloud.MessagesApi(artikcloud.ApiClient()), config
    finally:
        config.host, config.access_token = saved


def failure(exc: pytest.ExceptionInfo[ApiException]) -> tuple[int, int]:
    return exc.value.status, json.loads(exc.value.body)["error"]["code"]


def test_send_message(
    live: LiveServer, messages: tuple[artikcloud.MessagesApi, artikcloud.Configuration]
) -> None:
    api, config = messages
    lamp = new_lamp(live)
    ts = live.clock.now_ms() - 1_000

    config.access_token = lamp.token
    sent = api.send_message(
        artikcloud.Message(data={"temp": "21.5", "extra": 1}, sdid=lamp.did, ts=ts, type="message")
    )
    assert isinstance(sent, artikcloud.MessageIDEnvelope)
    assert isinstance(sent.data, artikcloud.MessageID)
    [row] = stored_messages(live, lamp.did)
    assert (sent.data.mid, row["ts"], row["data"], row["uid"]) == (
        row["mid"],
        ts,
        {"temp": 21.5},
        lamp.owner.id,
    )
    # Re-sent: the same mid back.
    again = api.send_message(artikcloud.Message(data={"temp": 21.5}, sdid=lamp.did, ts=ts))
    assert again.data.mid == sent.data.mid

    config.access_token = lamp.owner.token
    by_owner = api.send_message(artikcloud.Message(data={"state": True}, sdid=lamp.did))
    assert by_owner.data.mid in [r["mid"] for r in stored_messages(live, lamp.did)]

    with pytest.raises(ApiException) as bad:
        api.send_message(artikcloud.Message(data={"temp": "hot"}, sdid=lamp.did))
    assert failure(bad) == (400, 4001)
    with pytest.raises(ApiException) as unknown:
        api.send_message(artikcloud.Message(data={"temp": 1}, sdid="0" * 32))
    assert failure(unknown) == (404, 404)
    config.access_token = make_user(live).token
    with pytest.raises(ApiException) as stranger:
        api.send_message(artikcloud.Message(data={"temp": 1}, sdid=lamp.did))
    assert failure(stranger) == (403, 403)
    config.access_token = "0" * 32
    with pytest.raises(ApiException) as anonymous:
        api.send_message(artikcloud.Message(data={"temp": 1}, sdid=lamp.did))
    assert failure(anonymous) == (401, 401)
    assert len(stored_messages(live, lamp.did)) == 2


def test_send_actions(
    live: LiveServer, messages: tuple[artikcloud.MessagesApi, artikcloud.Configuration]
) -> None:
    api, config = messages
    lamp = new_lamp(live)
    config.access_token = lamp.owner.token

    set_on = artikcloud.ActionArray(actions=[artikcloud.Action(name="setOn", parameters={})])
    sent = api.send_actions(artikcloud.Actions(ddid=lamp.did, data=set_on, type="action"))
    assert isinstance(sent, artikcloud.MessageIDEnvelope)
    [row] = stored_actions(live, lamp.did)
    assert (sent.data.mid, row["ddid"], row["data"]) == (
        row["mid"],
        lamp.did,
        {"actions": [{"name": "setOn", "parameters": {}}]},
    )

    unknown_action = artikcloud.ActionArray(actions=[artikcloud.Action(name="fly", parameters={})])
    with pytest.raises(ApiException) as bad:
        api.send_actions(artikcloud.Actions(ddid=lamp.did, data=unknown_action, type="action"))
    assert failure(bad) == (400, 4001)
    with pytest.raises(ApiException) as missing:
        api.send_actions(artikcloud.Actions(ddid="0" * 32, data=set_on, type="action"))
    assert failure(missing) == (404, 404)
    config.access_token = make_user(live).token
    with pytest.raises(ApiException) as stranger:
        api.send_actions(artikcloud.Actions(ddid=lamp.did, data=set_on, type="action"))
    assert failure(stranger) == (403, 403)
    assert len(stored_actions(live, lamp.did)) == 1
