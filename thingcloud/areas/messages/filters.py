"""The message filter language of ``GET /messages?filter=`` (REFERENCE.md S45), parsed once per query
and evaluated in Python over the stored rows of one device's date range.

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

from thingcloud.areas.devicetypes.manifests import Manifest
from thingcloud.errors import ValidationFailed

NUMERIC_CLASSES = frozenset({"Integer", "Long", "Double", "Float"})
COMPARATORS = (">=", "<=", ">", "<")
EXISTS = "_exists_"

Predicate = Callable[[dict[str, Any]], bool]


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
    def __init__(self, text: str, manifest: Manifest) -> None:
        self.text = text
        self.pos = 0
        self.manifest = manifest

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def keyword(self, word: str) -> bool:
        end = self.pos + len(word)
        if self.text[self.pos : end] == word and (end == len(self.text) or self.text[end] in " \t()"):
            self.pos = end
            return True
        return False

    def query(self, depth: int) -> Predicate:
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
                    clauses[-1] = _Clause("must", clauses[-1].test)
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
            clauses.append(_Clause(occur, self.clause(depth)))
        if joined_by_and:
            raise _fail("AND without a right-hand term", self.pos)
        if not clauses:
            raise _fail("Empty expression", self.pos)
        return _combine(clauses)

    def clause(self, depth: int) -> Predicate:
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

    def term(self) -> Predicate:
        name, name_at = self.word("a field name")
        if self.pos >= len(self.text) or self.text[self.pos] != ":":
            raise _fail(f"Expected ':' after '{name}'", self.pos)
        self.pos += 1
        if name.lower() == EXISTS:
            target, target_at = self.word("a field name after _exists_:")
            path = self.resolve(target, target_at)
            return lambda data: field_value(data, path) is not None
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
            return _numeric(path, comparator, number)
        if comparator is not None:
            raise _fail(f"'{comparator}' needs a numeric field; '{name}' is {kind}", raw_at)
        if kind == "Boolean":
            if raw.lower() not in ("true", "false"):
                raise _fail(f"'{raw}' is not true or false (field '{name}' is Boolean)", raw_at)
            flag = raw.lower() == "true"
            return lambda data: field_value(data, path) is flag
        return lambda data: field_value(data, path) == raw

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


def compile_filter(text: str, manifest: Manifest) -> Predicate:
    """The predicate of a filter over a device's manifest; 400 (4001) naming the problem and where."""
    parser = _Parser(text, manifest)
    predicate = parser.query(0)
    if parser.pos < len(text):
        raise _fail("Unbalanced ')'", parser.pos)
    return predicate


def presence_predicate(field: str, manifest: Manifest) -> Predicate:
    """``fieldPresence=field``: messages that carry the field (a leaf or a group)."""
    spec = manifest.find_field(field)
    if spec is None:
        raise ValidationFailed.field("fieldPresence", f"Unknown field '{field}'")
    path = spec.path
    return lambda data: field_value(data, path) is not None
