"""The device side of device management (docs/device-management.md) for simulated devices: each
device keeps LwM2M-like device properties (``device.manufacturer``, ``model``, ``firmwareVersion``,
``timezone``, ``bootCount``), reports them when it connects, and carries out the tasks it receives —
reads answer the value, writes change it, ``device.reboot`` restarts it (its boot count grows, a fresh
report follows), ``firmware.update`` downloads the image, checks its SHA-256, installs it (the
firmware version becomes the update's) and reports the new version.

The transports (transports.py) hand each task message to ``DeviceManagement.on_task`` and send what it
answers with ``Link.send_management(kind, data)``, kind ``result`` or ``properties``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from thingcloud.simulator.fleet import SimDevice

log = logging.getLogger("thingcloud.simulator")

Send = Callable[[str, dict[str, Any]], Awaitable[Any]]
REBOOT_SECONDS = 0.05
DOWNLOAD_TIMEOUT = 60.0


def initial_properties() -> dict[str, Any]:
    return {
        "device": {
            "manufacturer": "ThingCloud Simulator",
            "model": "sim-1",
            "firmwareVersion": "1.0.0",
            "timezone": "UTC",
            "bootCount": 1,
        }
    }


def _lookup(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return copy.deepcopy(node)


def _assign(tree: dict[str, Any], path: str, value: Any) -> None:
    *groups, leaf = path.split(".")
    node = tree
    for part in groups:
        node = node.setdefault(part, {})
    node[leaf] = value


@dataclass
class ManagementCounts:
    received: int = 0
    succeeded: int = 0
    failed: int = 0
    updates_installed: int = 0


@dataclass
class DeviceManagement:
    """The management state of every simulated device of one run."""

    properties: dict[str, dict[str, Any]] = field(default_factory=dict)  # did → device properties
    answered: dict[str, set[str]] = field(default_factory=dict)  # did → task ids answered
    counts: ManagementCounts = field(default_factory=ManagementCounts)
    _http: httpx.AsyncClient | None = None
    _running: set[asyncio.Task[None]] = field(default_factory=set)

    def state(self, device: SimDevice) -> dict[str, Any]:
        return self.properties.setdefault(device.did, initial_properties())

    async def report(self, device: SimDevice, send: Send) -> None:
        """Send the device's properties (on connecting, after a reboot or an update)."""
        with contextlib.suppress(Exception):
            await send("properties", self.state(device))

    def on_connected(self, device: SimDevice, send: Send) -> None:
        """The device is connected: it reports its properties (in the background)."""
        task = asyncio.ensure_future(self.report(device, send))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def on_task(self, device: SimDevice, message: Any, send: Send) -> None:
        """A task message arrived (from the transport's reader): carry it out in the background."""
        if not isinstance(message, dict) or not isinstance(message.get("tid"), str):
            log.warning("%s: unusable task %r", device.name, message)
            return
        task = asyncio.ensure_future(self._run(device, message, send))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, device: SimDevice, message: dict[str, Any], send: Send) -> None:
        tid = message["tid"]
        done = self.answered.setdefault(device.did, set())
        if message.get("cancel"):
            if tid not in done:  # still working on it: stop, and say so
                done.add(tid)
                with contextlib.suppress(Exception):
                    await send("result", {"tid": tid, "status": "CANCELLED"})
            return
        self.counts.received += 1
        try:
            result, report = await self.execute(device, message)
        except Exception as exc:  # a download that broke: the task failed
            result = {"status": "FAILED", "errorCode": "DEVICE_ERROR", "errorMessage": str(exc)[:200]}
            report = False
        if tid in done and message.get("attempt", 1) <= 1:
            return  # cancelled while it ran
        done.add(tid)
        if result["status"] == "SUCCEEDED":
            self.counts.succeeded += 1
        else:
            self.counts.failed += 1
        log.info(
            "%s: task %s %s -> %s",
            device.name,
            message.get("taskType"),
            message.get("property"),
            result["status"],
        )
        try:
            await send("result", {"tid": tid, **result})
            if report:
                await send("properties", self.state(device))
        except Exception as exc:  # the connection is gone: the server sends the task again later
            log.warning("%s: result of task %s not sent: %s", device.name, tid, exc)

    async def execute(self, device: SimDevice, message: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """(the result without ``tid``, whether a properties report should follow)."""
        state = self.state(device)
        kind, path = message.get("taskType"), str(message.get("property") or "")
        if kind == "R":
            try:
                return {"status": "SUCCEEDED", "value": _lookup(state, path)}, False
            except KeyError:
                return {"status": "FAILED", "errorCode": "UNKNOWN_PROPERTY", "errorMessage": path}, False
        if kind == "W":
            _assign(state, path, message.get("value"))
            return {"status": "SUCCEEDED"}, False
        if kind == "E" and path == "device.reboot":
            await asyncio.sleep(REBOOT_SECONDS)
            state["device"]["bootCount"] = int(state["device"].get("bootCount", 0)) + 1
            return {"status": "SUCCEEDED"}, True
        if kind == "E" and path == "firmware.update":
            return await self._update(state, message.get("update") or {})
        return {"status": "FAILED", "errorCode": "UNSUPPORTED", "errorMessage": f"{kind} {path}"}, False

    async def _update(self, state: dict[str, Any], update: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        url, expected = update.get("url"), update.get("sha256")
        if not isinstance(url, str) or not isinstance(expected, str):
            return {"status": "FAILED", "errorCode": "BAD_UPDATE", "errorMessage": "no url or sha256"}, False
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT)
        response = await self._http.get(url)
        if response.status_code != 200:
            return {
                "status": "FAILED",
                "errorCode": "DOWNLOAD_FAILED",
                "errorMessage": f"HTTP {response.status_code}",
            }, False
        if hashlib.sha256(response.content).hexdigest() != expected:
            return {
                "status": "FAILED",
                "errorCode": "CHECKSUM_MISMATCH",
                "errorMessage": "sha256 differs",
            }, False
        state["device"]["firmwareVersion"] = str(update.get("version") or expected[:8])
        self.counts.updates_installed += 1
        return {"status": "SUCCEEDED"}, True

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
