"""Turning committed messages and actions into notifications: the durable feed consumer.

The consumer ``subscriptions`` reads the ingest feed (``thingcloud/feed.py``; one node at a time by
its lease, at least once, in commit order) and matches each message or action against the ACTIVE
subscriptions, held in memory by an index keyed the ways a subscription can select data:

* ``sdid`` — one device; ``ddid`` — actions sent to one device;
* ``(uid, sdtid)`` — a user's devices of one type; ``uid`` — all of a user's devices;
* the same two for devices *shared with* a user when ``includeSharedDevices`` is set (the accepted
  shares of the batch's devices are read once per batch).

The index is rebuilt when a subscription changes: on ``subscriptions.changed`` from the bus (any
node), and, since a bus message can be lost, whenever a cheap fingerprint of the table (count and
newest ``modified_on`` of active subscriptions) read at the start of each batch has moved.

Matches are recorded in the same transaction for the whole batch: an action, or a subscription's
very first message, opens a notification due now; later messages join the subscription's open
notification, due ``notification_batch_seconds`` after it opened. Each new notification gets one
delivery job (``delivery.py``). A re-handled batch finds its (subscription, mid) pairs already
recorded and skips them, so a crash between commit and checkpoint adds nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select

from thingcloud import tables as t
from thingcloud.areas.subscriptions.service import ACTIVE, CHANGED
from thingcloud.auth.permissions import Access, AppPermissions
from thingcloud.feed import FeedEntry
from thingcloud.ids import new_id
from thingcloud.jobs import JOBS_ENQUEUED, enqueue
from thingcloud.runtime import Runtime

log = logging.getLogger(__name__)

CONSUMER = "subscriptions"
FINGERPRINT_INTERVAL = 1.0  # seconds between checks for subscription changes no notification told of
DELIVER_JOB = "subscriptions.deliver"


@dataclass(frozen=True, slots=True)
class Target:
    id: str
    uid: str
    message_type: str
    include_shared: bool
    permissions: AppPermissions

    def may_read(self, dtid: str) -> bool:
        return self.permissions.on_device_type(dtid, Access.READ)


@dataclass
class SubscriptionIndex:
    by_sdid: dict[str, list[Target]] = field(default_factory=lambda: defaultdict(list))
    by_ddid: dict[str, list[Target]] = field(default_factory=lambda: defaultdict(list))
    by_user_type: dict[tuple[str, str], list[Target]] = field(default_factory=lambda: defaultdict(list))
    by_user: dict[str, list[Target]] = field(default_factory=lambda: defaultdict(list))
    sharing_users: set[str] = field(default_factory=set)  # users with includeSharedDevices ones

    def add(self, row: Any, permissions: AppPermissions) -> None:
        target = Target(row.id, row.uid, row.message_type, bool(row.include_shared), permissions)
        if row.message_type == "action":
            self.by_ddid[row.ddid].append(target)
        elif row.sdid:
            self.by_sdid[row.sdid].append(target)
        elif row.sdtid:
            self.by_user_type[(row.uid, row.sdtid)].append(target)
        else:
            self.by_user[row.uid].append(target)
        if target.include_shared and not row.sdid and row.message_type == "message":
            self.sharing_users.add(row.uid)

    def match(self, entry: FeedEntry, recipients: set[str]) -> list[Target]:
        """The subscriptions that select this message or action (``recipients``: users the device
        is shared with)."""
        p = entry.payload
        if entry.kind == "action":
            found = self.by_ddid.get(p.get("ddid", ""), [])
            return [s for s in found if s.may_read(p.get("ddtid", ""))]
        sdid, sdtid, owner = p.get("sdid", ""), p.get("sdtid", ""), p.get("uid", "")
        found = [
            *self.by_sdid.get(sdid, []),
            *self.by_user_type.get((owner, sdtid), []),
            *self.by_user.get(owner, []),
        ]
        for uid in recipients & self.sharing_users:
            found += [s for s in self.by_user_type.get((uid, sdtid), []) if s.include_shared]
            found += [s for s in self.by_user.get(uid, []) if s.include_shared]
        unique = {s.id: s for s in found if s.may_read(sdtid)}
        return list(unique.values())


class Matcher:
    """The feed handler with its index; ``attach`` registers it on this node."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.index = SubscriptionIndex()
        self.fingerprint: tuple[int, int] | None = None
        self.dirty = True
        self._checked_at = float("-inf")

    async def on_changed(self, _subject: str, _payload: dict[str, Any]) -> None:
        self.dirty = True

    async def refresh(self) -> None:
        """Reload the index when a ``subscriptions.changed`` notification said so; otherwise compare
        the active subscriptions' fingerprint with the database at most once a second (a lost
        notification), not once per feed batch (a read per batch, a hundred a second under load)."""
        now = asyncio.get_running_loop().time()
        if not self.dirty and now - self._checked_at < FINGERPRINT_INTERVAL:
            return
        self._checked_at = now
        s = t.subscriptions
        async with self.rt.db.read() as conn:
            row = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.max(s.c.modified_on), 0)).where(
                        s.c.status == ACTIVE
                    )
                )
            ).one()
            fingerprint = (int(row[0]), int(row[1]))
            if not self.dirty and fingerprint == self.fingerprint:
                return
            self.dirty = False
            rows = (
                await conn.execute(
                    select(s, t.applications.c.permissions)
                    .join(t.applications, t.applications.c.id == s.c.aid)
                    .where(s.c.status == ACTIVE)
                )
            ).all()
        index = SubscriptionIndex()
        for r in rows:
            index.add(r, AppPermissions.from_json(r.permissions))
        self.index, self.fingerprint = index, fingerprint

    async def _recipients(self, entries: list[FeedEntry]) -> dict[str, set[str]]:
        if not self.index.sharing_users:
            return {}
        dids = {e.payload.get("sdid") for e in entries if e.kind == "message"}
        sh = t.device_shares
        async with self.rt.db.read() as conn:
            rows = (
                await conn.execute(
                    select(sh.c.did, sh.c.recipient_uid).where(
                        sh.c.did.in_([d for d in dids if d]),
                        sh.c.status == "ACCEPTED",
                        sh.c.recipient_uid.in_(self.index.sharing_users),
                    )
                )
            ).all()
        shared: dict[str, set[str]] = defaultdict(set)
        for did, uid in rows:
            shared[did].add(uid)
        return shared

    async def handle(self, entries: list[FeedEntry]) -> None:
        await self.refresh()
        relevant = [e for e in entries if e.kind in ("message", "action") and e.ref]
        if not relevant:
            return
        shared = await self._recipients(relevant)
        matches: list[tuple[Target, FeedEntry]] = []
        for entry in relevant:
            recipients = shared.get(entry.payload.get("sdid", ""), set())
            matches += [(target, entry) for target in self.index.match(entry, recipients)]
        if matches:
            await self.record(matches)

    async def record(self, matches: list[tuple[Target, FeedEntry]]) -> None:
        n, items = t.notifications, t.notification_items
        rt, now = self.rt, self.rt.clock.now_ms()
        sids = sorted({target.id for target, _ in matches})
        new_notifications: list[dict[str, Any]] = []
        new_items: list[dict[str, Any]] = []
        async with rt.db.write() as conn:
            done: set[tuple[str, str]] = {
                (str(sid), str(mid))
                for sid, mid in (
                    await conn.execute(
                        select(items.c.sid, items.c.mid).where(
                            items.c.sid.in_(sids), items.c.mid.in_(sorted({str(e.ref) for _, e in matches}))
                        )
                    )
                ).all()
            }
            # Lock the open batches: a delivery job closing one waits until these items are in.
            open_query = select(n.c.id, n.c.sid).where(
                n.c.sid.in_(sids), n.c.status == "open", n.c.kind == "message"
            )
            if not rt.db.is_sqlite:
                open_query = open_query.with_for_update()
            open_batch = {sid: nid for nid, sid in (await conn.execute(open_query)).all()}
            notified = set(
                (await conn.execute(select(n.c.sid).where(n.c.sid.in_(sids)).distinct())).scalars()
            )
            batch_ms = int(rt.settings.notification_batch_seconds * 1000)
            for target, entry in matches:
                if (target.id, entry.ref) in done:
                    continue
                done.add((target.id, str(entry.ref)))
                ts = int(entry.payload.get("ts") or now)
                nid = open_batch.get(target.id) if entry.kind == "message" else None
                if nid is None:
                    nid = new_id()
                    immediate = entry.kind == "action" or target.id not in notified
                    new_notifications.append(
                        {
                            "id": nid,
                            "sid": target.id,
                            "kind": entry.kind,
                            # An action's notification holds that action only: it is closed
                            # from the start, and its delivery needs no write to close it.
                            "status": "sending" if entry.kind == "action" else "open",
                            "start_date": ts,
                            "end_date": ts,
                            "first_cts": int(entry.payload.get("cts") or entry.created_on or now),
                            "due_on": now if immediate else now + batch_ms,
                            "delivered_on": None,
                            "created_on": now,
                        }
                    )
                    notified.add(target.id)
                    if entry.kind == "message":
                        open_batch[target.id] = nid
                did = entry.payload.get("ddid" if entry.kind == "action" else "sdid") or entry.did or ""
                new_items.append(
                    {"sid": target.id, "mid": entry.ref, "nid": nid, "did": did, "ts": ts, "seq": entry.seq}
                )
            if new_notifications:
                await conn.execute(insert(n), new_notifications)
            if new_items:
                await conn.execute(insert(items), new_items)
            for notification in new_notifications:
                await enqueue(
                    rt,
                    DELIVER_JOB,
                    {"nid": notification["id"]},
                    run_at=notification["due_on"],
                    unique_key=f"notification:{notification['id']}",
                    max_attempts=rt.settings.notification_max_failures + 1,
                    conn=conn,
                )
        if new_notifications:
            try:  # wake the runners now rather than at their next poll (actions go out at once)
                await rt.bus.publish(JOBS_ENQUEUED, {"kind": DELIVER_JOB})
            except Exception as exc:
                log.warning("job notification not published: %s", type(exc).__name__)


async def attach(rt: Runtime) -> Matcher:
    """Register this node's instance of the consumer (it runs where it holds the lease)."""
    matcher = Matcher(rt)
    await rt.bus.subscribe(CHANGED, matcher.on_changed)
    # "latest": a new installation does not notify about history committed before it existed.
    await rt.feed.add(CONSUMER, matcher.handle, start_at="latest")
    return matcher
