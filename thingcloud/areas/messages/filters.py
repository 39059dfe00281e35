"""The message filter language of ``GET /messages?filter=`` (REFERENCE.md S45), parsed once per query
into a Python predicate (the definition of a match) and an SQL pre-filter over ``messages.data``.

The SQL condition is a *necessary* condition — every row the predicate accepts satisfies it — so the
database skips most non-matching rows of a month-long scan, and the predicate still decides on the
rows that come back: results are the predicate's, whatever the JSON functions of either database do
with odd values (``true`` read as 1 by SQLite, say). Prohibited clauses are left out of the SQL (a
superset still), and every JSON value is type-checked before it is cast, so a field whose type
changed between manifest versions never makes PostgreSQL fail a cast.

Grammar (a subset of Lucene's query syntax, which ARTIK's filters followed)::

    query  := clause*
    clause := ["+" | "-" | "NOT "] (group | term), clauses optionally joined by AND / OR
    group  := "(" query ")"
    term   := field ":" [">" | ">=" | "<" | "<="] value   |   "_exists_" ":" field
    value  := a bare word or a "double-quoted string"

Semantics are Lucene's boolean ones: a message matches a query when every required clause (``+``, or
either side of ``AND``) matches, no prohibited clause (``-``/``NOT``) matches, and — when the query has
no required clause — at least one plain clause matches. So ``a:1 b:2`` means a OR b, and
``+a:1 +b:2`` (or ``a:1 AND b:2``) means both. Field names are dotted manifest paths matched
case-insensitively; values are read as the field's valueClass (numbers, ``true``/``false``, text).
Every error names the problem and its 1-based character position in the filter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, literal, or_

from thingcloud import tables as t
from thingcloud.areas.devicetypes.manifests import Manifest
from thingcloud.errors import ValidationFailed

NUMERIC_CLASSES = frozenset({"Integer", "Long", "Double", "Float"})
COMPARATORS = (">=", "<=", ">", "<")
EXISTS = "_exists_"

Predicate = Callable[[dict[str, Any]], bool]
Condition = ColumnElement[bool] | None  # None: no SQL pre-filter (every row is a candidate)


def field_value(data: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a normalized message, or None."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _fail(problem: str, position: int) -> ValidationFailed:
    return ValidationFailed.field("filter", f"{problem} at position {position + 1}")


@dataclass(frozen=True)
class _Clause:
    occur: str  # "must" | "should" | "not"
    test: Predicate
    condition: Condition = None


class JsonSql:
    """Typed reads of a dotted path of ``messages.data`` in one dialect's JSON functions."""

    def __init__(self, sqlite: bool) -> None:
        self.sqlite = sqlite

    def _type(self, path: str) -> ColumnElement[Any]:
        data: Any = t.messages.c.data
        if self.sqlite:
            where = "$." + ".".join('"' + part.replace('"', '""') + '"' for part in path.split("."))
            return func.json_type(data, bindparam(None, where))
        parts = path.split(".")
        return func.json_typeof(data[parts[0] if len(parts) == 1 else tuple(parts)])

    def _text(self, path: str) -> ColumnElement[Any]:
        parts = tuple(path.split("."))
        data: Any = t.messages.c.data
        return data[parts[0] if len(parts) == 1 else parts].as_string()

    def exists(self, path: str) -> ColumnElement[bool]:
        return self._type(path) != "null"  # a missing path gives NULL: not true either

    def number(self, path: str) -> ColumnElement[Any]:
        """The value as a float when it is a JSON number, else NULL (no cast of a non-number)."""
        parts = tuple(path.split("."))
        data: Any = t.messages.c.data
        kinds = ("integer", "real") if self.sqlite else ("number",)
        value = data[parts[0] if len(parts) == 1 else parts].as_float()
        return case((self._type(path).in_(kinds), value), else_=None)

    def boolean(self, path: str, flag: bool) -> ColumnElement[bool]:
        if self.sqlite:
            return self._type(path) == ("true" if flag else "false")
        return and_(self._type(path) == "boolean", self._text(path) == ("true" if flag else "false"))

    def text(self, path: str, value: str) -> ColumnElement[bool]:
        kind = "text" if self.sqlite else "string"
        return and_(self._type(path) == kind, self._text(path) == literal(value))


def _all(conditions: list[Condition]) -> Condition:
    known = [c for c in conditions if c is not None]
    return None if not known else known[0] if len(known) == 1 else and_(*known)


def _condition(clauses: list[_Clause]) -> Condition:
    """A necessary condition of ``_combine(clauses)``: every required clause, and when there is none,
    one of the plain ones (unknown if one of those is unknown); prohibited clauses are left out."""
    must = [c.condition for c in clauses if c.occur == "must"]
    should = [c.condition for c in clauses if c.occur == "should"]
    if must:
        return _all(must)
    if not should or any(c is None for c in should):
        return None
    known = [c for c in should if c is not None]
    return known[0] if len(known) == 1 else or_(*known)


def _combine(clauses: list[_Clause]) -> Predicate:
    must = [c.test for c in clauses if c.occur == "must"]
    prohibited = [c.test for c in clauses if c.occur == "not"]
    should = [c.test for c in clauses if c.occur == "should"]

    def matches(data: dict[str, Any]) -> bool:
        if not all(test(data) for test in must) or any(test(data) for test in prohibited):
            return False
        return bool(must) or not should or any(test(data) for test in should)

    return matches


class _Parser:
    def __init__(self, text: str, manifest: Manifest, sql: JsonSql) -> None:
        self.text = text
        self.pos = 0
        self.manifest = manifest
        self.sql = sql

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def keyword(self, word: str) -> bool:
        end = self.pos + len(word)
        if self.text[self.pos : end] == word and (end == len(self.text) or self.text[end] in " \t()"):
            self.pos = end
            return True
        return False

    def query(self, depth: int) -> tuple[Predicate, Condition]:
        clauses: list[_Clause] = []
        joined_by_and = False
        while True:
            self.skip_spaces()
            if self.pos >= len(self.text) or self.text[self.pos] == ")":
                break
            if self.keyword("AND") or self.keyword("&&"):
                if not clauses:
                    raise _fail("AND without a left-hand term", self.pos - 3)
                if clauses[-1].occur == "should":
                    clauses[-1] = _Clause("must", clauses[-1].test, clauses[-1].condition)
                joined_by_and = True
                continue
            if self.keyword("OR") or self.keyword("||"):
                if not clauses:
                    raise _fail("OR without a left-hand term", self.pos - 2)
                continue
            occur = "should"
            if self.text[self.pos] in "+-":
                occur = "must" if self.text[self.pos] == "+" else "not"
                self.pos += 1
            elif self.keyword("NOT"):
                occur = "not"
                self.skip_spaces()
            if joined_by_and and occur == "should":
                occur = "must"
            joined_by_and = False
            clauses.append(_Clause(occur, *self.clause(depth)))
        if joined_by_and:
            raise _fail("AND without a right-hand term", self.pos)
        if not clauses:
            raise _fail("Empty expression", self.pos)
        return _combine(clauses), _condition(clauses)

    def clause(self, depth: int) -> tuple[Predicate, Condition]:
        if self.pos >= len(self.text) or self.text[self.pos].isspace():
            raise _fail("Expected a term", self.pos)
        if self.text[self.pos] == "(":
            start = self.pos
            self.pos += 1
            inner = self.query(depth + 1)
            if self.pos >= len(self.text):
                raise _fail("Unclosed '('", start)
            self.pos += 1  # the ")"
            return inner
        return self.term()

    def word(self, what: str) -> tuple[str, int]:
        start = self.pos
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            end = self.text.find('"', self.pos + 1)
            if end < 0:
                raise _fail("Unterminated quoted value", start)
            self.pos = end + 1
            return self.text[start + 1 : end], start
        while self.pos < len(self.text) and self.text[self.pos] not in ' \t():"':
            self.pos += 1
        if self.pos == start:
            raise _fail(f"Expected {what}", start)
        return self.text[start : self.pos], start

    def term(self) -> tuple[Predicate, Condition]:
        name, name_at = self.word("a field name")
        if self.pos >= len(self.text) or self.text[self.pos] != ":":
            raise _fail(f"Expected ':' after '{name}'", self.pos)
        self.pos += 1
        if name.lower() == EXISTS:
            target, target_at = self.word("a field name after _exists_:")
            path = self.resolve(target, target_at)
            return (lambda data: field_value(data, path) is not None), self.sql.exists(path)
        path = self.resolve(name, name_at)
        value_class = self.manifest.find_field(path)
        comparator = next((c for c in COMPARATORS if self.text.startswith(c, self.pos)), None)
        if comparator is not None:
            self.pos += len(comparator)
        raw, raw_at = self.word(f"a value for '{name}'")
        kind = value_class.value_class if value_class is not None else None
        if kind in NUMERIC_CLASSES:
            try:
                number = float(raw)
            except ValueError:
                raise _fail(f"'{raw}' is not a number (field '{name}' is numeric)", raw_at) from None
            return _numeric(path, comparator, number), _numeric_sql(self.sql.number(path), comparator, number)
        if comparator is not None:
            raise _fail(f"'{comparator}' needs a numeric field; '{name}' is {kind}", raw_at)
        if kind == "Boolean":
            if raw.lower() not in ("true", "false"):
                raise _fail(f"'{raw}' is not true or false (field '{name}' is Boolean)", raw_at)
            flag = raw.lower() == "true"
            return (lambda data: field_value(data, path) is flag), self.sql.boolean(path, flag)
        return (lambda data: field_value(data, path) == raw), self.sql.text(path, raw)

    def resolve(self, name: str, at: int) -> str:
        spec = self.manifest.find_field(name)
        if spec is None:
            raise _fail(f"Unknown field '{name}'", at)
        return spec.path


def _numeric(path: str, comparator: str | None, number: float) -> Predicate:
    def matches(data: dict[str, Any]) -> bool:
        value = field_value(data, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if comparator is None:
            return value == number
        if comparator == ">":
            return value > number
        if comparator == ">=":
            return value >= number
        if comparator == "<":
            return value < number
        return value <= number

    return matches


def _numeric_sql(value: ColumnElement[Any], comparator: str | None, number: float) -> ColumnElement[bool]:
    if comparator is None:
        return value == number
    if comparator == ">":
        return value > number
    if comparator == ">=":
        return value >= number
    if comparator == "<":
        return value < number
    return value <= number


def compile_filter(text: str, manifest: Manifest, sqlite: bool = True) -> tuple[Predicate, Condition]:
    """The predicate of a filter over a device's manifest and its SQL pre-filter for the database
    (``sqlite`` or PostgreSQL); 400 (4001) naming the problem and where."""
    parser = _Parser(text, manifest, JsonSql(sqlite))
    predicate, condition = parser.query(0)
    if parser.pos < len(text):
        raise _fail("Unbalanced ')'", parser.pos)
    return predicate, condition


def presence_predicate(field: str, manifest: Manifest, sqlite: bool = True) -> tuple[Predicate, Condition]:
    """``fieldPresence=field``: messages that carry the field (a leaf or a group), and its SQL."""
    spec = manifest.find_field(field)
    if spec is None:
        raise ValidationFailed.field("fieldPresence", f"Unknown field '{field}'")
    path = spec.path
    return (lambda data: field_value(data, path) is not None), JsonSql(sqlite).exists(path)
