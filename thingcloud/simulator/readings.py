"""Simulated sensor readings that fit a device type's manifest, and the state changes actions cause.

``DeviceModel.from_properties`` reads the API view of a manifest (REFERENCE.md §3.6.2: fields as a
map keyed by name, groups as nested maps) and builds one generator per leaf field. Numeric fields walk
randomly inside a plausible range chosen from the field's unit and name (the API view carries no
ranges, so a ``temperature`` in ``Cel`` stays within -10..40 and a ``humidity`` within 0..100), pulled
back towards their centre so they wander rather than stick to a bound; counters (steps, energy) only
grow; booleans flip now and then; strings come from a small set that suits the field's name;
collections hold one to three such values; groups nest. ``DeviceModel.apply`` carries out the
actions a device receives: ``setOn``/``setOff``/``toggle`` on a boolean field, ``set<Field>`` with a
value for that field; anything else is reported as not simulated. Pure Python, no I/O: seeded
``random.Random`` instances make every sequence reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JsonObject = dict[str, Any]

# Hard limits of the value classes (valueclasses.py refuses anything outside them).
INT_LIMITS = {"Integer": (-(2**31), 2**31 - 1), "Long": (-(2**63), 2**63 - 1)}
FLOAT_MAX = 3.4028234663852886e38

# Plausible (low, high) ranges by unit symbol, lower-cased (JScience/UCUM symbols and common spellings).
UNIT_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(("cel", "c", "°c", "degc", "celsius", "[degc]"), (-10.0, 40.0)),
    **dict.fromkeys(("f", "°f", "degf", "[degf]", "fahrenheit"), (14.0, 104.0)),
    "k": (263.0, 313.0),
    **dict.fromkeys(("%", "percent", "pct"), (0.0, 100.0)),
    "hpa": (950.0, 1050.0),
    "mbar": (950.0, 1050.0),
    "kpa": (95.0, 105.0),
    "pa": (95_000.0, 105_000.0),
    **dict.fromkeys(("b/min", "bpm", "/min", "beats/min"), (50.0, 180.0)),
    **dict.fromkeys(("lx", "lux"), (0.0, 2000.0)),
    "ppm": (400.0, 2000.0),
    **dict.fromkeys(("m/s", "m/s2", "m/s^2"), (0.0, 30.0)),
    **dict.fromkeys(("km/h", "kmh"), (0.0, 120.0)),
    "v": (0.0, 240.0),
    "mv": (0.0, 5000.0),
    "a": (0.0, 16.0),
    "ma": (0.0, 2000.0),
    "w": (0.0, 3000.0),
    "kw": (0.0, 10.0),
    "db": (30.0, 100.0),
    **dict.fromkeys(("deg", "°", "degree", "degrees"), (0.0, 360.0)),
    "rad": (0.0, 2 * math.pi),
    "m": (0.0, 100.0),
    "km": (0.0, 1000.0),
    "kg": (40.0, 120.0),
    "g": (0.0, 1000.0),
    "hz": (0.0, 100.0),
    "rpm": (0.0, 6000.0),
}
# By a word in the field's name when the unit says nothing (checked in this order).
NAME_RANGES: list[tuple[tuple[str, ...], tuple[float, float]]] = [
    (("latitude", "lat"), (-90.0, 90.0)),
    (("longitude", "lon", "lng"), (-180.0, 180.0)),
    (("humidity", "battery", "level", "percent", "brightness", "intensity", "dim"), (0.0, 100.0)),
    (("temperature", "temp"), (-10.0, 40.0)),
    (("pressure",), (950.0, 1050.0)),
    (("heartrate", "pulse", "bpm"), (50.0, 180.0)),
    (("co2",), (400.0, 2000.0)),
    (("speed",), (0.0, 30.0)),
    (("voltage",), (0.0, 240.0)),
    (("power",), (0.0, 3000.0)),
    (("angle", "heading", "direction", "bearing", "hue"), (0.0, 360.0)),
    (("red", "green", "blue"), (0.0, 255.0)),
    (("x", "y", "z"), (-1.0, 1.0)),
]
DEFAULT_RANGE = (0.0, 100.0)
# Cumulative quantities: they only grow.
COUNTER_WORDS = ("count", "steps", "total", "energy", "odometer", "distance", "kwh", "wh")
COUNTER_UNITS = ("kwh", "wh", "j", "kj", "cal", "kcal", "steps")

STRING_CHOICES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("lock",), ("locked", "unlocked")),
    (("door", "window", "valve"), ("open", "closed")),
    (("color", "colour"), ("red", "green", "blue", "white", "warm white")),
    (("mode",), ("auto", "eco", "comfort", "off")),
    (("state", "status"), ("idle", "running", "paused", "error")),
    (("level", "severity"), ("low", "medium", "high")),
    (("activity",), ("walking", "running", "cycling", "resting")),
]
DEFAULT_STRINGS = ("alpha", "bravo", "charlie", "delta", "echo")
BOOLEAN_SETTER_WORDS = ("on", "state", "power", "switch", "enabled", "active")
NUMERIC_CLASSES = ("Integer", "Long", "Double", "Float")


def _words(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def numeric_range(name: str, unit: str, value_class: str) -> tuple[float, float]:
    """The plausible range of a numeric field, from its unit, else its name, else 0..100."""
    low, high = UNIT_RANGES.get(unit.strip().lower()) or _by_name(name) or DEFAULT_RANGE
    if value_class in INT_LIMITS:
        hard_low, hard_high = INT_LIMITS[value_class]
        low, high = max(low, hard_low), min(high, hard_high)
    return low, high


def _by_name(name: str) -> tuple[float, float] | None:
    words = _words(name)
    for keys, bounds in NAME_RANGES:
        if words in keys or any(len(key) > 2 and key in words for key in keys):
            return bounds
    return None


def is_counter(name: str, unit: str) -> bool:
    words = _words(name)
    return unit.strip().lower() in COUNTER_UNITS or any(word in words for word in COUNTER_WORDS)


@dataclass
class FieldSim:
    """One leaf field of the manifest and its current simulated value."""

    path: str  # dotted, e.g. "location.x"
    name: str
    value_class: str
    unit: str = ""
    is_collection: bool = False
    low: float = 0.0
    high: float = 0.0
    counter: bool = False
    choices: tuple[str, ...] = ()
    value: Any = None

    @classmethod
    def of(cls, path: str, name: str, spec: Mapping[str, Any], rng: random.Random) -> FieldSim:
        value_class = str(spec.get("type") or "String")
        unit = str(spec.get("unit") or "")
        sim = cls(path, name, value_class, unit, bool(spec.get("isCollection")))
        if value_class in NUMERIC_CLASSES:
            sim.low, sim.high = numeric_range(name, unit, value_class)
            sim.counter = is_counter(name, unit)
            start = sim.low if sim.counter else rng.uniform(sim.low, sim.high)
            sim.value = sim._fit(start)
        elif value_class == "Boolean":
            sim.value = rng.random() < 0.5
        else:
            words = _words(name)
            sim.choices = next((c for keys, c in STRING_CHOICES if any(k in words for k in keys)), ())
            sim.choices = sim.choices or DEFAULT_STRINGS
            sim.value = rng.choice(sim.choices)
        return sim

    def _fit(self, number: float) -> int | float:
        """``number`` clamped to the field's range, as its value class requires."""
        number = min(max(number, self.low), self.high)
        if self.value_class in INT_LIMITS:
            return round(number)
        return round(number, 2)

    def advance(self, rng: random.Random) -> None:
        """One step of the walk: numbers move by a few percent of their range (mean-reverting),
        counters grow, booleans flip with probability 0.1, strings change with probability 0.1."""
        if self.value_class in NUMERIC_CLASSES:
            span = self.high - self.low
            if self.counter:
                step = max(1.0, span * 0.01) if self.value_class in INT_LIMITS else span * 0.005
                self.value = self._grow(self.value + rng.uniform(0, step))
                return
            centre = (self.low + self.high) / 2
            pull = (centre - self.value) * 0.05
            self.value = self._fit(self.value + pull + rng.gauss(0, span * 0.02))
        elif self.value_class == "Boolean":
            if rng.random() < 0.1:
                self.value = not self.value
        elif rng.random() < 0.1:
            self.value = rng.choice(self.choices)

    def _grow(self, number: float) -> int | float:
        limit = INT_LIMITS.get(self.value_class, (0, FLOAT_MAX))[1]
        number = min(number, limit)
        return round(number) if self.value_class in INT_LIMITS else round(number, 3)

    def reading(self, rng: random.Random) -> Any:
        if not self.is_collection:
            return self.value
        # A collection: the current value and one or two neighbours along the same walk.
        values = [self.value]
        for _ in range(rng.randint(0, 2)):
            self.advance(rng)
            values.append(self.value)
        return values

    def set(self, value: Any) -> Any:
        """Set the simulated state from an action parameter; returns the value now held.
        Raises ValueError when ``value`` does not fit the field's value class."""
        if self.value_class in NUMERIC_CLASSES:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError(f"{self.path} needs a number")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"{self.path} needs a number") from None
            if not math.isfinite(number):
                raise ValueError(f"{self.path} needs a finite number")
            self.value = self._fit(number)
        elif self.value_class == "Boolean":
            if not isinstance(value, bool):
                raise ValueError(f"{self.path} needs true or false")
            self.value = value
        else:
            self.value = str(value)
        return self.value


@dataclass
class Applied:
    """What one received action did: the fields it changed (empty when it is not simulated)."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class DeviceModel:
    """The simulated state of one device: every leaf field of the manifest, and the random source."""

    fields: list[FieldSim]
    rng: random.Random

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any], seed: int | str | None = None) -> DeviceModel:
        """From ``properties`` of ``GET /devicetypes/{dtid}/manifests/latest/properties``."""
        rng = random.Random(seed)
        leaves: list[FieldSim] = []
        _collect(properties.get("fields") or {}, "", rng, leaves)
        return cls(leaves, rng)

    def reading(self) -> JsonObject:
        """The current values as a message's ``data`` (groups nested), then one step of every walk."""
        data: JsonObject = {}
        for sim in self.fields:
            node = data
            *groups, leaf = sim.path.split(".")
            for group in groups:
                node = node.setdefault(group, {})
            node[leaf] = sim.reading(self.rng)
        for sim in self.fields:
            sim.advance(self.rng)
        return data

    def find(self, words: str) -> FieldSim | None:
        """The field whose name (or dotted path without dots) matches ``words`` case-insensitively."""
        wanted = _words(words)
        for sim in self.fields:
            if _words(sim.name) == wanted or _words(sim.path.replace(".", "")) == wanted:
                return sim
        return None

    def _switch(self) -> FieldSim | None:
        booleans = [sim for sim in self.fields if sim.value_class == "Boolean" and not sim.is_collection]
        for word in BOOLEAN_SETTER_WORDS:
            for sim in booleans:
                if _words(sim.name) == word:
                    return sim
        return booleans[0] if len(booleans) == 1 else None

    def apply(self, action: Mapping[str, Any]) -> Applied:
        """Carry out one action ``{"name", "parameters"}`` on the simulated state."""
        name = str(action.get("name") or "")
        parameters = action.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        applied = Applied(name)
        lowered = name.lower()
        if lowered in ("seton", "setoff", "toggle", "turnon", "turnoff"):
            switch = self._switch()
            if switch is None:
                applied.note = "no on/off field to switch"
            else:
                new = (not switch.value) if lowered == "toggle" else lowered in ("seton", "turnon")
                applied.changes[switch.path] = switch.set(new)
            return applied
        if lowered.startswith("set") and len(name) > 3:
            target = self.find(name[3:])
            if target is None:
                applied.note = f"no field named like {name[3:]!r}"
                return applied
            value = _setter_value(target, parameters)
            if value is None:
                applied.note = f"no value for {target.path} in the parameters"
                return applied
            try:
                applied.changes[target.path] = target.set(value)
            except ValueError as exc:
                applied.note = str(exc)
            return applied
        # Parameters named like fields still set them (e.g. setColorRGB {"intensity": 55}).
        for key, value in parameters.items():
            target = self.find(key)
            if target is not None and not isinstance(value, dict):
                try:
                    applied.changes[target.path] = target.set(value)
                except ValueError:
                    continue
        if not applied.changes:
            applied.note = "not simulated"
        return applied


def _setter_value(target: FieldSim, parameters: Mapping[str, Any]) -> Any:
    """The parameter carrying the new value: named like the field, else ``value``, else the only one."""
    for key, value in parameters.items():
        if _words(key) in (_words(target.name), "value"):
            return value
    scalars = [v for v in parameters.values() if not isinstance(v, dict | list)]
    return scalars[0] if len(scalars) == 1 else None


def _collect(fields: Mapping[str, Any], parent: str, rng: random.Random, into: list[FieldSim]) -> None:
    for name, spec in fields.items():
        if not isinstance(spec, Mapping):
            continue
        path = f"{parent}.{name}" if parent else str(name)
        # A leaf carries its valueClass as a string under "type"; a group maps names to members (a
        # member may itself be called "type", hence the isinstance test).
        if isinstance(spec.get("type"), str):
            into.append(FieldSim.of(path, str(name), spec, rng))
        else:
            _collect(spec, path, rng, into)
