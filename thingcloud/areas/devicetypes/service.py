"""Device types and their manifest versions: creation, lookup, manifests (compiled once, cached).

Manifest versions never change once stored, so a compiled ``Manifest`` is cached per (dtid, version)
for the life of the process; only "which version is latest" can change, and adding a manifest
publishes ``devicetype.manifest.added`` so every node forgets its cached latest version.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from thingcloud import tables as t
from thingcloud.areas.devicetypes.manifests import Manifest, compile_manifest
from thingcloud.bus import Bus
from thingcloud.errors import Conflict, DeviceTypeNotFound, FieldError, NotFound, ValidationFailed
from thingcloud.ids import new_devicetype_id
from thingcloud.runtime import Runtime

UNIQUE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
MAX_CACHED = 10_000


class ManifestCache:
    """(dtid, version) → compiled Manifest, LRU-bounded; dtid → latest version, dropped on change."""

    def __init__(self) -> None:
        self._compiled: OrderedDict[tuple[str, int], Manifest] = OrderedDict()
        self._latest: dict[str, int] = {}

    async def attach(self, bus: Bus) -> None:
        await bus.subscribe("devicetype.manifest.added", self._on_added)

    async def _on_added(self, _subject: str, payload: dict[str, Any]) -> None:
        self._latest.pop(payload["dtid"], None)

    def latest(self, dtid: str) -> int | None:
        return self._latest.get(dtid)

    def set_latest(self, dtid: str, version: int) -> None:
        self._latest[dtid] = version

    def get(self, dtid: str, version: int) -> Manifest | None:
        manifest = self._compiled.get((dtid, version))
        if manifest is not None:
            self._compiled.move_to_end((dtid, version))
        return manifest

    def put(self, dtid: str, manifest: Manifest) -> None:
        self._compiled[(dtid, manifest.version)] = manifest
        if len(self._compiled) > MAX_CACHED:
            self._compiled.popitem(last=False)


def validate_device_type(
    name: str | None, unique_name: str | None, description: str | None, *, creating: bool
) -> list[FieldError]:
    problems: list[FieldError] = []
    if creating and not name:
        problems.append(FieldError("name", ("Required parameter",)))
    if name is not None and not 1 <= len(name.strip()) <= 100:
        problems.append(FieldError("name", ("Length must be 1-100",)))
    if creating and not unique_name:
        problems.append(FieldError("uniqueName", ("Required parameter",)))
    if unique_name is not None and (len(unique_name) > 200 or not UNIQUE_NAME.match(unique_name)):
        problems.append(
            FieldError("uniqueName", ("Must be a Java package style name, e.g. com.example.thermostat",))
        )
    if description is not None and len(description) > 1500:
        problems.append(FieldError("description", ("Maximum length 1500",)))
    return problems


def normalize_tags(tags: list[str] | None) -> list[str]:
    if not tags:
        return []
    problems = [
        FieldError(f"tags.{i}", ("Length must be 1-100",))
        for i, tag in enumerate(tags)
        if not 1 <= len(tag.strip()) <= 100
    ]
    if problems:
        raise ValidationFailed("Validation Error", problems)
    return sorted({tag.strip() for tag in tags})


async def create_device_type(
    rt: Runtime,
    *,
    name: str,
    unique_name: str,
    owner_uid: str | None,
    oid: str | None = None,
    description: str | None = None,
    published: bool = False,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """Store a new device type (no manifest yet: ``latestVersion`` 0). Returns its row."""
    problems = validate_device_type(name, unique_name, description, creating=True)
    if problems:
        raise ValidationFailed("Validation Error", problems)
    now = rt.clock.now_ms()
    values: dict[str, Any] = {
        "id": new_devicetype_id(),
        "unique_name": unique_name,
        "name": name.strip(),
        "description": description,
        "owner_uid": None if oid else owner_uid,
        "oid": oid,
        "published": published,
        "protected": False,
        "approved": True,
        "has_cloud_connector": False,
        "rsp": False,
        "issuer_dn": None,
        "vid": "0",
        "tags": normalize_tags(tags),
        "latest_version": 0,
        "created_on": now,
        "last_updated": now,
    }
    async with rt.db.write() as conn:
        taken = await conn.execute(
            select(t.device_types.c.id).where(t.device_types.c.unique_name == unique_name)
        )
        if taken.first():
            raise Conflict(f"A device type with uniqueName '{unique_name}' already exists")
        try:
            await conn.execute(insert(t.device_types).values(**values))
        except IntegrityError as exc:
            raise Conflict(f"A device type with uniqueName '{unique_name}' already exists") from exc
    await rt.bus.publish("devicetype.new", {"dtid": values["id"]})
    return values


async def device_type_row(rt: Runtime, dtid: str) -> dict[str, Any]:
    async with rt.db.read() as conn:
        row = (
            (await conn.execute(select(t.device_types).where(t.device_types.c.id == dtid))).mappings().first()
        )
    if row is None:
        raise DeviceTypeNotFound()
    return dict(row)


async def add_manifest(rt: Runtime, dtid: str, document: Any, created_by: str | None) -> int:
    """Validate and store a new manifest version for a device type; returns the version number."""
    await device_type_row(rt, dtid)
    compile_manifest(document)  # raises ValidationFailed with the path of every bad element
    async with rt.db.write() as conn:
        latest = (
            await conn.execute(select(t.device_types.c.latest_version).where(t.device_types.c.id == dtid))
        ).scalar_one()
        version = int(latest) + 1
        now = rt.clock.now_ms()
        await conn.execute(
            insert(t.manifests).values(
                dtid=dtid, version=version, document=document, created_by=created_by, created_on=now
            )
        )
        await conn.execute(
            update(t.device_types)
            .where(t.device_types.c.id == dtid, t.device_types.c.latest_version == latest)
            .values(latest_version=version, last_updated=now)
        )
    await rt.bus.publish("devicetype.manifest.added", {"dtid": dtid, "version": version})
    return version


async def available_versions(rt: Runtime, dtid: str) -> list[int]:
    await device_type_row(rt, dtid)
    async with rt.db.read() as conn:
        rows = await conn.execute(
            select(t.manifests.c.version).where(t.manifests.c.dtid == dtid).order_by(t.manifests.c.version)
        )
        return [int(r[0]) for r in rows]


async def manifest(rt: Runtime, dtid: str, version: int | None = None) -> Manifest:
    """The compiled manifest of a device type: a given version, or the latest one."""
    cache: ManifestCache = rt.manifests
    if version is None:
        version = cache.latest(dtid)
        if version is None:
            row = await device_type_row(rt, dtid)
            version = int(row["latest_version"])
            if version == 0:
                raise NotFound("The device type has no manifest yet")
            cache.set_latest(dtid, version)
    compiled = cache.get(dtid, version)
    if compiled is not None:
        return compiled
    async with rt.db.read() as conn:
        document = (
            await conn.execute(
                select(t.manifests.c.document).where(
                    t.manifests.c.dtid == dtid, t.manifests.c.version == version
                )
            )
        ).scalar()
    if document is None:
        await device_type_row(rt, dtid)  # 404 1101 for an unknown type
        raise NotFound(f"Manifest version {version} not found")
    compiled = compile_manifest(document, version)
    cache.put(dtid, compiled)
    return compiled
