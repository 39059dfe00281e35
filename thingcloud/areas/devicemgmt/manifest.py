"""The device-management manifest of a device type: which server properties and device properties
exist, each with a value type and (device properties) the operations R (read), W (write), E (execute).

ARTIK defined these in its developer portal; ThingCloud lets device-type owners set them through an
extension endpoint (``PUT /devicemgmt/devicetypes/{dtid}/manifest``) and serves them with S87. The
document has the shape S87 answers with: nested groups of leaves, a leaf being
``{"type": "String", "operations": "RW", "description": "..."}`` (server properties have no
operations: the owner writes them, everyone allowed reads them). A type without a manifest of its own
gets ``DEFAULT_DOCUMENT``: no server properties and LwM2M-like device properties (objects Device /3
and Firmware /5). Device properties exist only while the type's ``devicePropertiesEnabled`` is on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from thingcloud import tables as t
from thingcloud.areas.devicemgmt.config import config_for
from thingcloud.areas.devicetypes.service import device_type_row
from thingcloud.errors import FieldError, ValidationFailed
from thingcloud.runtime import Runtime

VALUE_TYPES = ("String", "Integer", "Long", "Double", "Boolean")
OPERATIONS = "RWE"
SERVER, DEVICE, SYSTEM = "serverProperties", "deviceProperties", "systemProperties"
GROUP_TYPE = (
    "Object"  # value_type of a group path (a read of a whole object, e.g. ``deviceProperties.device``)
)
MAX_DEPTH = 6
MAX_LEAVES = 500
MAX_DESCRIPTION = 1500
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")

DEFAULT_DOCUMENT: dict[str, Any] = {
    SERVER: {},
    DEVICE: {
        "device": {
            "manufacturer": {"type": "String", "operations": "R"},
            "model": {"type": "String", "operations": "R"},
            "firmwareVersion": {"type": "String", "operations": "R"},
            "timezone": {"type": "String", "operations": "RW"},
            "reboot": {"type": "String", "operations": "E"},
        },
        "firmware": {"update": {"type": "String", "operations": "E"}},
    },
}


@dataclass(frozen=True)
class PropertySpec:
    path: str  # e.g. "deviceProperties.device.timezone" or "serverProperties.name"
    kind: str  # "server" | "device"
    value_type: str  # "String" | "Integer" | "Long" | "Double" | "Boolean" ("Object" for a group)
    operations: frozenset[str]  # subset of {"R", "W", "E"}


def _is_leaf(node: dict[str, Any]) -> bool:
    return isinstance(node.get("type"), str) or isinstance(node.get("operations"), str | list)


def _operations(raw: Any) -> frozenset[str] | None:
    """``"RW"`` or ``["R", "W"]`` → {"R", "W"}; None when malformed."""
    letters = "".join(raw) if isinstance(raw, list) and all(isinstance(x, str) for x in raw) else raw
    if not isinstance(letters, str) or not letters or any(c not in OPERATIONS for c in letters.upper()):
        return None
    return frozenset(letters.upper())


def _leaf(kind: str, path: str, node: dict[str, Any], problems: list[FieldError]) -> dict[str, Any] | None:
    """One normalized leaf, or None (with the reasons added to ``problems``)."""
    leaf: dict[str, Any] = {}
    value_type = node.get("type")
    if value_type is None and kind == DEVICE:
        value_type = "String"  # an execute-only resource takes a string argument, as in LwM2M
    if value_type not in VALUE_TYPES:
        problems.append(FieldError(f"{path}.type", (f"Must be one of {', '.join(VALUE_TYPES)}",)))
        return None
    leaf["type"] = value_type
    if kind == DEVICE:
        ops = _operations(node.get("operations"))
        if ops is None:
            problems.append(FieldError(f"{path}.operations", ("Must be a combination of R, W and E",)))
            return None
        leaf["operations"] = "".join(c for c in OPERATIONS if c in ops)
    description = node.get("description")
    if description is not None:
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            problems.append(
                FieldError(f"{path}.description", (f"Text field only, maximum length {MAX_DESCRIPTION}",))
            )
            return None
        leaf["description"] = description
    return leaf


def _section(kind: str, tree: Any, problems: list[FieldError]) -> dict[str, Any]:
    """Validate and normalize one section (server or device properties)."""
    counted = 0

    def walk(node: Any, path: str, depth: int) -> dict[str, Any]:
        nonlocal counted
        out: dict[str, Any] = {}
        if not isinstance(node, dict):
            problems.append(FieldError(path, ("Must be an object of properties",)))
            return out
        for name, child in node.items():
            here = f"{path}.{name}"
            if not NAME.match(str(name)):
                problems.append(FieldError(here, ("Invalid property name (letters, digits, _ and -)",)))
            elif not isinstance(child, dict) or not child:
                problems.append(FieldError(here, ("Must be a property definition or a group of them",)))
            elif _is_leaf(child):
                counted += 1
                leaf = _leaf(kind, here, child, problems)
                if leaf is not None:
                    out[name] = leaf
            elif depth >= MAX_DEPTH:
                problems.append(FieldError(here, (f"Maximum nesting depth {MAX_DEPTH}",)))
            else:
                out[name] = walk(child, here, depth + 1)
        return out

    normalized = walk({} if tree is None else tree, kind, 1)
    if counted > MAX_LEAVES:
        problems.append(FieldError(kind, (f"Maximum {MAX_LEAVES} properties",)))
    return normalized


def validate_document(document: Any) -> dict[str, Any]:
    """A manifest as sent → its normalized form, or 400 naming every bad element. A missing
    ``deviceProperties`` means the default device properties; a missing ``serverProperties`` none."""
    if not isinstance(document, dict):
        raise ValidationFailed.field("body", "Must be an object with serverProperties and deviceProperties")
    problems: list[FieldError] = []
    server = _section(SERVER, document.get(SERVER), problems)
    device = (
        DEFAULT_DOCUMENT[DEVICE]
        if document.get(DEVICE) is None
        else _section(DEVICE, document[DEVICE], problems)
    )
    if problems:
        raise ValidationFailed("The manifest content is invalid", problems)
    return {SERVER: server, DEVICE: device}


def specs_of(document: dict[str, Any]) -> dict[str, PropertySpec]:
    """Every path of a normalized document (leaves and groups) → its spec."""
    specs: dict[str, PropertySpec] = {}

    def walk(kind: str, node: dict[str, Any], path: str) -> frozenset[str]:
        readable: set[str] = set()
        for name, child in node.items():
            here = f"{path}.{name}"
            if _is_leaf(child):
                ops = frozenset(child.get("operations", "RW"))
                specs[here] = PropertySpec(here, kind, child["type"], ops)
                readable |= ops & {"R"}
            else:
                readable |= walk(kind, child, here)
        if path not in (SERVER, DEVICE):
            specs[path] = PropertySpec(path, kind, GROUP_TYPE, frozenset(readable))
        return frozenset(readable)

    walk("server", document[SERVER], SERVER)
    walk("device", document[DEVICE], DEVICE)
    return specs


async def manifest_document(rt: Runtime, dtid: str) -> dict[str, Any]:
    """The normalized DM manifest of ``dtid``: its own, or the default."""
    async with rt.db.read() as conn:
        found = await conn.execute(select(t.dm_manifests.c.document).where(t.dm_manifests.c.dtid == dtid))
        document = found.scalar()
    return document if isinstance(document, dict) else DEFAULT_DOCUMENT


async def manifest_specs(rt: Runtime, dtid: str) -> dict[str, PropertySpec]:
    """Every defined path of ``dtid``; device paths only while device properties are enabled."""
    specs = specs_of(await manifest_document(rt, dtid))
    if not (await config_for(rt, dtid)).device_properties_enabled:
        specs = {path: spec for path, spec in specs.items() if spec.kind == "server"}
    return specs


async def property_spec(rt: Runtime, dtid: str, path: str) -> PropertySpec | None:
    """The definition of a dot path (``deviceProperties.device.timezone``, ``serverProperties.name``,
    or a group such as ``deviceProperties.device`` with type ``Object``), or None when the manifest
    does not define it — including every device path while ``devicePropertiesEnabled`` is off, and
    every system property (read-only, kept by the server)."""
    return (await manifest_specs(rt, dtid)).get(path)


async def get_manifest_properties(rt: Runtime, dtid: str) -> dict[str, Any]:
    """S87: the manifest; ``deviceProperties`` only when the type has device properties enabled."""
    document = await manifest_document(rt, dtid)
    if (await config_for(rt, dtid)).device_properties_enabled:
        return document
    return {SERVER: document[SERVER]}


async def put_manifest(rt: Runtime, dtid: str, document: Any) -> dict[str, Any]:
    """The extension endpoint: replace the DM manifest of ``dtid``; returns the normalized document.
    Stored values of properties the new manifest drops stay readable until overwritten or deleted."""
    dt = await device_type_row(rt, dtid)
    normalized = validate_document(document)
    now = rt.clock.now_ms()
    table = t.dm_manifests
    async with rt.db.write() as conn:
        stmt = rt.db.upsert(table).values(dtid=dt["id"], document=normalized, created_on=now, modified_on=now)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[table.c.dtid], set_={"document": normalized, "modified_on": now}
            )
        )
    return normalized
