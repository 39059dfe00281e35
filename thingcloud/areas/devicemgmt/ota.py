"""OTA firmware images (a ThingCloud extension; ARTIK kept them in its portal): device-type owners
upload an image, stored on disk under ``<data_dir>/firmware/<updateId>`` with its SHA-256; an update
task (``deviceProperties.firmware.update`` with ``taskParameters.update.updateId``) sends each device
a download URL, ``/v1.1/updates/urls/<tid>.<did>.<signature>`` (§5.1 names the path), whose token is
an HMAC of the task and device under the server's secret key: valid for that device while its task is
open, nothing to store, the same on every node.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from thingcloud import tables as t
from thingcloud.areas.devicetypes.service import device_type_row
from thingcloud.auth.permissions import Principal, check_device_type_manage
from thingcloud.errors import NotFound, PayloadTooLarge, ValidationFailed
from thingcloud.ids import new_id
from thingcloud.runtime import Runtime

DOWNLOADABLE = ("QUEUED", "PROCESSING", "CANCEL_REQUESTED")
MAX_VERSION = 100

_upd = t.dm_updates


def firmware_dir(rt: Runtime) -> Path:
    return rt.settings.data_dir / "firmware"


def update_wire(row: Any) -> dict[str, Any]:
    return {
        "updateId": row["id"],
        "dtid": row["dtid"],
        "version": row["version"],
        "filename": row["filename"],
        "size": row["size"],
        "sha256": row["sha256"],
        "createdOn": row["created_on"],
    }


async def upload_update(
    rt: Runtime, principal: Principal, dtid: str, version: str | None, filename: str | None, image: bytes
) -> dict[str, Any]:
    """Store a firmware image for ``dtid`` (its owners only); the file is written before the row, so
    a row always has its file."""
    dt = await device_type_row(rt, dtid)
    await check_device_type_manage(rt, principal, dt)
    if not version or len(version) > MAX_VERSION:
        raise ValidationFailed.field(
            "version", "Required parameter" if not version else f"Maximum length {MAX_VERSION}"
        )
    if not image:
        raise ValidationFailed.field("body", "The firmware image cannot be empty")
    if len(image) > rt.settings.dm_update_max_bytes:
        raise PayloadTooLarge(f"Firmware image exceeds {rt.settings.dm_update_max_bytes} bytes")
    update_id = new_id()
    folder = firmware_dir(rt)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{update_id}.part"
    partial.write_bytes(image)
    os.replace(partial, folder / update_id)
    row = {
        "id": update_id,
        "dtid": dtid,
        "version": version,
        "filename": (filename or f"{update_id}.bin")[:200],
        "size": len(image),
        "sha256": hashlib.sha256(image).hexdigest(),
        "created_on": rt.clock.now_ms(),
    }
    async with rt.db.write() as conn:
        await conn.execute(insert(_upd).values(row))
    return update_wire(row)


async def list_updates(
    rt: Runtime, principal: Principal, dtid: str, count: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    dt = await device_type_row(rt, dtid)
    await check_device_type_manage(rt, principal, dt)
    async with rt.db.read() as conn:
        total = await conn.scalar(select(func.count()).select_from(_upd).where(_upd.c.dtid == dtid)) or 0
        rows = await conn.execute(
            select(_upd)
            .where(_upd.c.dtid == dtid)
            .order_by(_upd.c.created_on.desc())
            .limit(count)
            .offset(offset)
        )
        return [update_wire(r) for r in rows.mappings()], total


async def update_row(rt: Runtime, update_id: str) -> dict[str, Any]:
    async with rt.db.read() as conn:
        row = (await conn.execute(select(_upd).where(_upd.c.id == update_id))).mappings().first()
    if row is None:
        raise NotFound(f"Update {update_id} not found")
    return dict(row)


def _signature(rt: Runtime, tid: str, did: str) -> str:
    key = rt.settings.resolved_secret_key().encode()
    return hmac.new(key, f"ota:{tid}:{did}".encode(), hashlib.sha256).hexdigest()[:32]


def download_url(rt: Runtime, tid: str, did: str) -> str:
    return f"{rt.settings.public_base}/v1.1/updates/urls/{tid}.{did}.{_signature(rt, tid, did)}"


async def image_for_download(rt: Runtime, token: str) -> tuple[Path, dict[str, Any]]:
    """The file behind a download URL, or 404 (bad token, task closed for that device, image gone)."""
    parts = token.split(".")
    if len(parts) != 3 or not hmac.compare_digest(parts[2], _signature(rt, parts[0], parts[1])):
        raise NotFound()
    tid, did = parts[0], parts[1]
    async with rt.db.read() as conn:
        found = (
            await conn.execute(
                select(t.dm_tasks.c.parameters, t.dm_device_tasks.c.status)
                .select_from(t.dm_tasks.join(t.dm_device_tasks, t.dm_device_tasks.c.tid == t.dm_tasks.c.id))
                .where(t.dm_tasks.c.id == tid, t.dm_device_tasks.c.did == did)
            )
        ).first()
    if found is None or found.status not in DOWNLOADABLE:
        raise NotFound()
    update_id = ((found.parameters or {}).get("update") or {}).get("updateId")
    if not update_id:
        raise NotFound()
    row = await update_row(rt, update_id)
    path = firmware_dir(rt) / row["id"]
    if not path.is_file():
        raise NotFound()
    return path, row
