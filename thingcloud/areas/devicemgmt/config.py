"""Device-management configuration per device type (REFERENCE.md §3.16 ``DeviceTypesInfo``, S88, S89).

``devicePropertiesEnabled`` (default false), ``pmin`` (s, 60–3600, default 300), ``pmax`` (s,
3600–86400, ≥ pmin, default 21600) and ``taskExpiresAfter`` (s, 60–604800, default 7 days). A type
without a stored row has the defaults; the first ``PUT`` stores one. ``config_for`` is what the task
side reads (expiry of device tasks); ``get_config``/``update_config`` serve the two endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from thingcloud import tables as t
from thingcloud.areas.devicetypes.service import device_type_row
from thingcloud.errors import FieldError, ValidationFailed
from thingcloud.runtime import Runtime

DEFAULT_PMIN = 300
DEFAULT_PMAX = 21600
DEFAULT_TASK_EXPIRES_AFTER = 7 * 24 * 3600

# Wire name → (column, minimum, maximum), seconds.
RANGES: dict[str, tuple[str, int, int]] = {
    "pmin": ("pmin", 60, 3600),
    "pmax": ("pmax", 3600, 86400),
    "taskExpiresAfter": ("task_expires_after", 60, 604800),
}

_cfg = t.dm_configs


@dataclass(frozen=True)
class DmConfig:
    dtid: str
    device_properties_enabled: bool
    pmin: int
    pmax: int
    task_expires_after: int  # seconds


def default_config(dtid: str) -> DmConfig:
    return DmConfig(dtid, False, DEFAULT_PMIN, DEFAULT_PMAX, DEFAULT_TASK_EXPIRES_AFTER)


def _from_row(row: Any) -> DmConfig:
    return DmConfig(
        row["dtid"],
        bool(row["device_properties_enabled"]),
        row["pmin"],
        row["pmax"],
        row["task_expires_after"],
    )


async def _stored(rt: Runtime, dtid: str) -> dict[str, Any] | None:
    async with rt.db.read() as conn:
        row = (await conn.execute(select(_cfg).where(_cfg.c.dtid == dtid))).mappings().first()
    return dict(row) if row is not None else None


async def config_for(rt: Runtime, dtid: str) -> DmConfig:
    """The DM configuration of ``dtid``: the stored one, or the defaults when none is stored."""
    row = await _stored(rt, dtid)
    return _from_row(row) if row is not None else default_config(dtid)


def to_wire(config: DmConfig, created_on: int, modified_on: int) -> dict[str, Any]:
    """The ``DeviceTypesInfo`` object (every field the SDK model declares)."""
    return {
        "dtid": config.dtid,
        "devicePropertiesEnabled": config.device_properties_enabled,
        "pmin": config.pmin,
        "pmax": config.pmax,
        "taskExpiresAfter": config.task_expires_after,
        "createdOn": created_on,
        "modifiedOn": modified_on,
    }


async def get_config(rt: Runtime, dtid: str) -> dict[str, Any]:
    """S88. Without a stored configuration the defaults are dated from the device type's creation."""
    row = await _stored(rt, dtid)
    if row is not None:
        return to_wire(_from_row(row), row["created_on"], row["modified_on"])
    created = (await device_type_row(rt, dtid))["created_on"]
    return to_wire(default_config(dtid), created, created)


def _validated(current: DmConfig, changes: dict[str, Any]) -> DmConfig:
    """The configuration after ``changes`` (wire names; ``None`` = unchanged), or 400 naming every
    bad field. ``pmax ≥ pmin`` is checked on the result, so either may move alone."""
    problems: list[FieldError] = []
    enabled_now = current.device_properties_enabled
    values = {
        "pmin": current.pmin,
        "pmax": current.pmax,
        "task_expires_after": current.task_expires_after,
    }
    enabled = changes.get("devicePropertiesEnabled")
    if enabled is not None:
        if not isinstance(enabled, bool):
            problems.append(FieldError("devicePropertiesEnabled", ("Boolean field only",)))
        else:
            enabled_now = enabled
    for name, (column, low, high) in RANGES.items():
        value = changes.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(FieldError(name, ("Numeric field only",)))
        elif value < low:
            problems.append(FieldError(name, (f"Minimum value {low}",)))
        elif value > high:
            problems.append(FieldError(name, (f"Maximum value {high}",)))
        else:
            values[column] = value
    if not problems and values["pmax"] < values["pmin"]:
        problems.append(FieldError("pmax", ("Must be greater than or equal to pmin",)))
    if problems:
        raise ValidationFailed("Validation Error", problems)
    return DmConfig(current.dtid, enabled_now, **values)


async def update_config(rt: Runtime, dtid: str, changes: dict[str, Any]) -> dict[str, Any]:
    """S89: change any of the four settings; out-of-range values change nothing (400)."""
    dt = await device_type_row(rt, dtid)
    now = rt.clock.now_ms()
    async with rt.db.write() as conn:
        found = (
            (await conn.execute(select(_cfg).where(_cfg.c.dtid == dtid).with_for_update())).mappings().first()
        )
        current = _from_row(found) if found is not None else default_config(dtid)
        config = _validated(current, changes)
        values = {
            "device_properties_enabled": config.device_properties_enabled,
            "pmin": config.pmin,
            "pmax": config.pmax,
            "task_expires_after": config.task_expires_after,
            "modified_on": now,
        }
        created = found["created_on"] if found is not None else dt["created_on"]
        stmt = rt.db.upsert(_cfg).values(dtid=dtid, created_on=created, **values)
        await conn.execute(stmt.on_conflict_do_update(index_elements=[_cfg.c.dtid], set_=values))
    return to_wire(config, created, now)
