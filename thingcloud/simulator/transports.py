"""How a simulated device talks to ThingCloud: one ``Link`` per device over HTTP, the WebSocket
device channel or MQTT.

``Link.send(data)`` returns the message id (or ``""`` where the protocol has none) once the server
acknowledged the message — an HTTP 200, a WebSocket ack frame (``/v1.1/websocket?ack=true``), an MQTT
PUBACK at QoS 1 — and raises ``Rejected`` when the server answered with an error, ``Lost`` when no
answer came (connection gone, timeout). Links that can receive actions (WebSocket, MQTT) hand each
received ``actions`` array to ``on_actions``, and reconnect with a capped back-off when the server
drops them, as a real device would. The wire formats are REFERENCE.md §5.2 (WebSocket) and §5.3
(MQTT: username = device id, password = device token, data on ``/v1.1/messages/<did>``, actions on
``/v1.1/actions/<did>``, errors on ``/v1.1/errors/<did>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

from thingcloud.simulator.fleet import SimDevice

log = logging.getLogger("thingcloud.simulator")

ActionsHandler = Callable[[SimDevice, list[Any]], None]
ErrorHandler = Callable[[SimDevice, bool, str], None]  # (device, about a publish?, message)
TaskHandler = Callable[[SimDevice, Any], None]  # a device-management task message (management.py)
# Errors-topic codes about the connection rather than a publish: 401 (revoked), 409 (taken over).
CONNECTION_ERRORS = (401, 409)
ACK_TIMEOUT = 30.0
BACKOFF = (0.5, 1, 2, 5, 10, 30)


class Reconnects:
    """The back-off of one link's reconnections. It grows while connecting fails and while
    connections are cut short — another connection taking the device over again and again (one
    connection per device): two simulators of the same devices then back off instead of fighting
    every half second. A connection that lasted ``STABLE`` seconds starts the back-off afresh."""

    STABLE = 60.0

    def __init__(self) -> None:
        self.failures = 0
        self.since = 0.0

    def connected(self) -> None:
        self.since = time.monotonic()

    def delay(self) -> float:
        if self.since and time.monotonic() - self.since > self.STABLE:
            self.failures = 0
        self.since = 0.0
        delay = BACKOFF[min(self.failures, len(BACKOFF) - 1)]
        self.failures += 1
        return delay


class Rejected(Exception):
    """The server refused the message (its error message is the text)."""


class Lost(Exception):
    """No answer: not connected, the connection dropped, or the ack did not come in time."""


class Link(Protocol):
    device: SimDevice

    async def open(self) -> None: ...

    async def send(self, data: dict[str, Any]) -> str: ...

    async def close(self) -> None: ...


def _error_message(body: Any) -> str:
    try:
        error = body["error"]
        return f"{error['code']} {error['message']}"
    except (KeyError, TypeError):
        return str(body)[:200]


# ---------------------------------------------------------------- HTTP


class HttpLink:
    """``POST /v1.1/messages`` with the device token; acknowledged by the 200 and its ``mid``.

    Each device has its own keep-alive client, as a real device would: one client shared by
    thousands of concurrent requests spends its time in the connection pool's bookkeeping (measured
    here, httpx 0.28: a shared 100-connection pool ~25 requests/s, 100 one-connection clients ~440/s
    against the same server). ``tls`` is one SSL context for all of them (building one per client
    costs milliseconds each)."""

    def __init__(self, device: SimDevice, base_url: str, tls: ssl.SSLContext) -> None:
        self.device = device
        self.base_url, self.tls = base_url.rstrip("/"), tls
        self.headers = {"Authorization": f"Bearer {device.token}"}
        self.http: httpx.AsyncClient | None = None

    async def open(self) -> None:
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=ACK_TIMEOUT,
            verify=self.tls,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=1),
        )

    async def send(self, data: dict[str, Any]) -> str:
        if self.http is None:
            raise Lost("not connected")
        try:
            response = await self.http.post(
                "/v1.1/messages", json={"sdid": self.device.did, "data": data}, headers=self.headers
            )
        except httpx.HTTPError as exc:
            raise Lost(type(exc).__name__) from None
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code != 200:
            raise Rejected(_error_message(body))
        return str(body["data"]["mid"])

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()


# ---------------------------------------------------------------- WebSocket


def websocket_url(base: str) -> str:
    """``http(s)://host[:port][/prefix]`` → ``ws(s)://…/v1.1/websocket?ack=true``."""
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/v1.1/websocket", "ack=true", ""))


class WebSocketLink:
    """One device channel socket per device: ``register``, messages with a ``cid`` answered by an
    ack (or an error frame with the same ``cid``), action frames pushed by the server."""

    def __init__(
        self, device: SimDevice, base_url: str, on_actions: ActionsHandler, on_task: TaskHandler | None = None
    ) -> None:
        self.device = device
        self.url = websocket_url(base_url)
        self.on_actions = on_actions
        self.on_task = on_task
        self.pending: dict[str, asyncio.Future[str]] = {}
        self.cids = itertools.count(1)
        self.ws: Any = None
        self.closing = False
        self.keeper: asyncio.Task[None] | None = None
        self.reconnects = Reconnects()

    async def open(self) -> None:
        await self._connect()
        self.reconnects.connected()
        self.keeper = asyncio.create_task(self._keep(), name=f"ws {self.device.name}")

    async def _connect(self) -> None:
        from websockets.asyncio.client import connect

        # No compression and no proxy: thousands of sockets to a local server, each a small device.
        ws = await connect(self.url, open_timeout=ACK_TIMEOUT, compression=None, proxy=None, max_queue=64)
        register = {
            "type": "register",
            "sdid": self.device.did,
            "Authorization": f"bearer {self.device.token}",
            "cid": "register",
        }
        try:
            await ws.send(json.dumps(register))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), ACK_TIMEOUT))
                if isinstance(frame, dict) and "error" in frame:
                    raise Rejected(f"register: {_error_message(frame)}")
                if isinstance(frame, dict) and frame.get("type") != "ping":
                    break
        except BaseException:
            await ws.close()
            raise
        self.ws = ws

    async def _keep(self) -> None:
        """Read frames until the socket closes; then reconnect (unless closing), with back-off."""
        while not self.closing:
            if self.ws is None:
                try:
                    await self._connect()
                    self.reconnects.connected()
                    log.info("%s reconnected", self.device.name)
                except Exception as exc:  # refused, unreachable, timed out: try again later
                    delay = self.reconnects.delay()
                    log.warning("%s cannot reconnect (%s): retrying in %s s", self.device.name, exc, delay)
                    await asyncio.sleep(delay)
                    continue
            reason = await self._read(self.ws)
            self.ws = None
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(Lost(reason))
            self.pending.clear()
            if not self.closing:
                delay = self.reconnects.delay()
                log.warning("%s disconnected (%s): reconnecting in %s s", self.device.name, reason, delay)
                await asyncio.sleep(delay)

    async def _read(self, ws: Any) -> str:
        from websockets.exceptions import ConnectionClosed

        try:
            async for text in ws:
                if self._frame(json.loads(text)):
                    await ws.close()
                    return "taken over by another connection"
        except ConnectionClosed as closed:
            received = closed.rcvd
            return f"closed {received.code} {received.reason}" if received else "connection lost"
        except ValueError:
            await ws.close()
            return "non-JSON frame"
        return "closed"

    def _frame(self, frame: Any) -> bool:
        """Handle one frame; True when the device lost its registration on this socket (another
        connection registered it: 409), so the link must start over."""
        if not isinstance(frame, dict):
            return False
        if frame.get("type") == "action":
            actions = (frame.get("data") or {}).get("actions")
            self.on_actions(self.device, actions if isinstance(actions, list) else [])
            return False
        if frame.get("type") == "devicemgmt.task":
            if self.on_task is not None:
                self.on_task(self.device, frame.get("data"))
            return False
        body = frame.get("data") if "data" in frame else frame.get("error")
        if not isinstance(body, dict):
            return False
        cid = body.get("cid")
        future = self.pending.pop(str(cid), None) if cid is not None else None
        if future is None or future.done():
            if "error" in frame:
                log.warning("%s: server error %s", self.device.name, _error_message(frame))
                return body.get("code") == 409
            return False
        if "error" in frame:
            future.set_exception(Rejected(_error_message(frame)))
        else:
            future.set_result(str(body.get("mid", "")))
        return False

    async def send(self, data: dict[str, Any]) -> str:
        return await self._send_frame("message", data)

    async def send_management(self, kind: str, data: dict[str, Any]) -> None:
        """A task result (``result``) or a properties report (``properties``), acknowledged."""
        await self._send_frame(f"devicemgmt.{kind}", data)

    async def _send_frame(self, kind: str, data: dict[str, Any]) -> str:
        ws = self.ws
        if ws is None:
            raise Lost("not connected")
        cid = str(next(self.cids))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending[cid] = future
        frame = {"sdid": self.device.did, "cid": cid, "type": kind, "data": data}
        try:
            await ws.send(json.dumps(frame))
            return await asyncio.wait_for(future, ACK_TIMEOUT)
        except TimeoutError:
            raise Lost("no ack in time") from None
        except Exception as exc:
            if isinstance(exc, Rejected | Lost):
                raise
            raise Lost(type(exc).__name__) from None
        finally:
            self.pending.pop(cid, None)

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.keeper is not None:
            self.keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.keeper


# ---------------------------------------------------------------- MQTT


class MqttLink:
    """One MQTT 3.1.1 connection per device (aiomqtt): publish at QoS 1 (acknowledged by the PUBACK),
    subscribed to its actions and errors topics."""

    def __init__(
        self,
        device: SimDevice,
        host: str,
        port: int,
        on_actions: ActionsHandler,
        on_error: ErrorHandler,
        on_task: TaskHandler | None = None,
    ) -> None:
        self.device = device
        self.host, self.port = host, port
        self.on_actions, self.on_error, self.on_task = on_actions, on_error, on_task
        self.topics = {
            "messages": f"/v1.1/messages/{device.did}",
            "actions": f"/v1.1/actions/{device.did}",
            "errors": f"/v1.1/errors/{device.did}",
            "tasks": f"/v1.1/devicemgmt/{device.did}/tasks",
            "result": f"/v1.1/devicemgmt/{device.did}/results",
            "properties": f"/v1.1/devicemgmt/{device.did}/properties",
        }
        self.client: Any = None
        self.dropped: asyncio.Future[None] | None = None  # done when the current connection ends
        self.closing = False
        self.keeper: asyncio.Task[None] | None = None
        self.reconnects = Reconnects()

    def _new_client(self) -> Any:
        import aiomqtt

        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.device.did,
            password=self.device.token,
            identifier=self.device.did,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            keepalive=60,
            timeout=ACK_TIMEOUT,
        )

    async def _connect(self) -> None:
        import aiomqtt

        client = self._new_client()
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise Rejected(f"connect: {exc}") from None  # refused, bad credentials (CONNACK), …
        try:
            topics = [(self.topics["actions"], 1), (self.topics["errors"], 1)]
            if self.on_task is not None:  # subscribing makes the device reachable for its tasks
                topics.append((self.topics["tasks"], 1))
            await client.subscribe(topics)
        except BaseException:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise
        self.client = client
        self.dropped = asyncio.get_running_loop().create_future()

    async def open(self) -> None:
        await self._connect()
        self.reconnects.connected()
        self.keeper = asyncio.create_task(self._keep(), name=f"mqtt {self.device.name}")

    async def _keep(self) -> None:
        import aiomqtt

        while not self.closing:
            if self.client is None:
                try:
                    await self._connect()
                    self.reconnects.connected()
                    log.info("%s reconnected", self.device.name)
                except Exception as exc:  # refused, unreachable, bad credentials: try again later
                    delay = self.reconnects.delay()
                    log.warning("%s cannot reconnect (%s): retrying in %s s", self.device.name, exc, delay)
                    await asyncio.sleep(delay)
                    continue
            client = self.client
            try:
                async for message in client.messages:
                    self._message(str(message.topic), message.payload)
                reason = "closed"
            except aiomqtt.MqttError as exc:
                reason = str(exc)
            self._drop()
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            if not self.closing:
                delay = self.reconnects.delay()
                log.warning("%s disconnected (%s): reconnecting in %s s", self.device.name, reason, delay)
                await asyncio.sleep(delay)

    def _message(self, topic: str, payload: Any) -> None:
        try:
            body = json.loads(payload)
        except (TypeError, ValueError):
            log.warning("%s: non-JSON payload on %s", self.device.name, topic)
            return
        if topic == self.topics["actions"]:
            self.on_actions(self.device, body if isinstance(body, list) else [])
        elif topic == self.topics["errors"]:
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            self.on_error(self.device, code not in CONNECTION_ERRORS, _error_message(body))
        elif topic == self.topics["tasks"] and self.on_task is not None:
            self.on_task(self.device, body)

    def _drop(self) -> None:
        """The connection is gone: publishes still waiting for their PUBACK fail now (aiomqtt would
        let them wait for their timeout); the server may have stored them all the same."""
        self.client = None
        if self.dropped is not None and not self.dropped.done():
            self.dropped.set_result(None)

    async def send(self, data: dict[str, Any]) -> str:
        client, dropped = self.client, self.dropped
        if client is None or dropped is None:
            raise Lost("not connected")
        publish = asyncio.ensure_future(
            client.publish(self.topics["messages"], json.dumps(data), qos=1, timeout=ACK_TIMEOUT)
        )
        try:
            await asyncio.wait({publish, dropped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not publish.done():
                publish.cancel()
        if publish.cancelled() or not publish.done():
            raise Lost("connection lost before the PUBACK")
        if (error := publish.exception()) is not None:
            raise Lost(str(error) or type(error).__name__)
        return ""

    async def send_management(self, kind: str, data: dict[str, Any]) -> None:
        """A task result (``result``) or a properties report (``properties``), at QoS 1."""
        client = self.client
        if client is None:
            raise Lost("not connected")
        await client.publish(self.topics[kind], json.dumps(data), qos=1, timeout=ACK_TIMEOUT)

    async def close(self) -> None:
        self.closing = True
        if self.keeper is not None:
            self.keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.keeper
        if self.client is not None:
            client = self.client
            self._drop()
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
