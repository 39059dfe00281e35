"""One open WebSocket session: who opened it, its bounded send queue, how it ends, and the loop that
runs it on its socket (``serve``).

Each socket runs a receiver, a sender (draining the bounded queue) and a pinger until its session
finishes; then the error frame (if any) and the close are sent, with a time limit, since a slow
consumer may never read them. A full queue ends the session (slow consumer), so server memory never
grows with a client that stopped reading.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from thingcloud import feed
from thingcloud.auth.permissions import Principal
from thingcloud.channels import protocol
from thingcloud.errors import ApiError
from thingcloud.feed import FeedEntry
from thingcloud.ids import new_id
from thingcloud.rest.errors import as_api_error
from thingcloud.runtime import Runtime

if TYPE_CHECKING:
    from thingcloud.channels.connections import ChannelHub

CLOSE_WAIT = 10.0  # seconds for the error and close frames; a client that does not read loses them
TAIL_BATCH = 1000  # feed entries read at once


class Session:
    """One open socket: who opened it, its bounded send queue, and how it ends."""

    kind = "session"

    def __init__(self, rt: Runtime, principal: Principal | None, digest: str | None) -> None:
        self.rt = rt
        self.id = new_id()
        self.principal = principal
        self.digest = digest
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=rt.settings.channel_send_queue)
        self.finished = asyncio.Event()
        self.error: ApiError | None = None
        self.close_code = protocol.CLOSE_NORMAL
        self.close_reason = ""

    def push(self, frame: str) -> None:
        if self.finished.is_set():
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.finish(None, protocol.CLOSE_SLOW, "Slow consumer: send queue full")

    def finish(self, error: ApiError | None, code: int, reason: str) -> None:
        """End the session: the endpoint sends ``error`` (if any), then closes with ``code``."""
        if self.finished.is_set():
            return
        self.error, self.close_code, self.close_reason = error, code, reason[:120]
        self.finished.set()

    def cut(self, why: str) -> None:
        error = protocol.revoked(why)
        self.finish(error, protocol.CLOSE_POLICY, error.message)

    def uses_token(self, digests: set[str]) -> bool:
        return self.digest is not None and self.digest in digests

    def of_user(self, uid: str) -> bool:
        return self.principal is not None and self.principal.uid == uid


@dataclass
class WatchScope:
    """What a ``/live`` or ``/events`` query asked for: named devices (``explicit``), or a user's
    devices (``uid``; of some types ``dtids``; with ``shared`` ones), which grows as devices are
    created or shared with the user."""

    dids: set[str]
    uid: str | None
    explicit: bool
    dtids: set[str] | None = None
    shared: bool = False


class WatchSession(Session):
    """``/live`` and ``/events``: a set of devices the token may read, maybe growing with ``uid``."""

    def __init__(self, rt: Runtime, principal: Principal, digest: str | None, scope: WatchScope) -> None:
        super().__init__(rt, principal, digest)
        self.dids = scope.dids
        self.uid = scope.uid
        self.explicit = scope.explicit  # opened for named devices: losing one of them ends the session
        self.dtids = scope.dtids
        self.shared = scope.shared

    def uid_is(self, uid: str) -> bool:
        """Opened by that user's token, or watching that user's devices."""
        return self.of_user(uid) or self.uid == uid

    def wants_new(self, payload: dict[str, Any]) -> bool:
        """Would a device created now belong to this session (``uid`` scope, device type filter)?"""
        if self.explicit or self.uid is None or payload.get("uid") != self.uid:
            return False
        return self.dtids is None or payload.get("dtid") in self.dtids

    def wants_shared(self, payload: dict[str, Any]) -> bool:
        """Would a device just shared with ``payload["uid"]`` belong to this session?"""
        return not self.explicit and self.shared and self.uid is not None and payload.get("uid") == self.uid


class LiveSession(WatchSession):
    """``/live``: messages after ``cursor``; entries arriving while it catches up wait in ``pending``."""

    kind = "live"

    def __init__(self, *args: Any, cursor: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor = cursor
        self.catching_up = True
        self.pending: list[FeedEntry] = []
        self.overflowed = False

    def offer(self, entry: FeedEntry) -> None:
        if self.catching_up:
            if len(self.pending) >= self.queue.maxsize:
                # Bounded: drop what waits; it is committed, so the catch-up reads it from the feed.
                self.pending.clear()
                self.overflowed = True
            self.pending.append(entry)
            return
        self.deliver(entry)

    def deliver(self, entry: FeedEntry) -> None:
        # Seq order is commit order: anything at or below the cursor was sent already (the seam
        # between catch-up and live stream), so no message is sent twice.
        if entry.seq <= self.cursor:
            return
        self.cursor = entry.seq
        self.push(protocol.message_frame(entry.payload, entry.seq))

    async def catch_up(self) -> None:
        """Send what was stored after the cursor (from the feed), then switch to the live stream."""
        while True:
            entries = await feed.read_after(self.rt, self.cursor, TAIL_BATCH)
            for entry in entries:
                if entry.kind == "message" and entry.did in self.dids and not self.finished.is_set():
                    await self.queue.put(protocol.message_frame(entry.payload, entry.seq))
                self.cursor = max(self.cursor, entry.seq)
            if len(entries) < TAIL_BATCH and not self.overflowed:
                break
            if len(entries) < TAIL_BATCH:
                self.overflowed = False  # entries were dropped during that read: read once more
        # No await from here on: nothing can slip between the last read and the switch.
        self.catching_up = False
        pending, self.pending = self.pending, []
        for entry in pending:
            self.deliver(entry)


class EventsSession(WatchSession):
    kind = "events"

    def __init__(self, *args: Any, matches: Callable[[str], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.matches = matches
        # Profile events follow the token's user when the session names devices.
        self.uid = self.uid or (self.principal.uid if self.principal else None)


class DeviceSession(Session):
    """``/websocket``: the devices registered on this socket, each with the token that registered it."""

    kind = "device"

    def __init__(self, rt: Runtime, ack: bool, hub: ChannelHub, authorization: str | None = None) -> None:
        super().__init__(rt, None, None)
        self.ack = ack
        self.hub = hub
        self.authorization = authorization  # ?Authorization= of the URL: for registers without a token
        self.devices: dict[str, tuple[Principal, str, dict[str, Any]]] = {}  # did → (principal, digest, row)

    # What the hub hands a device channel; the MQTT endpoint (channels/mqtt) renders them its own way.
    def send_action(self, action: dict[str, Any]) -> None:
        self.push(protocol.action_frame(action))

    def taken_over(self, did: str) -> None:
        """Another connection (any channel, any node) holds ``did`` now: tell this one why."""
        self.push(protocol.error_frame(protocol.replaced(did), sdid=did))

    # Device-management tasks (channels/devicemgmt.py).
    def accepts_tasks(self, did: str) -> bool:
        return did in self.devices

    def send_task(self, did: str, message: dict[str, Any]) -> None:
        from thingcloud.channels.devicemgmt import task_frame

        self.push(task_frame(did, message))


# --- running a session ------------------------------------------------------------------------------


async def refuse(ws: WebSocket, error: ApiError) -> None:
    with contextlib.suppress(Exception):
        if ws.client_state.name == "CONNECTING":
            await ws.accept()
        await ws.send_text(protocol.error_frame(error))
        await ws.close(protocol.CLOSE_POLICY, error.message[:120])


async def _send_loop(ws: WebSocket, session: Session) -> None:
    while True:
        frame = await session.queue.get()
        await ws.send_text(frame)


async def _ping_loop(session: Session, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        session.push(protocol.PING)


async def drain_frames(ws: WebSocket, session: Session) -> None:
    """/live and /events are read-only: client frames are read (to notice the close) and ignored."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            session.finish(None, protocol.CLOSE_NORMAL, "")
            return


async def serve(ws: WebSocket, session: Session, detach: Callable[[], Any], *work: Awaitable[Any]) -> None:
    """Run the socket's tasks until the session finishes, then say why and close.

    The session leaves the hub (``detach``) and drops its queue first: while a slow consumer is
    still being told goodbye, nothing more is buffered for it."""
    tasks = [
        asyncio.ensure_future(_send_loop(ws, session)),
        asyncio.ensure_future(_ping_loop(session, session.rt.settings.channel_ping_interval)),
        *(asyncio.ensure_future(w) for w in work),
    ]
    gone = asyncio.ensure_future(session.finished.wait())
    try:
        while not session.finished.is_set():
            done, _ = await asyncio.wait([gone, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is gone or task.cancelled():
                    continue
                exc = task.exception()
                if isinstance(exc, WebSocketDisconnect | OSError):  # the client went away
                    session.finish(None, protocol.CLOSE_NORMAL, "")
                elif isinstance(exc, Exception):
                    error = as_api_error(exc)
                    session.finish(error, protocol.CLOSE_POLICY, error.message)
                tasks.remove(task)
    finally:
        for task in [gone, *tasks]:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        detach()
        while not session.queue.empty():
            session.queue.get_nowait()
    if session.close_code == protocol.CLOSE_NORMAL and session.error is None:
        return  # the client closed, nothing to tell it
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_WAIT):
            if session.error is not None:
                await ws.send_text(protocol.error_frame(session.error))
            await ws.close(session.close_code, session.close_reason)
