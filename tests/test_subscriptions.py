"""Subscriptions and notifications (S60–S64) against a real callback server on 127.0.0.1.

The server under test runs with ``allow_insecure_callbacks`` (http:// on loopback), a 3 s batch
window, fast retries and a low suspension threshold. Signatures are verified by the callback server
with oauthlib's server side (tests/callback_server.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import artikcloud
import httpx
import pytest

from thingcloud.areas.subscriptions import callbacks
from thingcloud.areas.subscriptions.sinks import KinesisTarget
from thingcloud.jobs import Job

from .callback_server import CallbackServer
from .conftest import TEST_DATABASE_URL, LiveServer, make_settings, scratch_database_url, start_live
from .factories import App, app_token, make_app, make_device, make_device_type, make_user
from .sdk.conftest import Sdk

if TYPE_CHECKING:
    from .factories import TestUser

KINESIS_RECORDS: list[tuple[KinesisTarget, list[dict[str, Any]]]] = []


class RecordingSink:
    """Stands in for AWS (outside this machine): records what would be put on the stream."""

    async def put_records(self, target: KinesisTarget, records: list[dict[str, Any]]) -> None:
        KINESIS_RECORDS.append((target, records))


def build_sink(_rt: Any) -> RecordingSink:
    return RecordingSink()


@dataclass
class Env:
    live: LiveServer
    cb: CallbackServer
    http: httpx.Client


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    database_url = scratch_database_url() if TEST_DATABASE_URL else ""
    live, thread = start_live(
        tmp_path_factory.mktemp("subs"),
        database_url=database_url,
        allow_insecure_callbacks=True,
        notification_batch_seconds=3.0,
        notification_timeout=1.5,
        notification_max_failures=3,
        job_retry_base_seconds=0.2,
        job_poll_interval=0.2,
        job_concurrency=8,
        feed_poll_interval=0.2,
        kinesis_sink="tests.test_subscriptions:build_sink",
    )
    cb = CallbackServer().start()
    with live.client() as http:
        yield Env(live, cb, http)
    cb.stop()
    thread.stop()


@dataclass
class Owner:
    user: TestUser
    app: App
    dtid: str
    did: str


def owner(env: Env) -> Owner:
    user = make_user(env.live)
    env.cb.secrets[user.app.client_id] = user.app.client_secret
    dtid = make_device_type(env.live, user.id)
    did = make_device(env.live, user.headers, dtid)["id"]
    return Owner(user, user.app, dtid, did)


def create(env: Env, headers: dict[str, str], **body: Any) -> httpx.Response:
    return env.http.post("/v1.1/subscriptions", headers=headers, json=body)


def subscribe(env: Env, o: Owner, name: str, **body: Any) -> dict[str, Any]:
    """Create and validate an httpCallback subscription at endpoint ``name``."""
    body = {"messageType": "message", "uid": o.user.id, "callbackUrl": env.cb.url(name), **body}
    response = create(env, o.user.headers, **body)
    assert response.status_code == 200, response.text
    sub = response.json()["data"]
    assert sub["status"] == "PENDING_CALLBACK_VALIDATION"
    confirmation = env.cb.wait(name, signed=False)[0].json
    assert confirmation == {
        "aid": o.app.client_id,
        "subscriptionId": sub["id"],
        "nonce": confirmation["nonce"],
    }
    validated = env.http.post(
        f"/v1.1/subscriptions/{sub['id']}/validate",
        json={"aid": o.app.client_id, "nonce": confirmation["nonce"]},
    )
    assert validated.status_code == 200, validated.text
    assert validated.json()["data"]["status"] == "ACTIVE"
    return dict(validated.json()["data"])


def send(
    env: Env, o: Owner, did: str | None = None, headers: dict[str, str] | None = None, **data: Any
) -> str:
    response = env.http.post(
        "/v1.1/messages",
        headers=headers or o.user.headers,
        json={"sdid": did or o.did, "type": "message", "data": data or {"temp": 21.5}},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["mid"])


def act(env: Env, o: Owner) -> str:
    response = env.http.post(
        "/v1.1/actions",
        headers=o.user.headers,
        json={"ddid": o.did, "type": "action", "data": {"actions": [{"name": "setOn", "parameters": {}}]}},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["mid"])


def messages_of(env: Env, headers: dict[str, str], nid: str, **params: Any) -> dict[str, Any]:
    response = env.http.get(f"/v1.1/notifications/{nid}/messages", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# --- The whole flow, through the official SDK ----------------------------------------------------------


@pytest.fixture()
def sdk(env: Env) -> Iterator[Sdk]:
    """The official SDK bound to this module's server (its configuration is a process singleton)."""
    config = artikcloud.Configuration()
    saved = (config.host, config.access_token)
    try:
        yield Sdk(env.live)
    finally:
        config.host, config.access_token = saved


def test_sdk_create_confirm_validate_notify_and_fetch(env: Env, sdk: Sdk) -> None:
    o = owner(env)
    sdk.use(o.user.token)
    api = artikcloud.SubscriptionsApi(sdk.devices.api_client)
    info = artikcloud.SubscriptionInfo(
        message_type="message", uid=o.user.id, sdid=o.did, callback_url=env.cb.url("sdk"), description="lamp"
    )
    created = api.create_subscription(info).data
    assert created.id and created.aid == o.app.client_id and created.sdid == o.did
    confirmation = env.cb.wait("sdk", signed=False)[0]
    assert "authorization" not in confirmation.headers
    nonce = confirmation.json["nonce"]
    wrong = env.http.post(
        f"/v1.1/subscriptions/{created.id}/validate", json={"aid": o.app.client_id, "nonce": "0" * 32}
    )
    assert wrong.status_code == 403
    other_aid = env.http.post(
        f"/v1.1/subscriptions/{created.id}/validate", json={"aid": "x" * 32, "nonce": nonce}
    )
    assert other_aid.status_code == 403
    assert env.http.get(f"/v1.1/subscriptions/{created.id}", headers=o.user.headers).json()["data"][
        "status"
    ] == ("PENDING_CALLBACK_VALIDATION")
    api.validate_subscription(created.id, artikcloud.ValidationCallbackInfo(aid=o.app.client_id, nonce=nonce))
    fetched = api.get_subscription(created.id).data
    assert fetched.id == created.id
    assert (
        env.http.get(f"/v1.1/subscriptions/{created.id}", headers=o.user.headers).json()["data"]["status"]
        == "ACTIVE"
    )

    mid = send(env, o, temp=30.5)
    notification = env.cb.wait("sdk", signed=True)[0]
    assert notification.signature_valid, notification.headers.get("authorization")
    body = notification.json
    assert set(body) == {"id", "ts", "type", "subscriptionId", "subscriptionQuery", "startDate", "endDate"}
    assert body["type"] == "message" and body["subscriptionId"] == created.id
    assert body["subscriptionQuery"] == {"uid": o.user.id, "sdid": o.did}
    page = api.get_messages(body["id"])
    assert page.total == 1 and page.count == 1
    raw = messages_of(env, o.user.headers, body["id"])
    assert [m["mid"] for m in raw["data"]] == [mid]
    assert raw["data"][0]["data"] == {"temp": 30.5} and raw["data"][0]["sdid"] == o.did
    assert body["startDate"] == body["endDate"] == raw["data"][0]["ts"]

    # The SDK models the list as data.subscriptions; the contract's flat array still gives its paging.
    sdk.use(app_token(env.live, o.app))
    listed = api.get_all_subscriptions(uid=o.user.id)
    assert listed.total == 1 and listed.count == 1
    sdk.use(o.user.token)
    deleted = api.delete_subscription(created.id).data
    assert deleted.id == created.id
    assert env.http.get(f"/v1.1/subscriptions/{created.id}", headers=o.user.headers).status_code == 404


def test_tampered_notification_fails_verification(env: Env) -> None:
    """The verifier in the callback server does reject a bad signature (so the checks above mean it)."""
    o = owner(env)
    from thingcloud.areas.subscriptions.signing import signed_headers

    url = env.cb.url("tamper")
    headers = signed_headers(url, b'{"a":1}', o.app.client_id, o.app.client_secret)
    httpx.post(url, content=b'{"a":2}', headers=headers)
    wrong_secret = signed_headers(url, b'{"a":1}', o.app.client_id, "not-the-secret")
    httpx.post(url, content=b'{"a":1}', headers=wrong_secret)
    good = signed_headers(url, b'{"a":1}', o.app.client_id, o.app.client_secret)
    httpx.post(url, content=b'{"a":1}', headers=good)
    assert [r.signature_valid for r in env.cb.wait("tamper", 3)] == [False, False, True]


# --- Batching and the messages of a notification ----------------------------------------------------


def test_first_notification_at_once_then_batched_and_paged(env: Env) -> None:
    o = owner(env)
    sub = subscribe(env, o, "batch", sdid=o.did)
    first = send(env, o, temp=1.0)
    one = env.cb.wait("batch", 1, signed=True)[0].json
    assert [m["mid"] for m in messages_of(env, o.user.headers, one["id"])["data"]] == [first]
    later = [send(env, o, temp=float(i)) for i in range(2, 7)]
    assert all(b.signature_valid for b in env.cb.wait("batch", 2, signed=True))
    time.sleep(0.5)  # anything sent in the same window is in the same notification
    bodies = [r.json for r in env.cb.notifications("batch")[1:]]
    fetched = [m["mid"] for b in bodies for m in messages_of(env, o.user.headers, b["id"])["data"]]
    assert sorted(fetched) == sorted(later)
    assert len(bodies) == 1, "five messages within one window make one notification"
    nid = bodies[0]["id"]
    asc = messages_of(env, o.user.headers, nid, count=2)
    assert asc["total"] == 5 and asc["count"] == 2 and asc["offset"] == 0 and asc["order"] == "asc"
    rest = (
        messages_of(env, o.user.headers, nid, count=2, offset=2)["data"]
        + messages_of(env, o.user.headers, nid, count=2, offset=4)["data"]
    )
    assert [m["mid"] for m in asc["data"] + rest] == later
    desc = messages_of(env, o.user.headers, nid, order="desc")
    assert [m["mid"] for m in desc["data"]] == list(reversed(later))
    assert bodies[0]["startDate"] == asc["data"][0]["ts"] and bodies[0]["endDate"] == desc["data"][0]["ts"]
    assert (
        env.http.get(
            f"/v1.1/notifications/{nid}/messages", headers=o.user.headers, params={"order": "up"}
        ).status_code
        == 400
    )
    assert env.http.get("/v1.1/notifications/nope/messages", headers=o.user.headers).status_code == 404
    assert sub["id"] == bodies[0]["subscriptionId"]


# --- Matching: by device type, by user, shared devices, actions ---------------------------------------


def test_matching_by_type_user_shared_and_actions(env: Env) -> None:
    o = owner(env)
    other_type = make_device_type(env.live, o.user.id)
    second = make_device(env.live, o.user.headers, other_type, name="Kitchen lamp")["id"]
    by_type = subscribe(env, o, "by-type", sdtid=o.dtid)
    by_user = subscribe(env, o, "by-user")
    actions = subscribe(env, o, "actions", messageType="action", ddid=o.did)

    friend = make_user(env.live)
    env.cb.secrets[friend.app.client_id] = friend.app.client_secret
    share = env.http.post(
        f"/v1.1/devices/{second}/shares", headers=o.user.headers, json={"email": friend.email}
    )
    assert share.status_code == 200, share.text
    share_id = share.json()["data"]["id"]
    accepted = env.http.put(
        f"/v1.1/devices/{second}/shares/{share_id}", headers=friend.headers, json={"status": "ACCEPTED"}
    )
    assert accepted.status_code == 200, accepted.text
    f = Owner(friend, friend.app, "", "")
    shared = subscribe(env, f, "shared", includeSharedDevices=True)
    not_shared = subscribe(env, f, "not-shared")

    m1 = send(env, o)  # device 1 (type 1): by-type, by-user
    m2 = send(env, o, did=second)  # device 2 (type 2): by-user, shared
    a1 = act(env, o)
    env.cb.wait("by-type", signed=True)
    env.cb.wait("shared", signed=True)
    action = env.cb.wait("actions", signed=True)[0].json
    assert action["type"] == "action" and action["subscriptionQuery"] == {"uid": o.user.id, "ddid": o.did}
    actions_page = messages_of(env, o.user.headers, action["id"])
    assert [a["mid"] for a in actions_page["data"]] == [a1]
    assert actions_page["data"][0]["data"]["actions"][0]["name"] == "setOn"
    time.sleep(4)  # past the batch window: every notification due has gone out

    def mids(name: str, headers: dict[str, str]) -> list[str]:
        return sorted(
            m["mid"]
            for r in env.cb.notifications(name)
            for m in messages_of(env, headers, r.json["id"])["data"]
        )

    assert mids("by-type", o.user.headers) == [m1]
    assert mids("by-user", o.user.headers) == sorted([m1, m2])
    assert mids("shared", friend.headers) == [m2]
    assert env.cb.notifications("not-shared") == []
    assert all(
        r.signature_valid
        for n in ("by-type", "by-user", "shared", "actions")
        for r in env.cb.notifications(n)
    )
    assert env.cb.notifications("shared")[0].json["subscriptionQuery"] == {
        "uid": friend.id,
        "includeSharedDevices": True,
    }
    for sub in (by_type, by_user, actions, shared, not_shared):
        assert sub["status"] == "ACTIVE"


# --- Permissions ----------------------------------------------------------------------------------------


def test_permissions_and_application_list(env: Env) -> None:
    o = owner(env)
    stranger = owner(env)
    mine = subscribe(env, o, "perm", sdid=o.did)
    token = app_token(env.live, o.app)
    app_headers = {"Authorization": f"Bearer {token}"}
    listed = env.http.get("/v1.1/subscriptions", headers=app_headers)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [s["id"] for s in body["data"]] == [mine["id"]] and body["total"] == 1 and body["count"] == 1
    assert (
        env.http.get("/v1.1/subscriptions", headers=app_headers, params={"uid": stranger.user.id}).json()[
            "data"
        ]
        == []
    )
    assert env.http.get("/v1.1/subscriptions", headers=o.user.headers).status_code == 403  # user token
    # Another application (and its user) sees nothing of it.
    assert env.http.get(f"/v1.1/subscriptions/{mine['id']}", headers=stranger.user.headers).status_code == 403
    assert (
        env.http.delete(f"/v1.1/subscriptions/{mine['id']}", headers=stranger.user.headers).status_code == 403
    )
    other_token = app_token(env.live, stranger.app)
    other_list = env.http.get(
        "/v1.1/subscriptions", headers={"Authorization": f"Bearer {other_token}"}
    ).json()
    assert mine["id"] not in [s["id"] for s in other_list["data"]]
    # Only the user's own devices and users who authorized the application.
    assert (
        create(
            env,
            o.user.headers,
            messageType="message",
            uid=o.user.id,
            sdid=stranger.did,
            callbackUrl=env.cb.url("x"),
        ).status_code
        == 403
    )
    assert (
        create(
            env, o.user.headers, messageType="message", uid=stranger.user.id, callbackUrl=env.cb.url("x")
        ).status_code
        == 403
    )
    assert (
        create(
            env, app_headers, messageType="message", uid=stranger.user.id, callbackUrl=env.cb.url("x")
        ).status_code
        == 403
    )
    assert (
        create(
            env,
            o.user.headers,
            messageType="action",
            uid=o.user.id,
            ddid=stranger.did,
            callbackUrl=env.cb.url("x"),
        ).status_code
        == 403
    )
    assert (
        create(
            env,
            o.user.headers,
            messageType="message",
            uid=o.user.id,
            sdid="f" * 32,
            callbackUrl=env.cb.url("x"),
        ).status_code
        == 404
    )
    # An application token may subscribe for a user who authorized it (the password grant did).
    by_app = create(env, app_headers, messageType="message", uid=o.user.id, callbackUrl=env.cb.url("by-app"))
    assert by_app.status_code == 200, by_app.text
    # A notification's messages belong to the subscription's application.
    send(env, o)
    nid = env.cb.wait("perm", signed=True)[0].json["id"]
    assert (
        env.http.get(f"/v1.1/notifications/{nid}/messages", headers=stranger.user.headers).status_code == 403
    )
    assert env.http.get(f"/v1.1/notifications/{nid}/messages", headers=app_headers).status_code == 200


# --- Bad input -------------------------------------------------------------------------------------------


def test_bad_combinations_and_callback_urls(env: Env) -> None:
    o = owner(env)
    h, uid = o.user.headers, o.user.id

    def refused(expected: int = 400, **body: Any) -> dict[str, Any]:
        response = create(env, h, **body)
        assert response.status_code == expected, response.text
        return dict(response.json()["error"])

    url = env.cb.url("bad")
    refused(uid=uid, callbackUrl=url)  # no messageType
    refused(messageType="message", callbackUrl=url)  # no uid
    refused(messageType="action", uid=uid, callbackUrl=url)  # action without ddid
    refused(messageType="message", uid=uid, ddid=o.did, callbackUrl=url)
    refused(messageType="message", uid=uid, sdid=o.did, sdtid=o.dtid, callbackUrl=url)
    refused(messageType="action", uid=uid, ddid=o.did, sdid=o.did, callbackUrl=url)
    refused(messageType="message", uid=uid, description="x" * 257, callbackUrl=url)
    refused(messageType="message", uid=uid)  # no callbackUrl
    refused(messageType="message", uid=uid, callbackUrl=url, subscriptionType="email")
    refused(404, messageType="message", uid=uid, sdtid="dt-unknown", callbackUrl=url)
    # Not HTTPS (http:// is only tolerated on loopback), another domain, internal addresses.
    for bad in (
        "http://example.com/cb",
        "ftp://127.0.0.1/cb",
        "https://other.example.org/cb",
        "not a url",
        "http://user:pw@127.0.0.1:9/cb",
    ):
        error = refused(messageType="message", uid=uid, callbackUrl=bad)
        assert error["errors"][0][0]["field"] == "callbackUrl", error
    internal = make_app(env.live, uid, redirect_uri="https://10.1.2.3/callback")
    from .factories import password_token

    token = password_token(env.live, internal, o.user.email)["access_token"]
    ih = {"Authorization": f"Bearer {token}"}
    for target in ("https://10.1.2.3/cb", "https://[::ffff:10.1.2.3]/cb"):
        response = create(env, ih, messageType="message", uid=uid, callbackUrl=target)
        assert response.status_code == 400 and "private" in response.text, response.text
    link_local = make_app(env.live, uid, redirect_uri="https://169.254.169.254/latest")
    token = password_token(env.live, link_local, o.user.email)["access_token"]
    response = create(
        env,
        {"Authorization": f"Bearer {token}"},
        messageType="message",
        uid=uid,
        callbackUrl="https://169.254.169.254/latest/meta-data",
    )
    assert response.status_code == 400 and "link-local" in response.text
    # Unknown ids, wrong nonce shape, device tokens.
    assert env.http.get("/v1.1/subscriptions/" + "0" * 32, headers=h).status_code == 404
    assert (
        env.http.post("/v1.1/subscriptions/" + "0" * 32 + "/validate", json={"nonce": "x"}).status_code == 404
    )
    sub = create(env, h, messageType="message", uid=uid, callbackUrl=env.cb.url("nonce")).json()["data"]
    assert env.http.post(f"/v1.1/subscriptions/{sub['id']}/validate", json={}).status_code == 400
    assert (
        env.http.post(f"/v1.1/subscriptions/{sub['id']}/validate", json={"nonce": "guess"}).status_code == 403
    )


def test_insecure_callbacks_need_the_setting(live: LiveServer) -> None:
    """On a server without THINGCLOUD_ALLOW_INSECURE_CALLBACKS: no http://, no loopback at all; and
    awsKinesis without a configured client is a clear 400."""
    user = make_user(live)
    with live.client() as http:
        for url, why in (("http://127.0.0.1:9/cb", "HTTPS"), ("https://127.0.0.1:9/cb", "loopback")):
            response = http.post(
                "/v1.1/subscriptions",
                headers=user.headers,
                json={"messageType": "message", "uid": user.id, "callbackUrl": url},
            )
            assert response.status_code == 400 and why in response.text, response.text
        kinesis = http.post(
            "/v1.1/subscriptions",
            headers=user.headers,
            json={
                "messageType": "message",
                "uid": user.id,
                "subscriptionType": "awsKinesis",
                "awsKey": "k",
                "awsSecret": "s",
                "awsRegion": "eu-west-1",
                "awsKinesisStreamName": "stream",
            },
        )
        assert kinesis.status_code == 400 and "Kinesis" in kinesis.json()["error"]["message"]


def test_connect_time_check_defeats_dns_rebinding(env: Env, tmp_path: Path) -> None:
    """The name is resolved again at connect time and the address checked then: a name that was
    public when the subscription was created and now answers a private address is refused."""
    answers = iter([["93.184.215.14"], ["10.0.0.7"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    settings = make_settings(tmp_path, allow_insecure_callbacks=False)

    async def scenario() -> None:
        await callbacks.check_callback_url(
            settings, "https://hooks.example.com/x", ["https://example.com/cb"], resolver=rebinding
        )
        with pytest.raises(callbacks.CallbackRefused, match="private"):
            await callbacks.post(settings, "https://hooks.example.com/x", b"{}", {}, resolver=rebinding)

    asyncio.run(scenario())

    # And the connection goes to the checked address, under the original name (Host header).
    loopback_ok = make_settings(tmp_path, allow_insecure_callbacks=True)

    async def to_loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    answer = asyncio.run(
        callbacks.post(
            loopback_ok, f"http://hooks.example.test:{env.cb.port}/cb/pinned", b"{}", {}, resolver=to_loopback
        )
    )
    assert answer.status == 200
    assert env.cb.wait("pinned")[0].headers["host"] == f"hooks.example.test:{env.cb.port}"
    # A callback that is down (nothing listening) is a failed delivery, to be retried.
    from .conftest import free_port

    with pytest.raises(callbacks.CallbackFailed):
        asyncio.run(callbacks.post(loopback_ok, f"http://127.0.0.1:{free_port()}/down", b"{}", {}))


# --- Faults: retries, suspension, slow and odd callbacks ------------------------------------------------


def subscription(env: Env, o: Owner, sid: str) -> dict[str, Any]:
    return dict(env.http.get(f"/v1.1/subscriptions/{sid}", headers=o.user.headers).json()["data"])


def test_callback_down_is_retried_then_delivered(env: Env) -> None:
    o = owner(env)
    sub = subscribe(env, o, "flaky", sdid=o.did)
    env.cb.behaviour["flaky"] = [500, 503]
    send(env, o)
    got = env.cb.wait("flaky", 3, signed=True)
    assert len({r.json["id"] for r in got}) == 1  # the same notification, retried
    assert all(r.signature_valid for r in got)
    wait_for(lambda: subscription(env, o, sub["id"])["failures"] == 0)
    assert subscription(env, o, sub["id"])["status"] == "ACTIVE"


def test_suspended_after_consecutive_failures_and_revived(env: Env) -> None:
    o = owner(env)
    sub = subscribe(env, o, "down", sdid=o.did)
    env.cb.behaviour["down"] = "fail"
    send(env, o)
    state = wait_for(lambda: (s := subscription(env, o, sub["id"]))["status"] == "SUSPENDED" and s)
    assert state["failures"] == 3
    assert len(env.cb.notifications("down")) == 3  # notification_max_failures attempts, then no more
    send(env, o)
    time.sleep(1.5)
    assert len(env.cb.notifications("down")) == 3  # a suspended subscription is not notified
    # Revived with its nonce (ThingCloud extension): delivered again.
    env.cb.behaviour["down"] = "ok"
    nonce = env.cb.confirmations("down")[0].json["nonce"]
    revived = env.http.post(f"/v1.1/subscriptions/{sub['id']}/validate", json={"nonce": nonce})
    assert revived.json()["data"]["status"] == "ACTIVE" and revived.json()["data"]["failures"] == 0
    send(env, o)
    env.cb.wait("down", 4, signed=True)


def test_hanging_callback_times_out_without_delaying_others(env: Env) -> None:
    o = owner(env)
    slow = subscribe(env, o, "hang", sdid=o.did)
    fast = subscribe(env, o, "fast", sdid=o.did)
    env.cb.behaviour["hang"] = ["hang", "ok"]
    env.cb.hang_seconds = 10.0  # far beyond the 1.5 s notification timeout
    send(env, o)
    fast_got = env.cb.wait("fast", signed=True)[0]
    hang_start = wait_for(lambda: [e for e in env.cb.events if e[:2] == ("hang", "hang-start")])[0][2]
    hang_end = [e for e in env.cb.events if e[:2] == ("hang", "hang-end")]
    # The fast subscriber was served while the slow one was still hanging.
    assert not hang_end or fast_got.at < hang_end[0][2]
    assert fast_got.at < hang_start + env.cb.hang_seconds
    # The slow one timed out (1.5 s, not the 5 s it hangs), counted a failure and was retried.
    retried = env.cb.wait("hang", 2, signed=True)
    assert retried[1].at - retried[0].at < env.cb.hang_seconds
    assert retried[0].json["id"] == retried[1].json["id"]
    wait_for(lambda: subscription(env, o, slow["id"])["failures"] == 0)
    assert subscription(env, o, fast["id"])["failures"] == 0


def test_redirects_are_not_followed_and_huge_answers_are_cut(env: Env) -> None:
    o = owner(env)
    redirected = subscribe(env, o, "redirect", sdid=o.did)
    huge = subscribe(env, o, "huge", sdid=o.did)
    env.cb.behaviour["redirect"] = ["redirect", "ok"]
    env.cb.behaviour["huge"] = "huge"
    send(env, o)
    env.cb.wait("redirect", 2, signed=True)  # the 302 failed the attempt; the retry succeeded
    assert env.cb.of("redirect-redirected") == []
    env.cb.wait("huge", 1, signed=True)
    wait_for(lambda: subscription(env, o, redirected["id"])["failures"] == 0)
    assert subscription(env, o, huge["id"])["failures"] == 0
    assert len(env.cb.notifications("huge")) == 1  # a 200 with a 64 MB body is a success


def test_unvalidated_subscriptions_expire(env: Env) -> None:
    from sqlalchemy import select, update

    from thingcloud import tables as t
    from thingcloud.areas.subscriptions import delivery

    o = owner(env)
    old = create(
        env, o.user.headers, messageType="message", uid=o.user.id, callbackUrl=env.cb.url("old")
    ).json()["data"]
    young = create(
        env, o.user.headers, messageType="message", uid=o.user.id, callbackUrl=env.cb.url("young")
    ).json()["data"]
    active = subscribe(env, o, "kept")

    async def age_and_expire(rt: Any) -> dict[str, Any]:
        day_ago = rt.clock.now_ms() - 24 * 3600 * 1000 - 1
        async with rt.db.write() as conn:
            await conn.execute(
                update(t.subscriptions)
                .where(t.subscriptions.c.id.in_([old["id"], active["id"]]))
                .values(created_on=day_ago)
            )
        result = await delivery.expire(rt, Job("x", "subscriptions.expire", {}, 1, 1, 0, None))
        async with rt.db.read() as conn:
            left = set((await conn.execute(select(t.subscriptions.c.id))).scalars())
        return {"result": result, "left": left}

    outcome = env.live.call(age_and_expire)
    assert outcome["result"]["expired"] >= 1
    assert old["id"] not in outcome["left"]
    assert young["id"] in outcome["left"] and active["id"] in outcome["left"]


def test_kinesis_subscription_through_the_sink(env: Env) -> None:
    o = owner(env)
    response = create(
        env,
        o.user.headers,
        messageType="message",
        uid=o.user.id,
        sdid=o.did,
        subscriptionType="awsKinesis",
        awsKey="AKIA",
        awsSecret="secret",
        awsRegion="eu-west-1",
        awsKinesisStream="things",
    )
    assert response.status_code == 200, response.text
    sub = response.json()["data"]
    assert sub["status"] == "ACTIVE" and sub["awsKinesisStreamName"] == sub["awsKinesisStream"] == "things"
    assert sub["awsSecret"] is None and sub["callbackUrl"] is None
    mid = send(env, o, temp=7.0)
    records = wait_for(lambda: [r for target, rs in KINESIS_RECORDS for r in rs if r["mid"] == mid])
    assert records[0]["data"] == {"temp": 7.0} and records[0]["sdid"] == o.did
    target = next(target for target, rs in KINESIS_RECORDS if any(r["mid"] == mid for r in rs))
    assert target == KinesisTarget("things", "eu-west-1", "AKIA", "secret")


def test_index_follows_changes_made_elsewhere(env: Env) -> None:
    """A subscription activated by another node whose bus message was lost: the matcher notices the
    change from the table itself (its fingerprint) and notifies."""
    from sqlalchemy import update

    from thingcloud import tables as t

    o = owner(env)
    sub = create(
        env,
        o.user.headers,
        messageType="message",
        uid=o.user.id,
        sdid=o.did,
        callbackUrl=env.cb.url("elsewhere"),
    )
    sid = sub.json()["data"]["id"]
    send(env, o)  # while pending: nothing
    time.sleep(1)

    async def activate_silently(rt: Any) -> None:
        async with rt.db.write() as conn:
            await conn.execute(
                update(t.subscriptions)
                .where(t.subscriptions.c.id == sid)
                .values(status="ACTIVE", modified_on=rt.clock.now_ms())
            )

    env.live.call(activate_silently)
    mid = send(env, o)
    notification = env.cb.wait("elsewhere", signed=True)[0].json
    assert [m["mid"] for m in messages_of(env, o.user.headers, notification["id"])["data"]] == [mid]
