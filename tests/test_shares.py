"""Device shares (S24–S27, §5.1 and the accept/reject extension) over HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import LiveServer
from .factories import (
    PASSWORD,
    create_account,
    make_device,
    make_device_type,
    make_org,
    make_user,
    password_token,
    record_bus,
    unique_email,
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def share(client: httpx.Client, owner: Any, did: str, **body: Any) -> httpx.Response:
    return client.post(f"/v1.1/devices/{did}/shares", headers=owner.headers, json=body)


def shares_of(client: httpx.Client, owner: Any, did: str) -> dict[str, Any]:
    response = client.get(f"/v1.1/devices/{did}/shares", headers=owner.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_share_accept_and_revoke(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    friend = make_user(live)
    device = make_device(live, owner.headers, make_device_type(live, owner.id))
    did = device["id"]
    before = live.clock.now_ms()
    created = share(client, owner, did, email=friend.email.upper())
    assert created.status_code == 200, created.text
    share_id = created.json()["shareId"]
    assert created.json() == {"data": {"id": share_id}, "shareId": share_id}

    listed = shares_of(client, owner, did)
    assert (listed["total"], listed["count"], listed["offset"]) == (1, 1, 0)
    item = listed["data"]["shares"][0]
    assert before <= item["sharedOn"] <= live.clock.now_ms()
    expected = {"id": share_id, "email": friend.email, "status": "PENDING", "sharedOn": item["sharedOn"]}
    assert item == {**expected, "did": did, "dtid": None, "uid": None}
    one = client.get(f"/v1.1/devices/{did}/shares/{share_id}", headers=owner.headers).json()
    assert one == {"data": {**expected, "did": did, "dtid": None, "uid": None}, **expected}
    # The recipient sees the invitation, but not the device until accepting.
    assert client.get(f"/v1.1/devices/{did}/shares/{share_id}", headers=friend.headers).status_code == 200
    assert client.get(f"/v1.1/devices/{did}", headers=friend.headers).status_code == 403

    events = record_bus(live, "device.share.>")
    accepted = client.put(
        f"/v1.1/devices/{did}/shares/{share_id}", headers=friend.headers, json={"status": "ACCEPTED"}
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "ACCEPTED"
    assert client.get(f"/v1.1/devices/{did}", headers=friend.headers).json()["data"] == device
    status = client.put(
        f"/v1.1/devices/{did}/status", headers=friend.headers, json={"availability": "online"}
    )
    assert status.status_code == 200  # READ and WRITE
    # ... but not the owner's rights.
    assert share(client, friend, did, email=unique_email()).status_code == 403
    assert client.get(f"/v1.1/devices/{did}/shares", headers=friend.headers).status_code == 403
    assert client.delete(f"/v1.1/devices/{did}", headers=friend.headers).status_code == 403
    assert (
        client.put(f"/v1.1/devices/{did}", headers=friend.headers, json={"name": "Taken over"}).status_code
        == 403
    )
    assert client.put(f"/v1.1/devices/{did}/tokens", headers=friend.headers).status_code == 403
    assert client.delete(f"/v1.1/devices/{did}/shares/{share_id}", headers=friend.headers).status_code == 403

    revoked = client.delete(f"/v1.1/devices/{did}/shares/{share_id}", headers=owner.headers)
    assert revoked.json() == {"data": {"id": share_id}, "shareId": share_id}
    assert client.get(f"/v1.1/devices/{did}", headers=friend.headers).status_code == 403
    assert events == [
        ("device.share.accepted", {"did": did, "uid": friend.id}),
        ("device.share.revoked", {"did": did, "uid": friend.id}),
    ]
    assert shares_of(client, owner, did)["total"] == 0
    assert client.delete(f"/v1.1/devices/{did}/shares/{share_id}", headers=owner.headers).status_code == 404
    assert client.get(f"/v1.1/devices/{did}/shares/{share_id}", headers=owner.headers).status_code == 404


def test_rejecting_an_accepted_share_gives_access_up(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    friend = make_user(live)
    did = make_device(live, owner.headers, make_device_type(live, owner.id))["id"]
    share_id = share(client, owner, did, uid=friend.email).json()["shareId"]  # the SDK's field name
    url = f"/v1.1/devices/{did}/shares/{share_id}"
    client.put(url, headers=friend.headers, json={"status": "ACCEPTED"})
    assert client.get(f"/v1.1/devices/{did}", headers=friend.headers).status_code == 200
    events = record_bus(live, "device.share.revoked")
    rejected = client.put(url, headers=friend.headers, json={"status": "rejected"})
    assert rejected.json()["data"]["status"] == "REJECTED"
    assert client.get(f"/v1.1/devices/{did}", headers=friend.headers).status_code == 403
    assert events == [("device.share.revoked", {"did": did, "uid": friend.id})]
    # Only the recipient answers, and only with ACCEPTED or REJECTED.
    assert client.put(url, headers=owner.headers, json={"status": "ACCEPTED"}).status_code == 403
    for body in ({"status": "PENDING"}, {"status": "MAYBE"}, {}, {"status": None}):
        bad = client.put(url, headers=friend.headers, json=body)
        assert bad.status_code == 400, body
        assert bad.json()["error"]["code"] == 4001
    assert client.get(url, headers=owner.headers).json()["status"] == "REJECTED"


def test_bad_shares_write_nothing(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    friend = make_user(live)
    did = make_device(live, owner.headers, make_device_type(live, owner.id))["id"]
    cases = [
        ({}, 400),
        ({"email": None, "uid": None}, 400),
        ({"email": "not-an-email"}, 400),
        ({"email": "a@b"}, 400),
        ({"email": 42}, 400),
        ({"email": owner.email}, 400),  # yourself
        ({"email": owner.email.upper()}, 400),
    ]
    for body, code in cases:
        response = share(client, owner, did, **body)
        assert response.status_code == code, body
        assert response.json()["error"]["code"] == 4001
    malformed = client.post(
        f"/v1.1/devices/{did}/shares",
        headers={**owner.headers, "Content-Type": "application/json"},
        content=b"{",
    )
    assert malformed.status_code == 400
    assert shares_of(client, owner, did)["total"] == 0
    assert share(client, owner, did, email=friend.email).status_code == 200
    duplicate = share(client, owner, did, email=f"  {friend.email.upper()} ")
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == 409
    assert shares_of(client, owner, did)["total"] == 1
    assert share(client, owner, "0" * 32, email=friend.email).status_code == 404


def test_unpublished_types_are_shared_only_among_their_owners(live: LiveServer, client: httpx.Client) -> None:
    admin = make_user(live)
    developer = make_user(live)
    outsider = make_user(live)
    oid = make_org(live, {admin.id: "administrator", developer.id: "developer"})
    private = make_device_type(live, None, oid=oid, published=False)
    did = make_device(live, admin.headers, private)["id"]
    refused = share(client, admin, did, email=outsider.email)
    assert refused.status_code == 400
    assert refused.json()["error"]["errors"][0][0]["field"] == "email"
    assert share(client, admin, did, email=unique_email()).status_code == 400  # nobody yet: outside too
    assert shares_of(client, admin, did)["total"] == 0
    assert share(client, admin, did, email=developer.email).status_code == 200


def test_shares_of_a_user(live: LiveServer, client: httpx.Client) -> None:
    friend = make_user(live)
    alice = make_user(live)
    bob = make_user(live)
    lamp = make_device_type(live, alice.id)
    a1 = make_device(live, alice.headers, lamp, name="Alice lamp 1")
    a2 = make_device(live, alice.headers, lamp, name="Alice lamp 2")
    b1 = make_device(live, bob.headers, lamp, name="Bob's lamp")
    ids = {}
    for owner, device in ((alice, a1), (alice, a2), (bob, b1)):
        live.clock.advance(1)
        ids[device["id"]] = share(client, owner, device["id"], email=friend.email).json()["shareId"]
    client.put(
        f"/v1.1/devices/{a2['id']}/shares/{ids[a2['id']]}",
        headers=friend.headers,
        json={"status": "ACCEPTED"},
    )
    client.put(
        f"/v1.1/devices/{b1['id']}/shares/{ids[b1['id']]}",
        headers=friend.headers,
        json={"status": "REJECTED"},
    )
    url = f"/v1.1/users/{friend.id}/shares"

    everything = client.get(url, headers=friend.headers, params={"filter": "ALL"}).json()
    assert (everything["total"], everything["count"], everything["offset"]) == (3, 3, 0)
    first = everything["data"]["shares"][0]
    assert first == {
        "id": ids[a1["id"]],
        "email": alice.email,  # who shared it
        "status": "PENDING",
        "sharedOn": first["sharedOn"],
        "did": a1["id"],
        "dtid": lamp,
        "uid": alice.id,
    }
    assert [s["id"] for s in everything["data"]["shares"]] == [ids[a1["id"]], ids[a2["id"]], ids[b1["id"]]]
    for name, expected in (("WAITING", a1), ("ACCEPTED", a2), ("REJECTED", b1)):
        body = client.get(url, headers=friend.headers, params={"filter": name}).json()
        assert [s["did"] for s in body["data"]["shares"]] == [expected["id"]], name
    paged = client.get(url, headers=friend.headers, params={"filter": "ALL", "count": 1, "offset": 1}).json()
    assert (paged["total"], paged["count"], [s["id"] for s in paged["data"]["shares"]]) == (
        3,
        1,
        [ids[a2["id"]]],
    )
    assert client.get(url, headers=friend.headers, params={"filter": "SOME"}).status_code == 400
    assert client.get(url, headers=alice.headers, params={"filter": "ALL"}).status_code == 403
    assert client.get(f"/v1.1/users/{alice.id}/shares", headers=alice.headers).json()["total"] == 0


def test_a_share_waits_for_the_recipient_to_sign_up(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    did = make_device(live, owner.headers, make_device_type(live, owner.id))["id"]
    email = unique_email("later")
    share_id = share(client, owner, did, email=email).json()["shareId"]
    account = create_account(live, email=email)
    token = password_token(live, owner.app, email, PASSWORD)["access_token"]
    waiting = client.get(
        f"/v1.1/users/{account.id}/shares", headers=bearer(token), params={"filter": "WAITING"}
    )
    assert [s["id"] for s in waiting.json()["data"]["shares"]] == [share_id]
    accepted = client.put(
        f"/v1.1/devices/{did}/shares/{share_id}", headers=bearer(token), json={"status": "ACCEPTED"}
    )
    assert accepted.status_code == 200
    devices = client.get(f"/v1.1/users/{account.id}/devices", headers=bearer(token)).json()
    assert [d["id"] for d in devices["data"]["devices"]] == [did]
