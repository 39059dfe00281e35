"""The official SDK's ``RulesApi`` (create, get, update, delete) and ``UsersApi.get_user_rules``
against the live server."""

from __future__ import annotations

import artikcloud
import pytest
from artikcloud.rest import ApiException

from ..conftest import LiveServer
from ..test_rules import new_home, simple
from .conftest import Sdk


def test_rules_api_round_trip(live: LiveServer, sdk: Sdk) -> None:
    home = new_home(live, devices=2)
    sdk.use(home.user.token)
    rules = artikcloud.RulesApi(artikcloud.ApiClient())
    src, dst = home.devices
    info = artikcloud.RuleCreationInfo(name="SDK rule", rule=simple(src, dst, ">=", 180), enabled=True)
    created = rules.create_rule(info, home.user.id).data
    assert created.name == "SDK rule" and created.uid == home.user.id
    assert created.language_version == 1 and created.enabled is True
    assert created.rule["if"]["and"][0]["operand"] == {"value": 180}
    assert created.description.startswith("IF Sensor 0 temp is more than or equal to 180")

    got = rules.get_rule(created.id).data
    assert got.id == created.id and got.index == created.index

    update = artikcloud.RuleUpdateInfo(name="Renamed", enabled=False, rule=simple(src, dst, "<", 5))
    updated = rules.update_rule(created.id, update).data
    assert updated.name == "Renamed" and updated.enabled is False
    assert updated.rule["if"]["and"][0]["operator"] == "<"

    listed = artikcloud.UsersApi(artikcloud.ApiClient()).get_user_rules(home.user.id)
    assert [r.id for r in listed.data] == [created.id] and listed.total == 1

    with pytest.raises(ApiException) as bad:
        rules.create_rule(artikcloud.RuleCreationInfo(name="Bad", rule={"if": {}, "then": []}), home.user.id)
    assert bad.value.status == 400

    deleted = rules.delete_rule(created.id).data
    assert deleted.id == created.id
    with pytest.raises(ApiException) as gone:
        rules.get_rule(created.id)
    assert gone.value.status == 404
