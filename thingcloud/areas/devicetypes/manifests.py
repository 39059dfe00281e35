"""Simple Manifests: validate an authored manifest once, then normalize messages and actions against it.

A device type's manifest (REFERENCE.md §3.6.1) lists typed ``fields`` (possibly grouped through
``children``) and ``actions`` with typed ``parameters``. ``compile_manifest`` checks such a document,
reporting every bad element with its JSON path, and turns it into an immutable ``Manifest`` whose
lookup tables are built once, so the hot ingest path (``Manifest.normalize``, §3.6.3) only walks the
message. The same object renders the API properties view (§3.6.2), validates Actions (§3.6.3 #5) and
lists the dotted field paths that rules and message queries refer to. Pure Python: no web framework,
no database; the manifest cache decides how long a compiled manifest lives.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from thingcloud.areas.devicetypes.valueclasses import (
    BOOLEAN_ONLY,
    COERCERS,
    NUMERIC_ONLY,
    OBJECT_EXPECTED,
    TEXT_ONLY,
    VALUE_CLASSES,
    WHOLE_ONLY,
    ValueInvalid,
    group_coercer,
    value_class_of,
)
from thingcloud.errors import FieldError, ValidationFailed

# Re-exported: callers import the message texts and value classes from here.
__all__ = [
    "BOOLEAN_ONLY",
    "EMPTY_MANIFEST",
    "INVALID_MANIFEST",
    "NUMERIC_ONLY",
    "OBJECT_EXPECTED",
    "TEXT_ONLY",
    "VALUE_CLASSES",
    "WHOLE_ONLY",
    "ActionSpec",
    "FieldSpec",
    "Manifest",
    "Members",
    "compile_manifest",
]

JsonObject = dict[str, Any]

_GROUP_KEYS: Final = ("children", "fields", "parameters")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_\-]+")
MAX_DEPTH: Final = 8

INVALID_MANIFEST: Final = "The manifest content is invalid"
EMPTY_MANIFEST: Final = "The manifest content cannot be empty"
REQUIRED = "Required parameter"
ARRAY_EXPECTED = "Array expected"
NOTHING_MATCHES = "No field of the message matches the manifest"


# ---------------------------------------------------------------- compiled model


@dataclass(frozen=True, slots=True)
class Members:
    """The fields (or parameters) of one level, in manifest order, with exact and lowercase lookups."""

    specs: tuple[FieldSpec, ...]
    by_name: Mapping[str, FieldSpec] = field(repr=False, compare=False)
    by_lower: Mapping[str, FieldSpec] = field(repr=False, compare=False)

    @classmethod
    def of(cls, specs: list[FieldSpec]) -> Members:  # names are unique case-insensitively (compile checks)
        by_name = MappingProxyType({s.name: s for s in specs})
        return cls(tuple(specs), by_name, MappingProxyType({s.name.lower(): s for s in specs}))

    def view(self) -> JsonObject:
        return {spec.name: spec.view() for spec in self.specs}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A manifest field or action parameter: a typed leaf, or a group (``members`` set, no valueClass)."""

    name: str
    path: str  # dotted path from the top level, e.g. "location.x"
    value_class: str | None
    is_collection: bool = False
    unit: str = ""
    description: str = ""
    type: str | None = None
    members: Members | None = None
    coerce: Callable[[object], object] = field(default=group_coercer, repr=False, compare=False)

    @property
    def is_group(self) -> bool:
        return self.members is not None

    def view(self) -> JsonObject:
        if self.members is not None:
            return self.members.view()
        return {
            "type": self.value_class,
            "unit": self.unit,
            "isCollection": self.is_collection,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """A manifest action and its (possibly compound) parameters."""

    name: str
    description: str
    parameters: Members

    def view(self) -> JsonObject:
        return {"description": self.description, "parameters": self.parameters.view()}


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _normalize_members(
    members: Members, data: Mapping[str, Any], path: str, errors: list[FieldError]
) -> JsonObject:
    """Keep known keys (exact name first, then case-insensitive), coerce leaves, recurse into groups.

    The hot path of ingest: one dict lookup and one coercion per key; paths are only built on errors.
    """
    out: JsonObject = {}
    by_name, by_lower = members.by_name, members.by_lower
    for key, value in data.items():
        spec = by_name.get(key)
        if spec is None:
            spec = by_lower.get(key.lower())
            if spec is None or spec.name in data:  # unknown, or the exactly-named key wins
                continue
            if spec.name in out:
                errors.append(FieldError(_join(path, key), (f"Duplicate field '{spec.name}'",)))
                continue
        if value is None:  # null means absent (REFERENCE §0.2)
            continue
        if spec.members is None and not spec.is_collection:
            try:
                out[spec.name] = spec.coerce(value)
            except ValueInvalid as exc:
                errors.append(FieldError(_join(path, key), (str(exc),)))
        elif spec.members is not None:
            if not isinstance(value, dict):
                errors.append(FieldError(_join(path, key), (OBJECT_EXPECTED,)))
            elif inner := _normalize_members(spec.members, value, _join(path, key), errors):
                out[spec.name] = inner
        elif not isinstance(value, list):
            errors.append(FieldError(_join(path, key), (ARRAY_EXPECTED,)))
        else:
            items: list[object] = []
            coerce = spec.coerce
            for index, item in enumerate(value):
                try:
                    items.append(coerce(item))
                except ValueInvalid as exc:
                    errors.append(FieldError(f"{_join(path, key)}.{index}", (str(exc),)))
            out[spec.name] = items
    return out


@dataclass(frozen=True, slots=True, eq=False)
class Manifest:
    """One compiled manifest version. Build it with ``compile_manifest``; it never changes afterwards."""

    version: int
    fields: Members
    actions: tuple[ActionSpec, ...]
    _actions_by_name: Mapping[str, ActionSpec] = field(repr=False)
    _actions_by_lower: Mapping[str, ActionSpec] = field(repr=False)
    _paths: Mapping[str, FieldSpec] = field(repr=False)
    _paths_lower: Mapping[str, FieldSpec] = field(repr=False)
    _view: JsonObject = field(repr=False)

    def properties_view(self) -> JsonObject:
        """``{"version", "properties": {"fields": {...}, "actions": {...}}}`` — the ``data`` of S30/S31."""
        return copy.deepcopy(self._view)

    def field_paths(self) -> dict[str, str]:
        """Dotted path of every leaf field → its valueClass, in manifest order (groups excluded)."""
        return {p: s.value_class for p, s in self._paths.items() if s.value_class is not None}

    def find_field(self, path: str) -> FieldSpec | None:
        """The field (leaf or group) at a dotted path; case-insensitive (filters lowercase names)."""
        return self._paths.get(path) or self._paths_lower.get(path.lower())

    def normalize(self, data: object, path: str = "data") -> JsonObject:
        """The normalized ``data`` of a message (§3.6.3), or ValidationFailed listing every bad value."""
        if not isinstance(data, dict):
            raise ValidationFailed(None, [FieldError(path or "data", (OBJECT_EXPECTED,))])
        errors: list[FieldError] = []
        out = _normalize_members(self.fields, data, path, errors)
        if errors:
            raise ValidationFailed(None, errors)
        if not out:
            raise ValidationFailed(None, [FieldError(path or "data", (NOTHING_MATCHES,))])
        return out

    def action(self, name: object, path: str = "name") -> ActionSpec:
        """The action called ``name`` (exact, else case-insensitive); ValidationFailed at ``path`` if none."""
        if not isinstance(name, str) or not name:
            raise ValidationFailed(None, [FieldError(path, (REQUIRED,))])
        spec = self._actions_by_name.get(name) or self._actions_by_lower.get(name.lower())
        if spec is None:
            raise ValidationFailed(None, [FieldError(path, (f"Unknown action '{name}'",))])
        return spec

    def normalize_action(self, name: object, parameters: object, path: str = "") -> JsonObject:
        """``{"name", "parameters"}`` with the manifest's spelling and coerced parameters.

        ``path`` locates the action object (``data.actions.0``); unknown parameters are dropped, missing
        ones are allowed (a manifest does not say which are required).
        """
        errors: list[FieldError] = []
        out = self._normalize_action(name, parameters, path, errors)
        if errors or out is None:
            raise ValidationFailed(None, errors)
        return out

    def normalize_actions(self, data: object, path: str = "data") -> JsonObject:
        """The ``data`` of an Action message: exactly ``{"actions": [{"name", "parameters"}, ...]}``."""
        if not isinstance(data, dict):
            raise ValidationFailed(None, [FieldError(path or "data", (OBJECT_EXPECTED,))])
        errors = [
            FieldError(_join(path, k), ("Only 'actions' is allowed here",)) for k in data if k != "actions"
        ]
        where = _join(path, "actions")
        listed = data.get("actions")
        actions: list[JsonObject] = []
        if listed is None:
            errors.append(FieldError(where, (REQUIRED,)))
        elif not isinstance(listed, list):
            errors.append(FieldError(where, (ARRAY_EXPECTED,)))
        elif not listed:
            errors.append(FieldError(where, ("At least one action is required",)))
        else:
            for index, item in enumerate(listed):
                at = f"{where}.{index}"
                if not isinstance(item, dict):
                    errors.append(FieldError(at, (OBJECT_EXPECTED,)))
                elif (
                    done := self._normalize_action(item.get("name"), item.get("parameters"), at, errors)
                ) is not None:
                    actions.append(done)
        if errors:
            raise ValidationFailed(None, errors)
        return {"actions": actions}

    def _normalize_action(
        self, name: object, parameters: object, path: str, errors: list[FieldError]
    ) -> JsonObject | None:
        try:
            spec = self.action(name, _join(path, "name"))
        except ValidationFailed as exc:
            errors.extend(exc.errors)
            return None
        where = _join(path, "parameters")
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict):
            errors.append(FieldError(where, (OBJECT_EXPECTED,)))
            return None
        before = len(errors)
        normalized = _normalize_members(spec.parameters, parameters, where, errors)
        return {"name": spec.name, "parameters": normalized} if len(errors) == before else None


# ---------------------------------------------------------------- compilation


class _Compiler:
    """Walks an authored document once, collecting every error with its JSON path."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, (message,)))

    def text(self, node: Mapping[str, Any], key: str, path: str) -> str:
        value = node.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            self.fail(_join(path, key), TEXT_ONLY)
            return ""
        return value

    def name(self, node: Mapping[str, Any], path: str, seen: set[str]) -> str | None:
        name = node.get("name")
        where = _join(path, "name")
        if name is None or name == "":
            self.fail(where, REQUIRED)
        elif not isinstance(name, str):
            self.fail(where, TEXT_ONLY)
        elif not _NAME_RE.fullmatch(name):
            self.fail(where, f"Invalid name '{name}': use letters, digits, '_' or '-'")
        elif name.lower() in seen:  # names differing only by case would make filters ambiguous
            self.fail(where, f"Duplicate name '{name}'")
        else:
            seen.add(name.lower())
            return name
        return None

    def members(self, items: object, path: str, parent: str, depth: int) -> Members:
        if not isinstance(items, list):
            self.fail(path, ARRAY_EXPECTED)
            return Members.of([])
        seen: set[str] = set()
        specs = [self.member(item, f"{path}.{i}", parent, depth, seen) for i, item in enumerate(items)]
        return Members.of([spec for spec in specs if spec is not None])

    def member(self, node: object, path: str, parent: str, depth: int, seen: set[str]) -> FieldSpec | None:
        if not isinstance(node, dict):
            self.fail(path, OBJECT_EXPECTED)
            return None
        name = self.name(node, path, seen)
        unit, description = self.text(node, "unit", path), self.text(node, "description", path)
        kind = self.text(node, "type", path) or None
        is_collection = node.get("isCollection")
        if is_collection is not None and not isinstance(is_collection, bool):
            self.fail(_join(path, "isCollection"), BOOLEAN_ONLY)
        dotted = _join(parent, name or "?")
        group_keys = [k for k in _GROUP_KEYS if node.get(k) is not None]
        if group_keys:
            for extra in group_keys[1:]:
                self.fail(_join(path, extra), f"Use only one of {', '.join(_GROUP_KEYS)}")
            children_path = _join(path, group_keys[0])
            if depth >= MAX_DEPTH:
                self.fail(children_path, f"Groups nest too deeply (max {MAX_DEPTH} levels)")
                return None
            if is_collection is True:
                self.fail(_join(path, "isCollection"), "A group cannot be a collection")
            children = node[group_keys[0]]
            if isinstance(children, list) and not children:
                self.fail(children_path, "A group needs at least one child")
            members = self.members(children, children_path, dotted, depth + 1)
            if name is None:
                return None
            return FieldSpec(name, dotted, None, False, unit, description, kind, members)
        raw_class = node.get("valueClass")
        value_class = value_class_of(raw_class)
        if raw_class is None or raw_class == "":
            self.fail(_join(path, "valueClass"), REQUIRED)
        elif value_class is None:
            self.fail(_join(path, "valueClass"), f"Unknown valueClass '{raw_class}'")
        if name is None or value_class is None:
            return None
        coerce = COERCERS[value_class]
        return FieldSpec(
            name, dotted, value_class, is_collection is True, unit, description, kind, None, coerce
        )

    def action(self, node: object, path: str, seen: set[str]) -> ActionSpec | None:
        if not isinstance(node, dict):
            self.fail(path, OBJECT_EXPECTED)
            return None
        name = self.name(node, path, seen)
        description = self.text(node, "description", path)
        raw = node.get("parameters")
        parameters = Members.of([]) if raw is None else self.members(raw, _join(path, "parameters"), "", 1)
        return None if name is None else ActionSpec(name, description, parameters)


def _walk(members: Members, into: dict[str, FieldSpec]) -> None:
    for spec in members.specs:
        into[spec.path] = spec
        if spec.members is not None:
            _walk(spec.members, into)


def _is_empty(doc: object) -> bool:
    return doc is None or doc == {} or (isinstance(doc, str | bytes) and not doc.strip())


def compile_manifest(doc: object, version: int = 1) -> Manifest:
    """Validate a Simple Manifest (dict or JSON text) and compile it; ValidationFailed lists every error."""
    if _is_empty(doc):
        raise ValidationFailed(EMPTY_MANIFEST, [FieldError("manifest", (EMPTY_MANIFEST,))])
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            raise ValidationFailed(
                INVALID_MANIFEST, [FieldError("manifest", (f"Invalid JSON: {exc}",))]
            ) from None
        if _is_empty(doc):
            raise ValidationFailed(EMPTY_MANIFEST, [FieldError("manifest", (EMPTY_MANIFEST,))])
    if not isinstance(doc, dict):
        raise ValidationFailed(INVALID_MANIFEST, [FieldError("manifest", (OBJECT_EXPECTED,))])
    compiler = _Compiler()
    message_format = doc.get("messageFormat")
    if message_format is not None and (
        not isinstance(message_format, str) or message_format.lower() != "json"
    ):
        compiler.fail("messageFormat", "Only the 'json' messageFormat is supported")
    raw_fields, raw_actions = doc.get("fields"), doc.get("actions")
    fields = Members.of([]) if raw_fields is None else compiler.members(raw_fields, "fields", "", 1)
    actions: list[ActionSpec] = []
    if raw_actions is not None and not isinstance(raw_actions, list):
        compiler.fail("actions", ARRAY_EXPECTED)
    elif raw_actions:
        seen: set[str] = set()
        for index, node in enumerate(raw_actions):
            if (action := compiler.action(node, f"actions.{index}", seen)) is not None:
                actions.append(action)
    if not raw_fields and not raw_actions:
        compiler.fail("fields", "A manifest needs at least one field or action")
    if compiler.errors:
        raise ValidationFailed(INVALID_MANIFEST, compiler.errors)
    paths: dict[str, FieldSpec] = {}
    _walk(fields, paths)
    view = {"fields": fields.view(), "actions": {a.name: a.view() for a in actions}}
    return Manifest(
        version=version,
        fields=fields,
        actions=tuple(actions),
        _actions_by_name=MappingProxyType({a.name: a for a in actions}),
        _actions_by_lower=MappingProxyType({a.name.lower(): a for a in actions}),
        _paths=MappingProxyType(paths),
        _paths_lower=MappingProxyType({p.lower(): spec for p, spec in paths.items()}),
        _view={"version": version, "properties": view},
    )
