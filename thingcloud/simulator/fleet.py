"""The simulated fleet's set-up through the REST API, with a user token: the device type's manifest,
then N devices of that type named ``<prefix>-001``… (reused when the user already has them, created
otherwise) and each device's token (the existing one, or a new one when it has none).

Everything goes through the public API, as a user's own script would: ``GET /users/self``,
``GET /devicetypes/{dtid}/manifests/latest/properties``, ``GET /users/{uid}/devices?dtid=``,
``POST /devices``, ``GET``/``PUT /devices/{did}/tokens``. Calls run a bounded number at a time and
wait out a 429 (until ``X-Rate-Limit-Reset``), so setting up thousands of devices stays within the
user's REST rate limit instead of failing half-way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

log = logging.getLogger("thingcloud.simulator")

T = TypeVar("T")
NAME_LENGTH = (5, 36)  # device names (REFERENCE.md S12)
PAGE = 100
RETRIES_ON_429 = 20


class SimulatorError(Exception):
    """Set-up cannot go on: a readable one-line reason (bad token, unknown device type, …)."""


@dataclass
class SimDevice:
    did: str
    name: str
    token: str = ""


@dataclass
class Fleet:
    uid: str
    dtid: str
    manifest_version: int
    properties: dict[str, Any]
    devices: list[SimDevice] = field(default_factory=list)
    created: int = 0
    reused: int = 0


def device_names(prefix: str, count: int) -> list[str]:
    """``prefix-001`` … (at least three digits, so names sort in creation order)."""
    if count < 1:
        raise SimulatorError("--devices must be at least 1")
    width = max(3, len(str(count)))
    names = [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]
    low, high = NAME_LENGTH
    if not low <= len(names[0]) <= high or len(names[-1]) > high:
        raise SimulatorError(
            f"device names such as {names[-1]!r} must be {low}-{high} characters: "
            "choose another --name-prefix"
        )
    return names


def _reset_wait(response: httpx.Response) -> float:
    """Seconds until the minute window of a 429 resets (header ``X-Rate-Limit-Reset: minute/day``)."""
    reset = response.headers.get("x-rate-limit-reset", "").split("/")[0]
    try:
        return min(60.0, max(0.2, float(reset) - time.time()))
    except ValueError:
        return 1.0


def _error_text(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason_phrase
    return f"HTTP {response.status_code}: {message}"


class ApiClient:
    """The REST calls of the set-up, with the user token, a concurrency bound and 429 back-off."""

    def __init__(self, url: str, token: str, concurrency: int = 16, timeout: float = 30) -> None:
        self.http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency),
        )
        self.gate = asyncio.Semaphore(concurrency)

    async def close(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, *, allow: tuple[int, ...] = (), **kw: Any) -> httpx.Response:
        """One API call; a 429 is waited out and retried, another error raises ``SimulatorError``
        (unless its status is in ``allow``)."""
        for _ in range(RETRIES_ON_429):
            async with self.gate:
                try:
                    response = await self.http.request(method, path, **kw)
                except httpx.HTTPError as exc:
                    raise SimulatorError(f"cannot reach {self.http.base_url}: {exc}") from None
            if response.status_code == 429:
                wait = _reset_wait(response)
                log.info("rate limited on %s %s: waiting %.1f s", method, path, wait)
                await asyncio.sleep(wait)
                continue
            if response.status_code >= 400 and response.status_code not in allow:
                raise SimulatorError(f"{method} {path}: {_error_text(response)}")
            return response
        raise SimulatorError(f"{method} {path}: still rate limited after {RETRIES_ON_429} tries")

    async def data(self, method: str, path: str, **kw: Any) -> Any:
        return (await self.call(method, path, **kw)).json()["data"]


async def _gather(items: list[T], work: Callable[[T], Coroutine[Any, Any, None]]) -> None:
    """``work`` on every item (the client's gate bounds how many run at once); the first error wins."""
    async with asyncio.TaskGroup() as group:
        for item in items:
            group.create_task(work(item))


def device_number(prefix: str, name: str) -> int | None:
    """``7`` for ``prefix-007`` (or ``prefix-7``): a fleet of 20 reuses the first 20 of a fleet of 1,000
    whose names have one more digit."""
    head, _, digits = name.rpartition("-")
    if head != prefix or not digits.isdigit() or not digits.isascii():
        return None
    return int(digits)


async def _existing(api: ApiClient, uid: str, dtid: str) -> dict[str, str]:
    """{name: did} of the user's own devices of the type (the first one of each name)."""
    found: dict[str, str] = {}
    offset = 0
    while True:
        response = await api.call(
            "GET",
            f"/v1.1/users/{uid}/devices",
            params={"dtid": dtid, "owner": "ME", "count": PAGE, "offset": offset},
        )
        body = response.json()
        devices = body["data"]["devices"]
        for device in devices:
            found.setdefault(device["name"], device["id"])
        offset += len(devices)
        if not devices or offset >= int(body.get("total", 0)):
            return found


async def _token(api: ApiClient, device: SimDevice, new: bool) -> None:
    """The device's token: a new device has none, so it is created at once (S16); a reused one keeps
    its token (S15) unless it has none (404)."""
    response = None
    if not new:
        response = await api.call("GET", f"/v1.1/devices/{device.did}/tokens", allow=(404,))
    if response is None or response.status_code == 404:
        response = await api.call("PUT", f"/v1.1/devices/{device.did}/tokens")
    device.token = response.json()["data"]["accessToken"]


async def prepare_fleet(api: ApiClient, dtid: str, count: int, prefix: str) -> Fleet:
    """The manifest of ``dtid`` and ``count`` devices of it, each with its token."""
    names = device_names(prefix, count)
    me = await api.data("GET", "/v1.1/users/self")
    response = await api.call("GET", f"/v1.1/devicetypes/{dtid}/manifests/latest/properties", allow=(404,))
    if response.status_code == 404:
        await api.data("GET", f"/v1.1/devicetypes/{dtid}")  # unknown type: that error, else no manifest
        raise SimulatorError(f"device type {dtid} has no manifest yet: add one before simulating it")
    manifest = response.json()["data"]
    fleet = Fleet(me["id"], dtid, int(manifest.get("version", 1)), manifest.get("properties") or {})
    existing: dict[int, SimDevice] = {}
    for name, did in (await _existing(api, fleet.uid, dtid)).items():
        number = device_number(prefix, name)
        if number is not None and 1 <= number <= count:
            existing.setdefault(number, SimDevice(did, name))
    fleet.devices = [existing.get(i, SimDevice("", name)) for i, name in enumerate(names, 1)]
    missing = [device for device in fleet.devices if not device.did]

    async def create(device: SimDevice) -> None:
        body = await api.data("POST", "/v1.1/devices", json={"dtid": dtid, "name": device.name})
        device.did = body["id"]

    await _gather(missing, create)
    fleet.created, fleet.reused = len(missing), count - len(missing)
    created = {id(device) for device in missing}
    await _gather(fleet.devices, lambda device: _token(api, device, id(device) in created))
    log.info(
        "fleet ready: %d devices of %s (%d created, %d reused)", count, dtid, fleet.created, fleet.reused
    )
    return fleet
