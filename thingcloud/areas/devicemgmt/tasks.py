"""Device-management tasks (REFERENCE.md §3.16, S90, S91): who may manage them, creating one
(validated against the DM manifest, nothing written on bad input), one task as the API shows it.

A task is one ``dm_tasks`` row and one ``dm_device_tasks`` row per device; every per-device status
change also appends a ``dm_task_history`` row. Task status: SCHEDULED (``scheduledOn`` ahead) →
REQUESTED → QUEUING (being handed to the devices) → PROCESSING → COMPLETE, or CANCELLED. Per device:
REQUESTED → QUEUED (waiting for the device to be connected) → PROCESSING (sent; each send is an
attempt) → SUCCEEDED | FAILED, or CANCEL_REQUESTED → CANCELLED. What moves them after creation lives in
``task_lifecycle`` (jobs, cancellation, acceptance, expiry), ``task_delivery`` (sending) and
``task_answers`` (devices' answers); lists and histories are read in ``task_queries``.

A write of a server property (``serverProperties.<name>``) needs no device: it is applied at creation
through the properties service, and the task is COMPLETE at once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from thingcloud import tables as t
from thingcloud.areas.devicemgmt import config as dm_config
from thingcloud.areas.devicemgmt import manifest as dm_manifest
from thingcloud.areas.devicemgmt import properties as dm_properties
from thingcloud.areas.devicemgmt.task_schemas import TaskRequest
from thingcloud.areas.devicetypes.service import device_type_row
from thingcloud.auth.permissions import Access, Principal, check_devicemgmt_type
from thingcloud.errors import NotFound, ValidationFailed
from thingcloud.ids import new_id
from thingcloud.jobs import JOBS_ENQUEUED, enqueue
from thingcloud.runtime import Runtime

TASK_STATUSES = ("SCHEDULED", "REQUESTED", "QUEUING", "PROCESSING", "COMPLETE", "CANCELLED")
DEVICE_STATUSES = (
    "REQUESTED",
    "QUEUED",
    "PROCESSING",
    "SUCCEEDED",
    "FAILED",
    "CANCEL_REQUESTED",
    "CANCELLED",
)
DEVICE_OPEN = ("REQUESTED", "QUEUED", "PROCESSING", "CANCEL_REQUESTED")
DEVICE_DONE = ("SUCCEEDED", "FAILED", "CANCELLED")
TASK_TYPES = ("R", "W", "E")
OTA_PROPERTY = "deviceProperties.firmware.update"
EXPIRES_RANGE = (60, 604800)
MAX_DEVICES = 100_000
INSERT_CHUNK = 1000
DISPATCH_JOB = "devicemgmt.tasks.dispatch"

_task = t.dm_tasks
_dev = t.dm_device_tasks
_hist = t.dm_task_history


# --- who may manage the tasks of a device type ------------------------------------------------------


async def check_task_access(rt: Runtime, principal: Principal, dtid: str, access: Access) -> dict[str, Any]:
    """Tasks of ``dtid`` are managed by its device-management administrators (``permissions.
    check_devicemgmt_type``); returns the device type row (404 when unknown)."""
    dt = await device_type_row(rt, dtid)
    await check_devicemgmt_type(rt, principal, dt, access)
    return dt


# --- creating a task -------------------------------------------------------------------------------


def _bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed.field(field, message)


def coerce_value(value: Any, value_type: str, field: str = "taskParameters.value") -> Any:
    """A value for a property of ``value_type``: JSON of that type, or a string that spells one (the
    SDK's ``TaskParameters.value`` is a string). Anything else is 400."""
    kind = value_type.lower()
    if kind == "string":
        if isinstance(value, str):
            return value
        raise _bad(field, "Text field only")
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _bad(field, "Boolean field only")
    if kind in ("integer", "long"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise _bad(field, "Numeric field only")
    if kind in ("double", "float", "number"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad(field, "Numeric field only")
    return value


def _int_param(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad(field, "Numeric field only")
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if not isinstance(value, int):
        raise _bad(field, "Numeric field only")
    return value


async def _target_dids(rt: Runtime, body: TaskRequest, dtid: str) -> list[str]:
    """The devices of the task: ``dids`` (all of type ``dtid``) or those ``filter`` matches."""
    if body.dids is not None and body.filter:
        raise _bad("dids", "Give either dids or filter, not both")
    if body.dids is not None:
        dids = body.dids
        if isinstance(dids, str):
            dids = [d for d in dids.split(",") if d.strip()]
        if not isinstance(dids, list) or not dids or not all(isinstance(d, str) and d for d in dids):
            raise _bad("dids", "A non-empty list of device ids")
        if len(dids) > MAX_DEVICES:
            raise _bad("dids", f"Maximum length {MAX_DEVICES}")
        wanted = list(dict.fromkeys(d.strip() for d in dids))
        found: dict[str, str] = {}
        async with rt.db.read() as conn:
            for start in range(0, len(wanted), INSERT_CHUNK):
                chunk = wanted[start : start + INSERT_CHUNK]
                rows = await conn.execute(
                    select(t.devices.c.id, t.devices.c.dtid).where(t.devices.c.id.in_(chunk))
                )
                found.update({r.id: r.dtid for r in rows})
        missing = [d for d in wanted if d not in found]
        if missing:
            raise NotFound(f"Device {missing[0]} not found")
        others = sorted({found[d] for d in wanted} - {dtid})
        if others:
            raise _bad("dids", f"All devices must be of device type {dtid} (found {', '.join(others)})")
        return wanted
    if body.filter:
        matched = await dm_properties.dids_matching(rt, dtid, body.filter)
        if not matched:
            raise _bad("filter", "No device of this device type matches the filter")
        return matched
    raise _bad("dids", "Required parameter (dids or filter)")


async def _validated_property(
    rt: Runtime, body: TaskRequest, dtid: str
) -> tuple[str, str, Any, dm_manifest.PropertySpec]:
    """(taskType, property, value to write or None, its manifest entry) or 400 naming the field."""
    task_type = (body.taskType or "").strip().upper()
    if task_type not in TASK_TYPES:
        raise _bad("taskType", "One of R, W, E")
    path = (body.property or "").strip()
    if not path:
        raise _bad("property", "Missing path")
    spec = await dm_manifest.property_spec(rt, dtid, path)
    if spec is None:
        # Device paths exist only while the type has device properties enabled (S89).
        raise _bad("property", f"Unknown property path {path}")
    if task_type not in spec.operations:
        raise _bad("property", f"Operation {task_type} is not allowed on {path}")
    if spec.kind == "server" and task_type != "W":
        raise _bad("taskType", "Server properties are only written by tasks")
    value = None
    if task_type == "W":
        params = body.taskParameters
        if params is None or params.value is None:
            raise _bad("taskParameters.value", "Required parameter")
        value = coerce_value(params.value, spec.value_type)
    return task_type, path, value, spec


async def _update_parameters(rt: Runtime, body: TaskRequest, dtid: str, path: str) -> dict[str, Any] | None:
    params = body.taskParameters
    update = params.update if params is not None else None
    update_id = update.updateId if update is not None else None
    if path == OTA_PROPERTY:
        if not update_id:
            raise _bad("taskParameters.update.updateId", "Required parameter")
        async with rt.db.read() as conn:
            row = (
                (await conn.execute(select(t.dm_updates).where(t.dm_updates.c.id == update_id)))
                .mappings()
                .first()
            )
        if row is None or row["dtid"] != dtid:
            raise NotFound(f"Update {update_id} not found for device type {dtid}")
        return {"updateId": update_id}
    if update_id:
        raise _bad("taskParameters.update", f"Updates go with property {OTA_PROPERTY}")
    if body.needsAcceptance:
        raise _bad("needsAcceptance", "Only firmware update tasks need the owner's acceptance")
    return None


async def create_task(rt: Runtime, principal: Principal, body: TaskRequest) -> dict[str, Any]:
    """S90: validate everything first (nothing is written on bad input), store the task and its
    device rows, then either apply a server-property write at once or schedule the dispatch job."""
    if not body.dtid:
        raise _bad("dtid", "Required parameter")
    dtid = body.dtid
    await check_task_access(rt, principal, dtid, Access.WRITE)
    task_type, path, value, spec = await _validated_property(rt, body, dtid)
    update = await _update_parameters(rt, body, dtid, path) if task_type == "E" else None
    params = body.taskParameters
    expires_after = _int_param(params.expiresAfter if params else None, "taskParameters.expiresAfter")
    if expires_after is not None and not EXPIRES_RANGE[0] <= expires_after <= EXPIRES_RANGE[1]:
        low, high = EXPIRES_RANGE
        raise _bad(
            "taskParameters.expiresAfter",
            f"Minimum value {low}" if expires_after < low else f"Maximum value {high}",
        )
    scheduled_on = _int_param(params.scheduledOn if params else None, "taskParameters.scheduledOn")
    dids = await _target_dids(rt, body, dtid)
    if expires_after is None:
        expires_after = (await dm_config.config_for(rt, dtid)).task_expires_after

    now = rt.clock.now_ms()
    tid = new_id()
    needs_acceptance = bool(body.needsAcceptance) and update is not None
    stored_params: dict[str, Any] = {"expiresAfter": expires_after}
    if task_type == "W":
        stored_params["value"] = value
    if scheduled_on is not None:
        stored_params["scheduledOn"] = scheduled_on
    if update is not None:
        stored_params["update"] = update
    server_write = spec is not None and spec.kind == "server"
    scheduled = scheduled_on is not None and scheduled_on > now and not server_write
    start_at = max(now, scheduled_on or now)
    acceptance = "WAITING" if needs_acceptance else "NOT_REQUIRED"
    async with rt.db.write() as conn:
        await conn.execute(
            insert(_task).values(
                id=tid,
                dtid=dtid,
                filter=body.filter if body.dids is None else None,
                dids=dids if body.dids is not None else None,
                task_type=task_type,
                property=path,
                parameters=stored_params,
                needs_acceptance=needs_acceptance,
                status="SCHEDULED" if scheduled else "REQUESTED",
                expires_on=start_at + expires_after * 1000,
                created_on=now,
                modified_on=now,
            )
        )
        for start in range(0, len(dids), INSERT_CHUNK):
            chunk = dids[start : start + INSERT_CHUNK]
            await conn.execute(
                insert(_dev),
                [
                    {
                        "tid": tid,
                        "did": d,
                        "status": "REQUESTED",
                        "acceptance": acceptance,
                        "attempts": 0,
                        "ts": now,
                    }
                    for d in chunk
                ],
            )
            await conn.execute(
                insert(_hist),
                [{"tid": tid, "did": d, "status": "REQUESTED", "ts": now, "attempts": 0} for d in chunk],
            )
        if not server_write:
            await enqueue(
                rt, DISPATCH_JOB, {"tid": tid}, run_at=start_at, unique_key=f"dm-dispatch:{tid}", conn=conn
            )
    if server_write:
        from thingcloud.areas.devicemgmt.task_lifecycle import apply_server_write  # it imports this module

        await apply_server_write(rt, tid, dids, path.split(".", 1)[1], value)
    else:
        await rt.bus.publish(JOBS_ENQUEUED, {"kind": DISPATCH_JOB})  # the row joined our transaction
    return await get_task(rt, principal, tid)


# --- reading tasks -------------------------------------------------------------------------------------


async def task_row(rt: Runtime, tid: str) -> dict[str, Any]:
    async with rt.db.read() as conn:
        row = (await conn.execute(select(_task).where(_task.c.id == tid))).mappings().first()
    if row is None:
        raise NotFound(f"Task {tid} not found")
    return dict(row)


async def status_counts(conn: AsyncConnection, tids: list[str]) -> dict[str, dict[str, int]]:
    """Per task: ``totalDevices``, ``numCompleted`` (finished in any way), and each outcome."""
    counts: dict[str, dict[str, int]] = {
        tid: {"totalDevices": 0, "numCompleted": 0, "numSucceeded": 0, "numFailed": 0, "numCancelled": 0}
        for tid in tids
    }
    if not tids:
        return counts
    rows = await conn.execute(
        select(_dev.c.tid, _dev.c.status, func.count())
        .where(_dev.c.tid.in_(tids))
        .group_by(_dev.c.tid, _dev.c.status)
    )
    names = {"SUCCEEDED": "numSucceeded", "FAILED": "numFailed", "CANCELLED": "numCancelled"}
    for tid, status, n in rows:
        c = counts[tid]
        c["totalDevices"] += n
        if status in names:
            c[names[status]] += n
            c["numCompleted"] += n
    return counts


def task_wire(row: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "dtid": row["dtid"],
        "dids": row["dids"],
        "filter": row["filter"],
        "taskType": row["task_type"],
        "property": row["property"],
        "taskParameters": row["parameters"],
        "needsAcceptance": row["needs_acceptance"],
        "status": row["status"],
        "statusCounts": counts,
        "createdOn": row["created_on"],
        "modifiedOn": row["modified_on"],
    }


def device_status_wire(row: Any) -> dict[str, Any]:
    return {
        "did": row["did"],
        "status": row["status"],
        "ts": row["ts"],
        "numAttempts": row["attempts"],
        "errorCode": row["error_code"],
        "errorMessage": row["error_message"],
        "acceptanceStatus": row["acceptance"],
        "result": row["result"],
    }


async def get_task(rt: Runtime, principal: Principal, tid: str) -> dict[str, Any]:
    """S91."""
    row = await task_row(rt, tid)
    await check_task_access(rt, principal, row["dtid"], Access.READ)
    async with rt.db.read() as conn:
        counts = await status_counts(conn, [tid])
    return task_wire(row, counts[tid])
