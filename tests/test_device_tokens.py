"""Device tokens (S15–S17) over HTTP: issue, show again, regenerate, revoke — and the old token
stops working at once, cached or not."""

from __future__ import annotations

import httpx

from thingcloud.ids import token_digest

from .conftest import LiveServer
from .factories import make_device, make_device_type, make_user, record_bus


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_lifecycle(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    device = make_device(live, owner.headers, make_device_type(live, owner.id))
    url = f"/v1.1/devices/{device['id']}/tokens"

    missing = client.get(url, headers=owner.headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == 404

    # The SDK sends PUT with Content-Type text/plain and no body.
    created = client.put(url, headers={**owner.headers, "Content-Type": "text/plain"})
    assert created.status_code == 200, created.text
    token = created.json()["data"]
    assert set(token) == {"accessToken", "uid", "did", "cid"}
    assert len(token["accessToken"]) == 32
    assert (token["uid"], token["did"], token["cid"]) == (owner.id, device["id"], owner.app.client_id)
    assert client.get(url, headers=owner.headers).json() == {"data": token}

    as_device = bearer(token["accessToken"])
    assert client.get(f"/v1.1/devices/{device['id']}", headers=as_device).json()["data"] == device
    info = client.get("/v1.1/accounts/tokenInfo", headers=as_device).json()["data"]
    assert (info["device_id"], info["client_id"]) == (device["id"], owner.app.client_id)

    revoked = client.delete(url, headers=owner.headers)
    assert revoked.status_code == 200
    assert revoked.json() == {"data": token}
    assert client.get(f"/v1.1/devices/{device['id']}", headers=as_device).status_code == 401
    assert client.get(url, headers=owner.headers).status_code == 404
    again = client.delete(url, headers=owner.headers)
    assert again.status_code == 404


def test_regenerating_invalidates_the_cached_old_token(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    device = make_device(live, owner.headers, make_device_type(live, owner.id))
    url = f"/v1.1/devices/{device['id']}/tokens"
    old = client.put(url, headers=owner.headers).json()["data"]["accessToken"]
    # Use it twice so that it sits in the token cache.
    for _ in range(2):
        assert client.get(f"/v1.1/devices/{device['id']}/status", headers=bearer(old)).status_code == 200
    revocations = record_bus(live, "token.revoked")
    events = record_bus(live, "device.token.revoked")

    renewed = client.put(url, headers=owner.headers, content=b"")
    assert renewed.status_code == 200
    new = renewed.json()["data"]["accessToken"]
    assert new != old
    assert client.get(f"/v1.1/devices/{device['id']}", headers=bearer(old)).status_code == 401
    assert client.get(f"/v1.1/devices/{device['id']}", headers=bearer(new)).status_code == 200
    assert client.get(url, headers=owner.headers).json()["data"]["accessToken"] == new
    # Other nodes drop the old token from their caches through this event; live channels cut on the other.
    assert revocations == [("token.revoked", {"hashes": [token_digest(old)]})]
    assert events == [("device.token.revoked", {"did": device["id"]})]


def test_device_token_reaches_only_its_own_device(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    dtid = make_device_type(live, owner.id)
    device = make_device(live, owner.headers, dtid)
    sibling = make_device(live, owner.headers, dtid, name="Sibling lamp")
    token = client.put(f"/v1.1/devices/{device['id']}/tokens", headers=owner.headers).json()["data"]
    headers = bearer(token["accessToken"])
    assert client.get(f"/v1.1/devices/{sibling['id']}", headers=headers).status_code == 403
    # GET only: a device token cannot change or delete its device, nor see or renew its token.
    assert (
        client.put(f"/v1.1/devices/{device['id']}", headers=headers, json={"name": "Hijacked"}).status_code
        == 403
    )
    assert client.delete(f"/v1.1/devices/{device['id']}", headers=headers).status_code == 403
    for method in ("GET", "PUT", "DELETE"):
        assert (
            client.request(method, f"/v1.1/devices/{device['id']}/tokens", headers=headers).status_code == 403
        )
    assert client.get(f"/v1.1/devices/{device['id']}/tokens", headers=owner.headers).json()["data"] == token
    assert (
        client.get(f"/v1.1/devices/{device['id']}", headers=owner.headers).json()["data"]["name"]
        == device["name"]
    )
    assert client.get(f"/v1.1/users/{owner.id}/devices", headers=headers).status_code == 403


def test_tokens_of_unknown_device(live: LiveServer, client: httpx.Client) -> None:
    owner = make_user(live)
    for method in ("GET", "PUT", "DELETE"):
        response = client.request(method, f"/v1.1/devices/{'a' * 32}/tokens", headers=owner.headers)
        assert response.status_code == 404, method
