"""The official ``artikcloud`` 2.2.3 SDK pointed at the live test server.

In this SDK ``Configuration`` is a process-wide singleton, so the fixture restores it after each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import artikcloud
import pytest

from ..conftest import LiveServer


class Sdk:
    """The SDK's APIs, sharing one ``ApiClient`` bound to the live server."""

    def __init__(self, live: LiveServer) -> None:
        self.config = artikcloud.Configuration()
        self.config.host = live.url + "/v1.1"
        client = artikcloud.ApiClient()
        self.users = artikcloud.UsersApi(client)
        self.tokens = artikcloud.TokensApi(client)
        self.devices = artikcloud.DevicesApi(client)
        self.shares = artikcloud.DevicesSharesApi(client)
        self.status = artikcloud.DevicesStatusApi(client)
        self.device_types = artikcloud.DeviceTypesApi(client)
        self.messages = artikcloud.MessagesApi(client)

    def use(self, token: str) -> None:
        self.config.access_token = token


@pytest.fixture()
def sdk(live: LiveServer) -> Iterator[Sdk]:
    config = artikcloud.Configuration()
    saved = (config.host, config.access_token)
    try:
        yield Sdk(live)
    finally:
        config.host, config.access_token = saved
