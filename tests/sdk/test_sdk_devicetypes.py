"""The official ``artikcloud==2.2.3`` SDK against a live server: DeviceTypesApi and
``UsersApi.get_user_device_types``, asserting on the model objects the SDK builds from our answers."""

from __future__ import annotations

import json
import uuid
from typing import Any

import artikcloud
import httpx
import pytest
from artikcloud.rest import ApiException

from ..conftest import LiveServer
from ..factories import make_user
from .conftest import Sdk

MANIFEST: dict[str, Any] = {
    "fields": [
        {"name": "state", "valueClass": "Boolean"},
        {"name": "location", "children": [{"name": "lat", "valueClass": "Double", "unit": "deg"}]},
    ],
    "actions": [{"name": "setOn", "description": "Turn on"}],
}


def post(live: LiveServer, token: str, path: str, body: Any) -> dict[str, Any]:
    response = httpx.post(f"{live.url}/v1.1{path}", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_device_type_models(live: LiveServer, sdk: Sdk) -> None:
    owner, stranger = make_user(live), make_user(live)
    tag = uuid.uuid4().hex[:10]
    unique_name = f"com.example.sdk{tag}"
    dt = post(
        live,
        owner.token,
        "/devicetypes",
        {"name": f"SDK lamp {tag}", "uniqueName": unique_name, "description": "Via SDK", "tags": ["sdk"]},
    )
    post(live, owner.token, f"/devicetypes/{dt['id']}/manifests", MANIFEST)
    post(
        live,
        owner.token,
        f"/devicetypes/{dt['id']}/manifests",
        {"fields": [{"name": "n", "valueClass": "Long"}]},
    )

    sdk.use(owner.token)
    got = sdk.device_types.get_device_type(dt["id"]).data
    assert isinstance(got, artikcloud.DeviceType)
    assert (got.id, got.unique_name, got.name, got.description) == (
        dt["id"],
        unique_name,
        f"SDK lamp {tag}",
        "Via SDK",
    )
    assert (got.uid, got.oid, got.latest_version, got.vid) == (owner.id, None, 2, "0")
    assert (got.published, got.approved, got.protected, got.in_store, got.rsp) == (
        False,
        True,
        False,
        False,
        False,
    )
    assert (got.owned_by_current_user, got.has_cloud_connector, got.issuer_dn) == (True, False, None)
    assert got.last_updated >= dt["lastUpdated"]
    assert [(t.name, t.is_category) for t in got.tags] == [("sdk", False)]
    assert all(isinstance(t, artikcloud.Tag) for t in got.tags)

    listed = sdk.device_types.get_device_types(tag, count=10, offset=0)
    assert isinstance(listed, artikcloud.DeviceTypesEnvelope)
    assert (listed.total, listed.count, listed.offset) == (1, 1, 0)
    assert [d.id for d in listed.data.device_types] == [dt["id"]]
    assert sdk.device_types.get_device_types(tag, tags="other").total == 0

    latest = sdk.device_types.get_latest_manifest_properties(dt["id"]).data
    assert isinstance(latest, artikcloud.ManifestProperties)
    assert latest.properties.fields == {
        "n": {"type": "Long", "unit": "", "isCollection": False, "description": ""}
    }
    assert latest.properties.actions == {}
    first = sdk.device_types.get_manifest_properties(dt["id"], "1").data.properties
    assert isinstance(first, artikcloud.FieldsActions)
    assert first.fields["location"] == {
        "lat": {"type": "Double", "unit": "deg", "isCollection": False, "description": ""}
    }
    assert first.actions == {"setOn": {"description": "Turn on", "parameters": {}}}

    versions = sdk.device_types.get_available_manifest_versions(dt["id"])
    assert isinstance(versions, artikcloud.ManifestVersionsEnvelope)
    assert versions.data.versions == ["1", "2"]  # the SDK types them as strings; the wire has ints

    mine = sdk.users.get_user_device_types(owner.id, count=5, offset=0, include_shared=False)
    assert isinstance(mine, artikcloud.DeviceTypesEnvelope)
    assert (mine.total, [d.id for d in mine.data.device_types]) == (1, [dt["id"]])
    assert mine.data.device_types[0].owned_by_current_user is True

    # Strangers: 403 with the ARTIK message; unknown types: 404 1101.
    sdk.use(stranger.token)
    with pytest.raises(ApiException) as denied:
        sdk.device_types.get_device_type(dt["id"])
    assert denied.value.status == 403
    assert json.loads(denied.value.body)["error"]["message"] == (
        f"You do not have the right permission: 'device_type' ['{dt['id']}']"
    )
    with pytest.raises(ApiException) as unknown:
        sdk.device_types.get_latest_manifest_properties("dtunknown")
    assert unknown.value.status == 404
    assert json.loads(unknown.value.body)["error"]["code"] == 1101
    assert sdk.device_types.get_device_types(tag).total == 0
    with pytest.raises(ApiException) as not_yours:
        sdk.users.get_user_device_types(owner.id)
    assert not_yours.value.status == 403
