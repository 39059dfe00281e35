"""The open WebSocket sessions of this node and what reaches them from the bus (``ChannelHub``).

One hub per process subscribes to the bus once and dispatches by index (device id → sessions), so a
publish costs a dict lookup, not a scan of every socket:

* ``action.*`` → the device-channel session holding the destination device;
* ``feed.appended`` → the hub reads the new feed entries (``thingcloud/feed.py``) and hands each
  stored message to the ``/live`` sessions of its device. The bus payload of ``message.<did>`` has
  no commit position, the feed does: its seq is the resume cursor of every ``/live`` frame, read
  once per commit batch per node (and only while ``/live`` sessions are open);
* ``device.*`` / ``user.profile.updated`` → the ``/events`` sessions;
* revocations (``token.revoked``, ``device.token.revoked``, ``device.share.revoked``,
  ``device.deleted``, ``user.deleted``) → the affected sessions are cut off at once;
* ``channel.device.claimed`` → one connection per device: the session that held the device before
  (on this node or another) lets it go.

"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from thingcloud import feed
from thingcloud.bus import Subscription
from thingcloud.channels import protocol
from thingcloud.channels.sessions import (
    TAIL_BATCH,
    DeviceSession,
    EventsSession,
    LiveSession,
    Session,
    WatchSession,
)
from thingcloud.errors import ApiError
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

CLAIMED = "channel.device.claimed"


PermissionCheck = Callable[[WatchSession, str], Awaitable[bool]]
DeviceRelease = Callable[[DeviceSession, str, ApiError | None], Awaitable[None]]


class ChannelHub:
    """This node's sessions and the bus subscriptions that feed them (``app.state.channels``)."""

    def __init__(self, rt: Runtime, may_read: PermissionCheck, release: DeviceRelease) -> None:
        self.rt = rt
        self.may_read = may_read  # READ on a device created after the session opened
        self.release = release  # a device leaves a device-channel session (status, events)
        self.sessions: set[Session] = set()
        self.live: dict[str, set[LiveSession]] = {}
        self.lives: set[LiveSession] = set()
        self.events: set[EventsSession] = set()
        self.devices: dict[str, DeviceSession] = {}
        self.tail: int | None = None  # feed seq read so far; None while no /live session is open
        self._wake = asyncio.Event()
        self._subscriptions: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        bus = self.rt.bus
        for pattern, handler in (
            (feed.FEED_APPENDED, self._on_appended),
            ("action.*", self._on_action),
            ("device.>", self._on_device_event),
            ("user.profile.updated", self._on_user_event),
            ("user.deleted", self._on_user_deleted),
            ("token.revoked", self._on_token_revoked),
            (CLAIMED, self._on_claimed),
        ):
            self._subscriptions.append(await bus.subscribe(pattern, handler))
        self._task = asyncio.create_task(self._follow_feed(), name="channels:feed-tail")

    async def stop(self) -> None:
        for sub in self._subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subscriptions.clear()
        for task in [self._task, *self._background]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for session in list(self.sessions):
            session.finish(None, protocol.CLOSE_GOING_AWAY, "Server shutting down")

    # --- membership -------------------------------------------------------------------------------

    async def add_live(self, session: LiveSession) -> None:
        if self.tail is None:
            # The first /live session: start following the feed from its current end (unless another
            # session started it meanwhile, from an earlier point that must not be skipped).
            highest = (await feed.bounds(self.rt))[1]
            if self.tail is None:
                self.tail = highest
        self.sessions.add(session)
        self.lives.add(session)
        for did in session.dids:
            self.live.setdefault(did, set()).add(session)

    def add_events(self, session: EventsSession) -> None:
        self.sessions.add(session)
        self.events.add(session)

    def add_device_session(self, session: DeviceSession) -> None:
        self.sessions.add(session)

    def remove(self, session: Session) -> None:
        self.sessions.discard(session)
        if isinstance(session, LiveSession):
            self.lives.discard(session)
            for did in session.dids:
                watchers = self.live.get(did)
                if watchers is not None:
                    watchers.discard(session)
                    if not watchers:
                        del self.live[did]
            if not self.lives:
                self.tail = None
        elif isinstance(session, EventsSession):
            self.events.discard(session)

    async def claim(self, session: DeviceSession, did: str) -> None:
        """Hold ``did`` here; the session that held it (on any node) lets it go."""
        await self.rt.bus.publish(CLAIMED, {"did": did, "session": session.id})
        self.devices[did] = session

    def held_by(self, did: str) -> DeviceSession | None:
        return self.devices.get(did)

    def let_go(self, session: DeviceSession, did: str) -> bool:
        """Forget ``did`` for ``session``; True when it still held it (presence must change)."""
        session.devices.pop(did, None)
        if self.devices.get(did) is session:
            del self.devices[did]
            return True
        return False

    # --- bus handlers (quick: anything slow goes to a task) ----------------------------------------

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_appended(self, _subject: str, _payload: dict[str, Any]) -> None:
        self._wake.set()

    async def _follow_feed(self) -> None:
        poll = self.rt.settings.feed_poll_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
            self._wake.clear()
            try:
                while self.tail is not None:
                    entries = await feed.read_after(self.rt, self.tail, TAIL_BATCH)
                    if self.tail is None:
                        break
                    for entry in entries:
                        self.tail = entry.seq
                        if entry.kind == "message" and entry.did is not None:
                            for session in list(self.live.get(entry.did, ())):
                                session.offer(entry)
                    if len(entries) < TAIL_BATCH:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: try again at the next ring or poll
                log.warning("channels: feed tail read failed: %s", type(exc).__name__)

    async def _on_action(self, _subject: str, payload: dict[str, Any]) -> None:
        session = self.devices.get(str(payload.get("ddid")))
        if session is not None:
            session.send_action(payload)

    async def _on_claimed(self, _subject: str, payload: dict[str, Any]) -> None:
        did = str(payload.get("did"))
        holder = self.devices.get(did)
        if holder is not None and holder.id != payload.get("session"):
            del self.devices[did]
            holder.devices.pop(did, None)
            # The new holder owns presence now: only tell the old socket why.
            holder.taken_over(did)

    async def _on_device_event(self, subject: str, payload: dict[str, Any]) -> None:
        did = str(payload.get("did"))
        if subject == "device.status":
            # The REST availability change (PUT /devices/{did}/status) as the event feed names it.
            subject = f"device.status.{payload.get('availability')}"
        if subject in protocol.EVENT_NAMES:
            self._publish_event(subject, did, payload)  # before a deletion takes the device away
        if subject == "device.deleted":
            self._device_gone(did, "device deleted")
        elif subject == "device.token.revoked":
            self._device_token_revoked(did)
        elif subject == "device.share.revoked":
            self._share_revoked(did, str(payload.get("uid")))
        elif subject in ("device.new", "device.share.accepted"):
            new = subject == "device.new"
            for session in [*self.events, *self.lives]:
                if session.wants_new(payload) if new else session.wants_shared(payload):
                    self._spawn(self._admit(session, payload, announce=new))

    async def _admit(self, session: WatchSession, payload: dict[str, Any], announce: bool) -> None:
        did = str(payload["did"])
        if session.finished.is_set() or not await self.may_read(session, did):
            return
        if isinstance(session, LiveSession):
            self.live.setdefault(did, set()).add(session)
        session.dids.add(did)
        if announce and isinstance(session, EventsSession) and session.matches("device.new"):
            session.push(protocol.event_frame("device.new", self._ts(payload), self._event_data(payload)))

    def _ts(self, payload: dict[str, Any]) -> int:
        ts = payload.get("ts")
        return ts if isinstance(ts, int) else self.rt.clock.now_ms()

    @staticmethod
    def _event_data(payload: dict[str, Any]) -> dict[str, Any]:
        return {k: payload.get(k) for k in ("uid", "aid", "did", "dtid")}

    def _publish_event(self, name: str, did: str, payload: dict[str, Any]) -> None:
        frame: str | None = None
        for session in list(self.events):
            # device.new of a device the session does not know yet goes through _admit.
            if did in session.dids and session.matches(name):
                frame = frame or protocol.event_frame(name, self._ts(payload), self._event_data(payload))
                session.push(frame)

    async def _on_user_event(self, subject: str, payload: dict[str, Any]) -> None:
        uid = payload.get("uid")
        frame = protocol.event_frame(subject, self._ts(payload), self._event_data(payload))
        for session in list(self.events):
            if session.uid == uid and session.matches(subject):
                session.push(frame)

    # --- revocation cut-off ------------------------------------------------------------------------

    async def _on_token_revoked(self, _subject: str, payload: dict[str, Any]) -> None:
        digests = set(payload.get("hashes") or ())
        everything = bool(payload.get("all"))
        for session in list(self.sessions):
            if isinstance(session, DeviceSession):
                for did, (_, digest, _) in list(session.devices.items()):
                    if everything or digest in digests:
                        self._drop_device(session, did, "token revoked")
            elif everything or session.uses_token(digests):
                session.cut("token revoked")

    def _device_token_revoked(self, did: str) -> None:
        for session in list(self.sessions):
            principal = session.principal
            if principal is not None and principal.kind == "device" and principal.did == did:
                session.cut("device token revoked")
        holder = self.devices.get(did)
        entry = holder.devices.get(did) if holder is not None else None
        if holder is not None and entry is not None and entry[0].kind == "device":
            self._drop_device(holder, did, "device token revoked")

    def _share_revoked(self, did: str, uid: str) -> None:
        for session in list(self.sessions):
            if isinstance(session, DeviceSession):
                entry = session.devices.get(did)
                if entry is not None and entry[0].uid == uid and entry[2].get("uid") != uid:
                    self._drop_device(session, did, "share revoked")
            elif isinstance(session, WatchSession) and did in session.dids and session.uid_is(uid):
                session.cut("share revoked")

    def _device_gone(self, did: str, why: str) -> None:
        holder = self.devices.get(did)
        if holder is not None:
            self._drop_device(holder, did, why)
        for session in list(self.sessions):
            if not isinstance(session, WatchSession) or did not in session.dids:
                continue
            principal = session.principal
            if session.explicit or (principal is not None and principal.did == did):
                session.cut(why)
            else:
                session.dids.discard(did)
                watchers = self.live.get(did)
                if watchers is not None and isinstance(session, LiveSession):
                    watchers.discard(session)

    async def _on_user_deleted(self, _subject: str, payload: dict[str, Any]) -> None:
        uid = str(payload.get("uid"))
        for session in list(self.sessions):
            if isinstance(session, DeviceSession):
                for did, (principal, _, row) in list(session.devices.items()):
                    if principal.uid == uid or row.get("uid") == uid:
                        self._drop_device(session, did, "user deleted")
            elif isinstance(session, WatchSession) and session.uid_is(uid):
                session.cut("user deleted")

    def _drop_device(self, session: DeviceSession, did: str, why: str) -> None:
        if did not in session.devices:
            return
        self._spawn(self.release(session, did, protocol.revoked(why)))
