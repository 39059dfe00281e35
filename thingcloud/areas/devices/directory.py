"""The device directory: what ingest and the device channels need to know about a device (owner,
type, manifest policy), cached per process so the hot path does not query the database per message.

An entry is dropped when its device changes or goes away (``device.updated`` / ``device.deleted`` on
the bus, from any node once the bus spans nodes), and expires after a minute in any case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from thingcloud import tables as t
from thingcloud.bus import BUS_RESYNC, Bus
from thingcloud.errors import NotFound
from thingcloud.runtime import Runtime

DEVICE_CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class DeviceInfo:
    """What ingest needs to know about a device, cached per process."""

    id: str
    uid: str
    dtid: str
    manifest_version: int | None
    policy: str

    def as_row(self) -> dict[str, Any]:
        return {"id": self.id, "uid": self.uid, "dtid": self.dtid}


class DeviceDirectory:
    """did → DeviceInfo for the ingest hot path; emptied for a device when it changes or goes away."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._entries: dict[str, tuple[DeviceInfo, float]] = {}
        # Bumped by every invalidation: a read that started before one must not be cached, or a
        # device deleted (on another node) while its row was being read would stay cached.
        self.generation = 0

    async def attach(self, bus: Bus) -> None:
        for subject in ("device.updated", "device.deleted", BUS_RESYNC):
            await bus.subscribe(subject, self._forget)

    async def _forget(self, subject: str, payload: dict[str, Any]) -> None:
        self.generation += 1
        if subject == BUS_RESYNC:
            self._entries.clear()
        self._entries.pop(payload.get("did", ""), None)

    async def get(self, did: str) -> DeviceInfo:
        entry = self._entries.get(did)
        now = self.rt.clock.now()
        if entry is not None and now - entry[1] < DEVICE_CACHE_SECONDS:
            return entry[0]
        generation = self.generation
        async with self.rt.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        t.devices.c.id,
                        t.devices.c.uid,
                        t.devices.c.dtid,
                        t.devices.c.manifest_version,
                        t.devices.c.manifest_version_policy,
                    ).where(t.devices.c.id == did)
                )
            ).first()
        if row is None:
            self._entries.pop(did, None)
            raise NotFound(f"Device {did} not found")
        info = DeviceInfo(row[0], row[1], row[2], row[3], row[4])
        if generation != self.generation:
            return info
        if len(self._entries) > 200_000:
            self._entries.clear()
        self._entries[did] = (info, now)
        return info
