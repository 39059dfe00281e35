"""``thingcloud simulate``: set up the fleet, connect every device, send readings at a fixed rate, act
on the actions received, and stop cleanly (Ctrl-C, SIGTERM or ``--duration``) with a summary.

Everything runs on one asyncio loop. Each device has one task that sends on an absolute schedule —
message *k* is due at ``start + phase + k / rate`` — so the rate does not drift with the time each send
takes; the devices' phases are spread over one period so a thousand devices do not all send in the
same millisecond. A send does not wait for the previous one's acknowledgement, but a global
semaphore bounds the messages awaiting one (``max_in_flight``) and a device more than a second behind
its schedule (a slow server) skips the slots it missed instead of bursting, counted as ``skipped``.
Connections are opened a bounded number at a time. On stop, sending ends at once, acknowledgements
still in flight get a grace period (a second Ctrl-C cuts it short), then the connections close and
the summary is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import resource
import signal
import ssl
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from thingcloud.simulator.fleet import ApiClient, Fleet, SimDevice, SimulatorError, prepare_fleet
from thingcloud.simulator.management import DeviceManagement
from thingcloud.simulator.readings import DeviceModel
from thingcloud.simulator.transports import HttpLink, Link, Lost, MqttLink, Rejected, WebSocketLink

log = logging.getLogger("thingcloud.simulator")

T = TypeVar("T")

Protocol = Literal["http", "websocket", "mqtt"]
MAX_LAG = 1.0  # seconds behind schedule before a device skips slots rather than bursting
STOP_GRACE = 10.0  # seconds left for in-flight acknowledgements after the stop
CONNECT_CONCURRENCY = 50


@dataclass
class SimulationConfig:
    url: str
    token: str
    dtid: str
    devices: int = 1
    rate: float = 1.0
    protocol: Protocol = "websocket"
    duration: float = 0.0  # 0: until stopped
    mqtt_host: str = ""
    mqtt_port: int = 1883
    name_prefix: str = "sim"
    seed: int | None = None
    max_in_flight: int = 1000


@dataclass
class Summary:
    devices: int = 0
    created: int = 0
    reused: int = 0
    connected: int = 0
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    skipped: int = 0
    actions_received: int = 0
    actions_applied: int = 0
    tasks_received: int = 0
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    updates_installed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "errors"}
        doc["errors"] = dict(self.errors.most_common(10))
        return doc

    def text(self) -> str:
        rate = self.acknowledged / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"simulated {self.devices} devices ({self.created} created, {self.reused} reused, "
            f"{self.connected} connected) for {self.seconds:.1f} s",
            f"  sent          {self.sent}",
            f"  acknowledged  {self.acknowledged}  ({rate:.1f}/s)",
            f"  failed        {self.failed}",
            f"  skipped       {self.skipped}  (slots missed while behind schedule)",
            f"  actions       {self.actions_received} received, {self.actions_applied} applied",
            f"  tasks         {self.tasks_received} received, {self.tasks_succeeded} succeeded, "
            f"{self.tasks_failed} failed, {self.updates_installed} updates installed",
        ]
        lines += [f"  error x{count}: {message}" for message, count in self.errors.most_common(5)]
        return "\n".join(lines)


def raise_open_files_limit(needed: int) -> None:
    """Lift the soft limit on open files towards the hard one: each device holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            log.warning("open files limited to %d: %d devices may not all connect", new, needed)


class Simulation:
    """One run: fleet, links, per-device senders, actions, stop and summary."""

    def __init__(self, config: SimulationConfig) -> None:
        if config.rate <= 0 or not math.isfinite(config.rate):
            raise SimulatorError("--rate must be a positive number of messages per second")
        self.config = config
        self.summary = Summary()
        self.stop = asyncio.Event()
        self.models: dict[str, DeviceModel] = {}
        self.gate = asyncio.Semaphore(max(1, config.max_in_flight))
        self.inflight: set[asyncio.Task[None]] = set()
        self.management = DeviceManagement()  # the device side of device management
        self.links: dict[str, Any] = {}  # did → its link (WebSocket and MQTT links take tasks)

    # ---------------------------------------------------------------- actions

    def on_actions(self, device: SimDevice, actions: list[Any]) -> None:
        model = self.models.get(device.did)
        for action in actions:
            self.summary.actions_received += 1
            if not isinstance(action, dict) or model is None:
                log.warning("%s: unusable action %r", device.name, action)
                continue
            applied = model.apply(action)
            parameters = json.dumps(action.get("parameters") or {})
            if applied.changes:
                self.summary.actions_applied += 1
                changes = ", ".join(f"{path} = {json.dumps(v)}" for path, v in applied.changes.items())
                log.info("%s: action %s %s -> %s", device.name, applied.name, parameters, changes)
            else:
                log.info("%s: action %s %s (%s)", device.name, applied.name, parameters, applied.note)

    def on_task(self, device: SimDevice, message: Any) -> None:
        link = self.links.get(device.did)
        if link is not None:
            self.management.on_task(device, message, link.send_management)

    def on_error(self, device: SimDevice, about_publish: bool, message: str) -> None:
        log.warning("%s: %s", device.name, message)
        if not about_publish:  # taken over, revoked: the connection ends and the link reconnects
            return
        # MQTT reports a refused message on the errors topic, with a PUBACK all the same (MQTT 3.1.1
        # has no negative acknowledgement): the message counted as acknowledged was not stored, so
        # it moves to failed.
        self.summary.acknowledged -= 1
        self.summary.failed += 1
        self.summary.errors[message] += 1

    # ---------------------------------------------------------------- links

    def _links(self, fleet: Fleet) -> list[Link]:
        config = self.config
        links: list[Link] = []
        tls = ssl.create_default_context()
        for device in fleet.devices:
            if config.protocol == "http":
                links.append(HttpLink(device, config.url, tls))
            elif config.protocol == "websocket":
                links.append(WebSocketLink(device, config.url, self.on_actions, self.on_task))
            else:
                links.append(
                    MqttLink(
                        device,
                        config.mqtt_host,
                        config.mqtt_port,
                        self.on_actions,
                        self.on_error,
                        self.on_task,
                    )
                )
        self.links = {link.device.did: link for link in links if config.protocol != "http"}
        return links

    async def _open(self, links: list[Link]) -> list[Link]:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def open_one(link: Link) -> Link | None:
            async with gate:
                if self.stop.is_set():
                    return None
                try:
                    await link.open()
                    return link
                except Exception as exc:
                    message = str(exc) if isinstance(exc, Rejected) else f"connect: {exc!r}"
                    self.summary.errors[message] += 1
                    log.warning("%s: %s", link.device.name, message)
                    return None

        opened = await asyncio.gather(*(open_one(link) for link in links))
        return [link for link in opened if link is not None]

    # ---------------------------------------------------------------- sending

    async def _deliver(self, link: Link, data: dict[str, Any]) -> None:
        try:
            await link.send(data)
            self.summary.acknowledged += 1
        except (Rejected, Lost) as exc:
            self._failed(link.device, str(exc))
        except asyncio.CancelledError:  # still unanswered at the end of the stop grace period
            self._failed(link.device, "no acknowledgement before the stop")
            raise
        finally:
            self.gate.release()

    def _failed(self, device: SimDevice, message: str) -> None:
        self.summary.failed += 1
        # Each distinct error once in the log, every one with --verbose.
        level = logging.WARNING if self.summary.errors[message] == 0 else logging.DEBUG
        log.log(level, "%s: message not stored: %s", device.name, message)
        self.summary.errors[message] += 1

    async def _device(self, link: Link, index: int, start: float) -> None:
        model = self.models[link.device.did]
        period = 1.0 / self.config.rate
        phase = period * (index / max(1, len(self.models)))
        loop = asyncio.get_running_loop()
        slot = 0
        # Runs until cancelled by the stop; no await between taking a slot of the gate and starting
        # the delivery that releases it, so a cancellation never leaks one.
        while True:
            due = start + phase + slot * period
            lag = loop.time() - due
            if lag > max(MAX_LAG, period):  # at least one whole slot missed
                missed = int(lag / period)
                self.summary.skipped += missed
                slot += missed
                continue
            if lag < 0:
                await asyncio.sleep(-lag)
            await self.gate.acquire()
            self.summary.sent += 1
            task = asyncio.create_task(self._deliver(link, model.reading()))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            slot += 1

    # ---------------------------------------------------------------- the run

    async def _unless_stopped(self, work: Coroutine[Any, Any, T]) -> T | None:
        """``work``'s result, or None when a stop comes first (Ctrl-C during the set-up)."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def run(self) -> Summary:
        config = self.config
        began = time.monotonic()
        api = ApiClient(config.url, config.token)
        every: list[Link] = []  # closed at the end, whether they opened or not
        try:
            fleet = await self._unless_stopped(
                prepare_fleet(api, config.dtid, config.devices, config.name_prefix)
            )
            if fleet is None:
                return self.summary
            self.summary.devices, self.summary.created, self.summary.reused = (
                len(fleet.devices),
                fleet.created,
                fleet.reused,
            )
            for i, device in enumerate(fleet.devices):
                seed = None if config.seed is None else f"{config.seed}:{i}"
                self.models[device.did] = DeviceModel.from_properties(fleet.properties, seed)
            raise_open_files_limit(len(fleet.devices))
            if config.protocol == "http":
                log.info("http devices send only: actions reach devices over websocket or mqtt")
            every = self._links(fleet)
            links = await self._unless_stopped(self._open(every)) or []
            self.summary.connected = len(links)
            if self.stop.is_set():
                return self.summary
            if not links:
                raise SimulatorError("no device could connect")
            log.info(
                "sending %s msg/s per device from %d devices over %s",
                config.rate,
                len(links),
                config.protocol,
            )
            for link in links:  # devices that take tasks report their device properties
                if link.device.did in self.links:
                    self.management.on_connected(link.device, self.links[link.device.did].send_management)
            began = time.monotonic()
            start = asyncio.get_running_loop().time()
            senders = [asyncio.create_task(self._device(link, i, start)) for i, link in enumerate(links)]
            if config.duration > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), config.duration)
            else:
                await self.stop.wait()
            self.stop.set()
            for sender in senders:
                sender.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            if self.inflight:
                await asyncio.wait(set(self.inflight), timeout=STOP_GRACE)
                for task in list(self.inflight):
                    task.cancel()
            self.summary.seconds = time.monotonic() - began
            if config.protocol == "mqtt":
                # ThingCloud sends a refusal on the errors topic just before the PUBACK: it has
                # arrived, but waits in aiomqtt's queue for the link's reader to hand it over.
                await asyncio.sleep(0.5)
        finally:
            self.summary.seconds = self.summary.seconds or time.monotonic() - began
            counts = self.management.counts
            self.summary.tasks_received, self.summary.tasks_succeeded = counts.received, counts.succeeded
            self.summary.tasks_failed, self.summary.updates_installed = (
                counts.failed,
                counts.updates_installed,
            )
            await self.management.close()
            await asyncio.gather(*(link.close() for link in every), return_exceptions=True)
            await api.close()
        return self.summary


async def simulate(config: SimulationConfig) -> Summary:
    """Run until ``config.duration`` ends or SIGINT/SIGTERM; returns the summary."""
    simulation = Simulation(config)
    loop = asyncio.get_running_loop()
    run = asyncio.ensure_future(simulation.run())

    def on_signal() -> None:
        if not simulation.stop.is_set():
            log.info("stopping: waiting for the last acknowledgements (Ctrl-C again to quit at once)")
            simulation.stop.set()
        else:
            run.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await run
    except asyncio.CancelledError:
        if not simulation.stop.is_set():
            raise
        return simulation.summary  # a second Ctrl-C: what was counted so far
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
