"""The official ``artikcloud==2.2.3`` SDK against a live server: users, properties and tokens.

The SDK's ``Configuration`` is a process-wide singleton read at call time, so the ``sdk`` fixture points
it at the server for one test and puts the defaults back afterwards; ``as_user`` switches the token.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import artikcloud
import pytest
from artikcloud.rest import ApiException

from ..conftest import LiveServer
from ..factories import app_token, make_app, make_user, password_token
from .conftest import Sdk

if TYPE_CHECKING:  # imported for the annotation only: pytest would try to collect a Test* class
    from ..factories import TestUser


def error_of(exc: ApiException) -> dict[str, object]:
    body = json.loads(exc.body)
    error: dict[str, object] = body["error"]
    return error


def named_user(live: LiveServer, suffix: str) -> TestUser:
    return make_user(live, name=f"sdk_{suffix}", full_name=f"SDK User {suffix}")


def test_get_self(live: LiveServer, sdk: Sdk) -> None:
    suffix = uuid.uuid4().hex[:10]
    user = named_user(live, suffix)
    sdk.use(user.token)
    envelope = sdk.users.get_self()
    assert isinstance(envelope, artikcloud.UserEnvelope)
    me = envelope.data
    assert isinstance(me, artikcloud.User)
    assert me.id == user.id
    assert me.email == user.email
    assert me.name == f"sdk_{suffix}"
    assert me.full_name == f"SDK User {suffix}"
    assert me.sa_identity is None
    assert isinstance(me.created_on, int) and me.created_on == me.modified_on
    assert me.created_on > 1_600_000_000_000


def test_get_self_errors(live: LiveServer, sdk: Sdk) -> None:
    sdk.use("0" * 32)
    with pytest.raises(ApiException) as bad:
        sdk.users.get_self()
    assert bad.value.status == 401
    assert error_of(bad.value)["message"] == "Please provide a valid authorization header"
    user = make_user(live)
    sdk.use(app_token(live, user.app))
    with pytest.raises(ApiException) as refused:
        sdk.users.get_self()
    assert refused.value.status == 403
    assert error_of(refused.value)["code"] == 403


def test_user_properties_lifecycle(live: LiveServer, sdk: Sdk) -> None:
    user = make_user(live)
    aid = user.app.client_id
    sdk.use(user.token)
    with pytest.raises(ApiException) as none_yet:
        sdk.users.get_user_properties(user.id)
    assert none_yet.value.status == 404

    created = sdk.users.create_user_properties(
        user.id, artikcloud.AppProperties(aid=aid, properties='{"theme":"dark"}')
    )
    assert isinstance(created, artikcloud.PropertiesEnvelope)
    assert isinstance(created.data, artikcloud.AppProperties)
    assert (created.data.uid, created.data.aid, created.data.properties) == (user.id, aid, '{"theme":"dark"}')
    with pytest.raises(ApiException) as twice:
        sdk.users.create_user_properties(user.id, artikcloud.AppProperties(aid=aid, properties="again"))
    assert twice.value.status == 409

    fetched = sdk.users.get_user_properties(user.id, aid=aid).data
    assert (fetched.uid, fetched.aid, fetched.properties) == (user.id, aid, '{"theme":"dark"}')

    updated = sdk.users.update_user_properties(
        user.id, artikcloud.AppProperties(uid=user.id, aid=aid, properties='{"theme":"light"}'), aid=aid
    ).data
    assert updated.properties == '{"theme":"light"}'
    assert sdk.users.get_user_properties(user.id).data.properties == '{"theme":"light"}'

    deleted = sdk.users.delete_user_properties(user.id, aid=aid).data
    assert (deleted.uid, deleted.aid, deleted.properties) == (user.id, aid, "")
    with pytest.raises(ApiException) as gone:
        sdk.users.get_user_properties(user.id)
    assert gone.value.status == 404
    with pytest.raises(ApiException) as nothing_to_update:
        sdk.users.update_user_properties(user.id, artikcloud.AppProperties(aid=aid, properties="x"))
    assert nothing_to_update.value.status == 404


def test_user_properties_permissions(live: LiveServer, sdk: Sdk) -> None:
    alice = make_user(live)
    bob = make_user(live)
    sdk.use(alice.token)
    sdk.users.create_user_properties(
        alice.id, artikcloud.AppProperties(aid=alice.app.client_id, properties="alice's")
    )
    sdk.use(bob.token)
    with pytest.raises(ApiException) as other_user:
        sdk.users.get_user_properties(alice.id)
    assert other_user.value.status == 403
    with pytest.raises(ApiException) as other_app:
        sdk.users.create_user_properties(
            bob.id, artikcloud.AppProperties(aid=alice.app.client_id, properties="not mine")
        )
    assert other_app.value.status == 403
    with pytest.raises(ApiException) as too_long:
        sdk.users.create_user_properties(
            bob.id, artikcloud.AppProperties(aid=bob.app.client_id, properties="x" * 10_001)
        )
    assert too_long.value.status == 400
    assert error_of(too_long.value)["code"] == 4001
    # The application's own token reaches the users who authorized it.
    sdk.use(app_token(live, alice.app))
    assert sdk.users.get_user_properties(alice.id).data.properties == "alice's"


def test_token_info(live: LiveServer, sdk: Sdk) -> None:
    user = make_user(live)
    sdk.use(user.token)
    response = sdk.tokens.token_info()
    assert isinstance(response, artikcloud.TokenInfoSuccessResponse)
    info = response.data
    assert isinstance(info, artikcloud.TokenInfo)
    assert (info.client_id, info.user_id, info.device_id) == (user.app.client_id, user.id, None)
    assert 3599 <= info.expires_in <= 3600

    sdk.use(app_token(live, user.app))
    info = sdk.tokens.token_info().data
    assert (info.client_id, info.user_id, info.device_id) == (user.app.client_id, None, None)

    sdk.use("f" * 32)
    with pytest.raises(ApiException) as bad:
        sdk.tokens.token_info()
    assert bad.value.status == 401


def test_check_token(live: LiveServer, sdk: Sdk) -> None:
    user = make_user(live)
    sdk.use(user.token)
    response = sdk.tokens.check_token(artikcloud.TokenRequest(token=user.token))
    assert isinstance(response, artikcloud.CheckTokenResponse)
    assert response.data.message == "Valid token"
    with pytest.raises(ApiException) as invalid:
        sdk.tokens.check_token(artikcloud.TokenRequest(token="0" * 32))
    assert invalid.value.status == 401
    assert error_of(invalid.value)["code"] == 401


def test_refresh_token(live: LiveServer, sdk: Sdk) -> None:
    """``TokensApi.refresh_token`` authenticates with the bearer token (the implicit-flow way)."""
    user = make_user(live)
    sdk.use(user.token)
    response = sdk.tokens.refresh_token("refresh_token", user.refresh_token)
    assert isinstance(response, artikcloud.RefreshTokenResponse)
    assert response.token_type == "bearer"
    assert response.expires_in == 3600
    assert response.access_token not in (user.token, user.refresh_token)
    assert response.refresh_token not in (user.token, user.refresh_token)
    with pytest.raises(ApiException) as old:
        sdk.users.get_self()
    assert old.value.status == 401
    sdk.use(response.access_token)
    assert sdk.users.get_self().data.id == user.id
    # The same refresh token a second time is refused (OAuth2 error body).
    with pytest.raises(ApiException) as reused:
        sdk.tokens.refresh_token("refresh_token", user.refresh_token)
    assert reused.value.status == 400
    assert json.loads(reused.value.body)["error"] == "invalid_grant"
    # Past its expiry the access token still identifies the application for a refresh.
    live.clock.advance(3601)
    with pytest.raises(ApiException) as expired:
        sdk.users.get_self()
    assert expired.value.status == 401
    late = sdk.tokens.refresh_token("refresh_token", response.refresh_token)
    sdk.use(late.access_token)
    assert sdk.users.get_self().data.id == user.id
    # A token of another application cannot redeem this user's refresh token.
    other = make_app(live, user.id)
    sdk.use(password_token(live, other, user.email)["access_token"])
    with pytest.raises(ApiException) as foreign:
        sdk.tokens.refresh_token("refresh_token", late.refresh_token)
    assert foreign.value.status == 400
    assert json.loads(foreign.value.body)["error"] == "invalid_grant"
