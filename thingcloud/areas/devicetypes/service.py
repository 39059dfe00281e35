"""Device types and their manifest versions: creation, lookup, manifests (compiled once, cached).

Manifest versions never change once stored, so a compiled ``Manifest`` is cached per (dtid, version)
for the life of the process; only "which version is latest" can change, and adding a manifest
publishes ``devicetype.manifest.added`` so every node forgets its cached latest version. A process
that shares no bus with the server (the ``thingcloud devicetypes add-manifest`` command) cannot tell
it, so a cached latest version also expires after ``LATEST_SECONDS``.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, cast, func, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError

from thingcloud import tables as t
from thingcloud.areas.devicetypes.manifests import Manifest, compile_manifest
from thingcloud.areas.devicetypes.schemas import DeviceType, Tag
from thingcloud.auth.permissions import (
    Principal,
    device_type_onboard_clause,
    device_type_owned_clause,
    device_type_visible_clause,
    owns_device_type,
)
from thingcloud.bus import BUS_RESYNC, Bus
from thingcloud.clock import Clock, SystemClock
from thingcloud.errors import Conflict, DeviceTypeNotFound, FieldError, NotFound, ValidationFailed
from thingcloud.ids import new_devicetype_id
from thingcloud.runtime import Runtime

UNIQUE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
MAX_CACHED = 10_000
LATEST_SECONDS = 30.0


class ManifestCache:
    """(dtid, version) → compiled Manifest, LRU-bounded; dtid → latest version, dropped on change."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._compiled: OrderedDict[tuple[str, int], Manifest] = OrderedDict()
        self._latest: dict[str, tuple[int, float]] = {}  # dtid → (version, expires at, clock seconds)
        self.generation = 0  # bumped by every change: a read that started before one is not kept

    async def attach(self, bus: Bus) -> None:
        await bus.subscribe("devicetype.manifest.added", self._on_added)
        await bus.subscribe(BUS_RESYNC, self._on_added)  # a new version may have been missed

    async def _on_added(self, subject: str, payload: dict[str, Any]) -> None:
        self.generation += 1
        if subject == BUS_RESYNC:
            self._latest.clear()
        self._latest.pop(payload.get("dtid", ""), None)

    def latest(self, dtid: str) -> int | None:
        found = self._latest.get(dtid)
        if found is None or found[1] <= self._clock.now():
            return None
        return found[0]

    def set_latest(self, dtid: str, version: int, generation: int) -> None:
        if generation == self.generation:
            self._latest[dtid] = (version, self._clock.now() + LATEST_SECONDS)

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
    elif name is not None and not 1 <= len(name.strip()) <= 100:
        problems.append(FieldError("name", ("Length must be 1-100",)))
    if creating and not unique_name:
        problems.append(FieldError("uniqueName", ("Required parameter",)))
    elif unique_name is not None and (len(unique_name) > 200 or not UNIQUE_NAME.match(unique_name)):
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
    has_cloud_connector: bool = False,
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
        "has_cloud_connector": has_cloud_connector,
        "rsp": False,
        "issuer_dn": None,
        "vid": "0",
        "tags": normalize_tags(tags),
        "latest_version": 0,
        "created_on": now,
        "last_updated": now,
    }
    async with rt.db.write() as conn:
        if (
            oid is not None
            and not (
                await conn.execute(select(t.organizations.c.id).where(t.organizations.c.id == oid))
            ).first()
        ):
            raise NotFound("Organization not found")
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
    if isinstance(document, str | bytes):  # JSON text (a file): store the document, not the text
        document = json.loads(document)
    async with rt.db.write() as conn:
        # Locked so that two concurrent uploads get versions N+1 and N+2 (PostgreSQL; SQLite has one writer).
        latest = (
            await conn.execute(
                select(t.device_types.c.latest_version).where(t.device_types.c.id == dtid).with_for_update()
            )
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
            generation = cache.generation
            row = await device_type_row(rt, dtid)
            version = int(row["latest_version"])
            if version == 0:
                raise NotFound("The device type has no manifest yet")
            cache.set_latest(dtid, version, generation)
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


# --- The API view: DeviceType objects, changes, searches -------------------------------------------


def to_device_type(row: Any, owned_by_caller: bool) -> DeviceType:
    return DeviceType(
        id=row["id"],
        uniqueName=row["unique_name"],
        latestVersion=int(row["latest_version"]),
        lastUpdated=int(row["last_updated"]),
        name=row["name"],
        description=row["description"],
        uid=row["owner_uid"],
        oid=row["oid"],
        hasCloudConnector=bool(row["has_cloud_connector"]),
        approved=bool(row["approved"]),
        published=bool(row["published"]),
        protected=bool(row["protected"]),
        inStore=False,  # ThingCloud has no device store
        ownedByCurrentUser=bool(owned_by_caller),
        tags=[Tag(name=tag, isCategory=False) for tag in row["tags"]],
        rsp=bool(row["rsp"]),
        issuerDn=row["issuer_dn"],
        vid=row["vid"],
    )


async def describe_device_type(rt: Runtime, principal: Principal, row: dict[str, Any]) -> DeviceType:
    """The DeviceType object of a row, as seen by the caller (``ownedByCurrentUser``)."""
    return to_device_type(row, await owns_device_type(rt, principal, row))


async def update_device_type(
    rt: Runtime,
    dtid: str,
    *,
    name: str | None = None,
    description: str | None = None,
    published: bool | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """Change a device type's name, description, tags or ``published``; absent values stay."""
    problems = validate_device_type(name, None, description, creating=False)
    if problems:
        raise ValidationFailed("Validation Error", problems)
    changes: dict[str, Any] = {"last_updated": rt.clock.now_ms()}
    if name is not None:
        changes["name"] = name.strip()
    if description is not None:
        changes["description"] = description
    if published is not None:
        changes["published"] = published
    if tags is not None:
        changes["tags"] = normalize_tags(tags)
    async with rt.db.write() as conn:
        result = await conn.execute(
            update(t.device_types).where(t.device_types.c.id == dtid).values(**changes)
        )
        if result.rowcount == 0:
            raise DeviceTypeNotFound()
    await rt.bus.publish("devicetype.updated", {"dtid": dtid})
    return await device_type_row(rt, dtid)


@dataclass(frozen=True)
class DeviceTypeSearch:
    """Filters of ``GET /devicetypes`` (S29) and ``/devicetypes/cloudconnectors``."""

    name: str | None = None  # substring of name or uniqueName, any case
    name_search: str | None = None  # substring of name only, any case
    tags: tuple[str, ...] = ()  # every listed tag
    create_device: bool = False  # only types whose devices the caller may create
    cloud_connectors: bool = False

    def clause(self, principal: Principal) -> ColumnElement[bool]:
        dt = t.device_types.c
        conditions: list[ColumnElement[bool]] = [device_type_visible_clause(principal)]
        if self.name:
            needle = self.name.lower()
            conditions.append(
                or_(
                    func.lower(dt.name).contains(needle, autoescape=True),
                    func.lower(dt.unique_name).contains(needle, autoescape=True),
                )
            )
        if self.name_search:
            conditions.append(func.lower(dt.name).contains(self.name_search.lower(), autoescape=True))
        # Tags are a JSON list written by one serializer, so each tag appears as its JSON string.
        conditions.extend(cast(dt.tags, Text).contains(json.dumps(tag), autoescape=True) for tag in self.tags)
        if self.create_device:
            conditions.append(device_type_onboard_clause(principal))
        if self.cloud_connectors:
            conditions.append(dt.has_cloud_connector.is_(True))
        return and_(true(), *conditions)


async def _page(
    rt: Runtime, principal: Principal, where: ColumnElement[bool], count: int, offset: int
) -> tuple[list[DeviceType], int]:
    """One page of device types in a stable order (name, then id), with the total."""
    owned = device_type_owned_clause(principal).label("owned_by_caller")
    async with rt.db.read() as conn:
        total = (
            await conn.execute(select(func.count()).select_from(t.device_types).where(where))
        ).scalar_one()
        rows = await conn.execute(
            select(t.device_types, owned)
            .where(where)
            .order_by(t.device_types.c.name, t.device_types.c.id)
            .limit(count)
            .offset(offset)
        )
        items = [to_device_type(row, row["owned_by_caller"]) for row in rows.mappings()]
    return items, int(total)


async def list_device_types(
    rt: Runtime, principal: Principal, search: DeviceTypeSearch, count: int, offset: int
) -> tuple[list[DeviceType], int]:
    """Device types the caller may see (published, own, own organizations') matching ``search``."""
    return await _page(rt, principal, search.clause(principal), count, offset)


async def list_user_device_types(
    rt: Runtime,
    principal: Principal,
    uid: str,
    *,
    include_shared: bool,
    include_organization: bool,
    count: int,
    offset: int,
) -> tuple[list[DeviceType], int]:
    """S7: types the user owns, plus (optionally) those of devices shared with them and of their
    organizations. The caller's READ on the user is checked by the route."""
    dt = t.device_types.c
    conditions: list[ColumnElement[bool]] = [dt.owner_uid == uid]
    if include_organization:
        memberships = select(t.organization_members.c.oid).where(t.organization_members.c.uid == uid)
        conditions.append(dt.oid.in_(memberships))
    if include_shared:
        shared = (
            select(t.devices.c.dtid)
            .select_from(t.devices.join(t.device_shares, t.device_shares.c.did == t.devices.c.id))
            .where(t.device_shares.c.recipient_uid == uid, t.device_shares.c.status == "ACCEPTED")
        )
        conditions.append(dt.id.in_(shared))
    return await _page(rt, principal, or_(*conditions), count, offset)
