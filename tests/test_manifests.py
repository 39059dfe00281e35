"""Simple Manifests: compiling authored documents, the properties view, message and action normalization."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from thingcloud.areas.devicetypes.manifests import (
    EMPTY_MANIFEST,
    INVALID_MANIFEST,
    Manifest,
    compile_manifest,
)
from thingcloud.errors import FieldError, ValidationFailed

SMART_LIGHT: dict[str, Any] = {
    "fields": [
        {
            "name": "state",
            "type": "CUSTOM",
            "valueClass": "Boolean",
            "isCollection": False,
            "tags": ["switch"],
        },
        {"name": "heartRate", "valueClass": "Integer", "unit": "b/min", "description": "heartRate"},
        {"name": "steps", "valueClass": "Long"},
        {"name": "temp", "valueClass": "java.lang.Double", "unit": "Cel"},
        {"name": "ratio", "valueClass": "Float"},
        {"name": "label", "valueClass": "String", "metaData": [{"type": "VALUES_STRING", "value": ["a"]}]},
        {"name": "samples", "valueClass": "Integer", "isCollection": True},
        {
            "name": "location",
            "children": [{"name": "x", "valueClass": "Double"}, {"name": "y", "valueClass": "Double"}],
        },
        {
            "name": "activity",
            "description": "two levels of groups",
            "children": [
                {"name": "walking", "children": [{"name": "count", "valueClass": "Integer"}]},
                {"name": "running", "children": [{"name": "count", "valueClass": "Integer"}]},
            ],
        },
    ],
    "actions": [
        {"name": "setOn", "description": "Sets the light state to On", "parameters": [], "isStandard": True},
        {
            "name": "setColorRGB",
            "description": "Set color",
            "parameters": [
                {
                    "name": "colorRGB",
                    "children": [
                        {"name": "r", "valueClass": "Integer"},
                        {"name": "g", "valueClass": "Integer"},
                        {"name": "b", "valueClass": "Integer"},
                    ],
                },
                {"name": "intensity", "valueClass": "Integer", "unit": "%"},
                {"name": "names", "valueClass": "String", "isCollection": True},
            ],
        },
    ],
    "messageFormat": "json",
}


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return compile_manifest(SMART_LIGHT, version=2)


def errors_of(exc: pytest.ExceptionInfo[ValidationFailed]) -> list[tuple[str, tuple[str, ...]]]:
    return [(e.field, e.messages) for e in exc.value.errors]


def invalid(doc: object) -> list[tuple[str, tuple[str, ...]]]:
    with pytest.raises(ValidationFailed) as exc:
        compile_manifest(doc)
    assert exc.value.message == INVALID_MANIFEST
    assert exc.value.status == 400 and exc.value.error_code == 4001
    return errors_of(exc)


def bad_data(manifest: Manifest, data: object) -> list[tuple[str, tuple[str, ...]]]:
    with pytest.raises(ValidationFailed) as exc:
        manifest.normalize(data)
    assert exc.value.message == "Validation Error"
    return errors_of(exc)


# ---------------------------------------------------------------- compiling


def test_compiled_manifest_is_immutable(manifest: Manifest) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.version = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        manifest.fields.by_name["x"] = manifest.fields.specs[0]  # type: ignore[index]


def test_field_paths_lists_leaves_in_manifest_order(manifest: Manifest) -> None:
    assert manifest.field_paths() == {
        "state": "Boolean",
        "heartRate": "Integer",
        "steps": "Long",
        "temp": "Double",
        "ratio": "Float",
        "label": "String",
        "samples": "Integer",
        "location.x": "Double",
        "location.y": "Double",
        "activity.walking.count": "Integer",
        "activity.running.count": "Integer",
    }
    assert list(manifest.field_paths())[:2] == ["state", "heartRate"]
    assert list(manifest.field_paths())[-3:] == [
        "location.y",
        "activity.walking.count",
        "activity.running.count",
    ]


def test_find_field_is_case_insensitive(manifest: Manifest) -> None:
    spec = manifest.find_field("activity.walking.count")
    assert spec is not None and spec.value_class == "Integer" and spec.path == "activity.walking.count"
    assert manifest.find_field("ACTIVITY.Walking.COUNT") is spec
    assert manifest.find_field("heartrate") is manifest.find_field("heartRate")
    group = manifest.find_field("location")
    assert group is not None and group.is_group and group.value_class is None
    assert manifest.find_field("nope") is None


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("String", "String"),
        ("Boolean", "Boolean"),
        ("Integer", "Integer"),
        ("Long", "Long"),
        ("Double", "Double"),
        ("Float", "Float"),
        ("java.lang.Long", "Long"),
        ("java.lang.Boolean", "Boolean"),
        ("double", "Double"),
        (" Float ", "Float"),
    ],
)
def test_value_class_spellings(written: str, canonical: str) -> None:
    manifest = compile_manifest({"fields": [{"name": "v", "valueClass": written}]})
    assert manifest.field_paths() == {"v": canonical}


def test_json_text_is_accepted() -> None:
    manifest = compile_manifest('{"fields": [{"name": "v", "valueClass": "Integer"}]}')
    assert manifest.normalize({"v": "7"}) == {"v": 7}


def test_compiled_manifest_does_not_follow_later_edits_of_its_document() -> None:
    doc: dict[str, Any] = {
        "fields": [{"name": "v", "valueClass": "Integer"}],
        "messageFormat": "JSON",
        "x": 1,
    }
    manifest = compile_manifest(doc)
    doc["fields"][0]["valueClass"] = "String"
    doc["fields"].append({"name": "w", "valueClass": "String"})
    assert manifest.field_paths() == {"v": "Integer"}
    assert manifest.normalize({"v": "3", "w": "x"}) == {"v": 3}


def test_action_only_manifest() -> None:
    manifest = compile_manifest({"actions": [{"name": "reboot"}]})
    assert manifest.field_paths() == {}
    assert manifest.properties_view()["properties"] == {
        "fields": {},
        "actions": {"reboot": {"description": "", "parameters": {}}},
    }


@pytest.mark.parametrize("doc", [None, {}, "", "   ", b""])
def test_empty_manifest(doc: object) -> None:
    with pytest.raises(ValidationFailed) as exc:
        compile_manifest(doc)
    assert exc.value.message == EMPTY_MANIFEST == "The manifest content cannot be empty"


def test_manifest_with_neither_fields_nor_actions() -> None:
    assert invalid({"fields": [], "actions": []}) == [
        ("fields", ("A manifest needs at least one field or action",))
    ]
    assert invalid({"messageFormat": "json"}) == [
        ("fields", ("A manifest needs at least one field or action",))
    ]


def test_manifest_that_is_not_an_object() -> None:
    assert invalid([{"name": "x"}]) == [("manifest", ("JSON object expected",))]
    assert invalid(42) == [("manifest", ("JSON object expected",))]
    [(path, (message,))] = invalid("{not json")
    assert path == "manifest" and message.startswith("Invalid JSON: ")


def test_every_bad_element_is_listed_with_its_path() -> None:
    doc = {
        "fields": [
            {"name": "ok", "valueClass": "String"},
            {"name": "ok", "valueClass": "String"},
            {"name": "temp", "valueClass": "Foo"},
            {"valueClass": "Long"},
            {"name": "a.b", "valueClass": "Long"},
            {"name": "OK", "valueClass": "Integer"},
            "nope",
            {"name": "noclass"},
            {"name": "many", "valueClass": "Double", "isCollection": "yes", "unit": 5, "description": ["x"]},
            {"name": 12, "valueClass": 3},
            {"name": "", "valueClass": ""},
        ],
        "actions": [
            {"name": "setOn"},
            {"name": "setOn"},
            {
                "name": "go",
                "parameters": [{"name": "p", "valueClass": "Bar"}, {"name": "p", "valueClass": "Long"}],
            },
            {"name": "stop", "parameters": {"p": "Long"}},
            7,
        ],
        "messageFormat": "xml",
    }
    assert invalid(doc) == [
        ("messageFormat", ("Only the 'json' messageFormat is supported",)),
        ("fields.1.name", ("Duplicate name 'ok'",)),
        ("fields.2.valueClass", ("Unknown valueClass 'Foo'",)),
        ("fields.3.name", ("Required parameter",)),
        ("fields.4.name", ("Invalid name 'a.b': use letters, digits, '_' or '-'",)),
        ("fields.5.name", ("Duplicate name 'OK'",)),
        ("fields.6", ("JSON object expected",)),
        ("fields.7.valueClass", ("Required parameter",)),
        ("fields.8.unit", ("Text field only",)),
        ("fields.8.description", ("Text field only",)),
        ("fields.8.isCollection", ("Boolean field only",)),
        ("fields.9.name", ("Text field only",)),
        ("fields.9.valueClass", ("Unknown valueClass '3'",)),
        ("fields.10.name", ("Required parameter",)),
        ("fields.10.valueClass", ("Required parameter",)),
        ("actions.1.name", ("Duplicate name 'setOn'",)),
        ("actions.2.parameters.0.valueClass", ("Unknown valueClass 'Bar'",)),
        ("actions.2.parameters.1.name", ("Duplicate name 'p'",)),
        ("actions.3.parameters", ("Array expected",)),
        ("actions.4", ("JSON object expected",)),
    ]


def test_bad_groups() -> None:
    doc = {
        "fields": [
            {"name": "empty", "children": []},
            {"name": "g", "children": [{"name": "inner", "children": [{"name": "x", "valueClass": "Nope"}]}]},
            {"name": "arr", "isCollection": True, "children": [{"name": "x", "valueClass": "Long"}]},
            {"name": "both", "children": [{"name": "x", "valueClass": "Long"}], "fields": []},
            {"name": "notalist", "children": {"x": "Long"}},
        ],
        "actions": {"setOn": {}},
    }
    assert invalid(doc) == [
        ("fields.0.children", ("A group needs at least one child",)),
        ("fields.1.children.0.children.0.valueClass", ("Unknown valueClass 'Nope'",)),
        ("fields.2.isCollection", ("A group cannot be a collection",)),
        ("fields.3.fields", ("Use only one of children, fields, parameters",)),
        ("fields.4.children", ("Array expected",)),
        ("actions", ("Array expected",)),
    ]


def test_groups_nest_at_most_eight_levels() -> None:
    def nested(levels: int) -> dict[str, Any]:
        node: dict[str, Any] = {"name": "leaf", "valueClass": "Integer"}
        for i in range(levels):
            node = {"name": f"g{i}", "children": [node]}
        return node

    assert len(compile_manifest({"fields": [nested(7)]}).field_paths()) == 1
    path = "fields.0" + ".children.0" * 7 + ".children"
    assert invalid({"fields": [nested(8)]}) == [(path, ("Groups nest too deeply (max 8 levels)",))]


# ---------------------------------------------------------------- properties view


def test_properties_view_shape(manifest: Manifest) -> None:
    leaf: dict[str, Any] = {"unit": "", "isCollection": False, "description": ""}
    assert manifest.properties_view() == {
        "version": 2,
        "properties": {
            "fields": {
                "state": {**leaf, "type": "Boolean"},
                "heartRate": {
                    "type": "Integer",
                    "unit": "b/min",
                    "isCollection": False,
                    "description": "heartRate",
                },
                "steps": {**leaf, "type": "Long"},
                "temp": {**leaf, "type": "Double", "unit": "Cel"},
                "ratio": {**leaf, "type": "Float"},
                "label": {**leaf, "type": "String"},
                "samples": {**leaf, "type": "Integer", "isCollection": True},
                "location": {"x": {**leaf, "type": "Double"}, "y": {**leaf, "type": "Double"}},
                "activity": {
                    "walking": {"count": {**leaf, "type": "Integer"}},
                    "running": {"count": {**leaf, "type": "Integer"}},
                },
            },
            "actions": {
                "setOn": {"description": "Sets the light state to On", "parameters": {}},
                "setColorRGB": {
                    "description": "Set color",
                    "parameters": {
                        "colorRGB": {
                            "r": {**leaf, "type": "Integer"},
                            "g": {**leaf, "type": "Integer"},
                            "b": {**leaf, "type": "Integer"},
                        },
                        "intensity": {**leaf, "type": "Integer", "unit": "%"},
                        "names": {**leaf, "type": "String", "isCollection": True},
                    },
                },
            },
        },
    }


def test_properties_view_is_a_fresh_copy(manifest: Manifest) -> None:
    view = manifest.properties_view()
    view["properties"]["fields"]["state"]["type"] = "Hacked"
    assert manifest.properties_view()["properties"]["fields"]["state"]["type"] == "Boolean"


# ---------------------------------------------------------------- normalizing messages


@pytest.mark.parametrize(
    ("field", "sent", "stored"),
    [
        ("label", "on", "on"),
        ("label", 12, "12"),
        ("label", 21.5, "21.5"),
        ("label", True, "true"),
        ("label", "", ""),
        ("state", True, True),
        ("state", False, False),
        ("state", "true", True),
        ("state", " FALSE ", False),
        ("state", 1, True),
        ("state", 0, False),
        ("state", "1", True),
        ("state", "0", False),
        ("heartRate", 72, 72),
        ("heartRate", "72", 72),
        ("heartRate", " -3 ", -3),
        ("heartRate", 72.0, 72),
        ("heartRate", "72.0", 72),
        ("heartRate", "1e3", 1000),
        ("heartRate", 2147483647, 2147483647),
        ("heartRate", -2147483648, -2147483648),
        ("heartRate", -2147483648.0, -2147483648),
        ("steps", 9223372036854775807, 9223372036854775807),
        ("steps", "9223372036854775807", 9223372036854775807),
        ("steps", -9223372036854775808, -9223372036854775808),
        ("steps", 3000000000, 3000000000),
        ("temp", "21.5", 21.5),
        ("temp", 21, 21.0),
        ("temp", "-.5", -0.5),
        ("temp", "1E-3", 0.001),
        ("temp", 1e300, 1e300),
        ("ratio", 0.25, 0.25),
        ("ratio", "3.4e38", 3.4e38),
    ],
)
def test_coercion_success(manifest: Manifest, field: str, sent: object, stored: object) -> None:
    result = manifest.normalize({field: sent})
    assert result == {field: stored}
    assert type(result[field]) is type(stored)


@pytest.mark.parametrize(
    ("field", "sent", "message"),
    [
        ("label", {"a": 1}, "Text field only"),
        ("label", [1], "Text field only"),
        ("label", float("nan"), "Text field only"),
        ("state", "yes", "Boolean field only"),
        ("state", 2, "Boolean field only"),
        ("state", 1.0, "Boolean field only"),
        ("state", [True], "Boolean field only"),
        ("heartRate", "abc", "Numeric field only"),
        ("heartRate", True, "Numeric field only"),
        ("heartRate", 21.5, "Whole number only"),
        ("heartRate", "21.5", "Whole number only"),
        ("heartRate", 2147483648, "Maximum value 2147483647"),
        ("heartRate", "-2147483649", "Minimum value -2147483648"),
        ("heartRate", "1e400", "Maximum value 2147483647"),
        ("heartRate", "-21.5e30", "Minimum value -2147483648"),
        ("heartRate", float("inf"), "Maximum value 2147483647"),
        ("heartRate", "1_000", "Numeric field only"),
        ("heartRate", "0x10", "Numeric field only"),
        ("heartRate", "1" * 65, "Numeric field only"),
        ("heartRate", {"v": 1}, "Numeric field only"),
        ("steps", 9223372036854775808, "Maximum value 9223372036854775807"),
        ("steps", float("nan"), "Numeric field only"),
        ("temp", "NaN", "Numeric field only"),
        ("temp", "inf", "Numeric field only"),
        ("temp", float("-inf"), "Minimum value -1.7976931348623157e+308"),
        ("temp", 10**400, "Maximum value 1.7976931348623157e+308"),
        ("temp", "1e999", "Maximum value 1.7976931348623157e+308"),
        ("temp", False, "Numeric field only"),
        ("temp", "", "Numeric field only"),
        ("ratio", 3.5e38, "Maximum value 3.4028234663852886e+38"),
        ("ratio", [1.0], "Numeric field only"),
    ],
)
def test_coercion_failure(manifest: Manifest, field: str, sent: object, message: str) -> None:
    assert bad_data(manifest, {field: sent, "heartRate" if field != "heartRate" else "state": 1}) == [
        (f"data.{field}", (message,))
    ]


def test_unknown_fields_and_nulls_are_dropped(manifest: Manifest) -> None:
    assert manifest.normalize({"temp": 20, "unknown": "x", "steps": None, "location": {"x": 1, "z": 9}}) == {
        "temp": 20.0,
        "location": {"x": 1.0},
    }


def test_case_insensitive_names_store_the_manifest_spelling(manifest: Manifest) -> None:
    assert manifest.normalize({"HEARTRATE": "5", "Location": {"X": "2"}}) == {
        "heartRate": 5,
        "location": {"x": 2.0},
    }
    # The exactly spelled key wins over a case variant.
    assert manifest.normalize({"heartrate": 1, "heartRate": 2}) == {"heartRate": 2}
    assert bad_data(manifest, {"heartrate": 1, "HEARTRATE": 2}) == [
        ("data.HEARTRATE", ("Duplicate field 'heartRate'",))
    ]


def test_collections(manifest: Manifest) -> None:
    assert manifest.normalize({"samples": [1, "2", 3.0]}) == {"samples": [1, 2, 3]}
    assert manifest.normalize({"samples": []}) == {"samples": []}
    assert bad_data(manifest, {"samples": 5}) == [("data.samples", ("Array expected",))]
    assert bad_data(manifest, {"samples": [1, "x", None, 2.5]}) == [
        ("data.samples.1", ("Numeric field only",)),
        ("data.samples.2", ("Numeric field only",)),
        ("data.samples.3", ("Whole number only",)),
    ]


def test_nested_groups_two_levels(manifest: Manifest) -> None:
    data = {
        "activity": {"walking": {"count": "10", "pace": 3}, "running": {"count": 2}},
        "location": {"y": -1},
    }
    assert manifest.normalize(data) == {
        "activity": {"walking": {"count": 10}, "running": {"count": 2}},
        "location": {"y": -1.0},
    }
    # A group with nothing known inside is left out (but something else matched).
    assert manifest.normalize({"temp": 1, "activity": {"walking": {"pace": 3}}, "location": {}}) == {
        "temp": 1.0
    }
    assert bad_data(
        manifest, {"activity": {"walking": 5, "running": {"count": "many"}}, "location": [1, 2]}
    ) == [
        ("data.activity.walking", ("JSON object expected",)),
        ("data.activity.running.count", ("Numeric field only",)),
        ("data.location", ("JSON object expected",)),
    ]


def test_several_bad_values_are_reported_together(manifest: Manifest) -> None:
    data = {
        "state": "maybe",
        "heartRate": "fast",
        "temp": 20,
        "samples": ["a"],
        "label": {},
        "extra": object(),
    }
    assert bad_data(manifest, data) == [
        ("data.state", ("Boolean field only",)),
        ("data.heartRate", ("Numeric field only",)),
        ("data.samples.0", ("Numeric field only",)),
        ("data.label", ("Text field only",)),
    ]


def test_error_body_renders_paths(manifest: Manifest) -> None:
    with pytest.raises(ValidationFailed) as exc:
        manifest.normalize({"heartRate": "x"})
    assert exc.value.body("r1") == {
        "error": {
            "code": 4001,
            "message": "Validation Error",
            "id": "r1",
            "errors": [
                [
                    {
                        "field": "data.heartRate",
                        "message": ["Numeric field only"],
                        "messages": ["Numeric field only"],
                    }
                ]
            ],
        }
    }


@pytest.mark.parametrize("data", [None, [], "text", 5, [{"temp": 1}]])
def test_data_that_is_not_an_object(manifest: Manifest, data: object) -> None:
    assert bad_data(manifest, data) == [("data", ("JSON object expected",))]


@pytest.mark.parametrize("data", [{}, {"unknown": 1}, {"temp": None}, {"location": {"z": 1}}])
def test_nothing_matching(manifest: Manifest, data: dict[str, Any]) -> None:
    assert bad_data(manifest, data) == [("data", ("No field of the message matches the manifest",))]


def test_path_prefix_is_the_callers(manifest: Manifest) -> None:
    with pytest.raises(ValidationFailed) as exc:
        manifest.normalize({"temp": "hot"}, path="")
    assert exc.value.errors == [FieldError("temp", ("Numeric field only",))]
    with pytest.raises(ValidationFailed) as exc:
        manifest.normalize({"nothing": 1}, path="messages.3.data")
    assert exc.value.errors == [
        FieldError("messages.3.data", ("No field of the message matches the manifest",))
    ]


def test_normalize_does_not_mutate_its_input(manifest: Manifest) -> None:
    data = {"temp": "1.5", "samples": ["1"], "location": {"x": "2", "q": 1}}
    manifest.normalize(data)
    assert data == {"temp": "1.5", "samples": ["1"], "location": {"x": "2", "q": 1}}


# ---------------------------------------------------------------- actions


def test_action_lookup(manifest: Manifest) -> None:
    assert manifest.action("setOn").description == "Sets the light state to On"
    assert manifest.action("SETON").name == "setOn"
    assert [a.name for a in manifest.actions] == ["setOn", "setColorRGB"]
    with pytest.raises(ValidationFailed) as exc:
        manifest.action("explode", path="data.actions.0.name")
    assert errors_of(exc) == [("data.actions.0.name", ("Unknown action 'explode'",))]
    with pytest.raises(ValidationFailed) as exc:
        manifest.action(None)
    assert errors_of(exc) == [("name", ("Required parameter",))]


def test_normalize_action_with_parameters(manifest: Manifest) -> None:
    params = {"colorRGB": {"r": "192", "g": 180, "b": 45.0, "a": 1}, "intensity": "55", "names": [1], "x": 1}
    assert manifest.normalize_action("setcolorrgb", params) == {
        "name": "setColorRGB",
        "parameters": {"colorRGB": {"r": 192, "g": 180, "b": 45}, "intensity": 55, "names": ["1"]},
    }
    assert manifest.normalize_action("setOn", None) == {"name": "setOn", "parameters": {}}
    assert manifest.normalize_action("setColorRGB", {}) == {"name": "setColorRGB", "parameters": {}}


def test_normalize_action_errors(manifest: Manifest) -> None:
    with pytest.raises(ValidationFailed) as exc:
        manifest.normalize_action("setColorRGB", {"colorRGB": {"r": "red"}, "intensity": 5.5}, path="a")
    assert errors_of(exc) == [
        ("a.parameters.colorRGB.r", ("Numeric field only",)),
        ("a.parameters.intensity", ("Whole number only",)),
    ]
    with pytest.raises(ValidationFailed) as exc:
        manifest.normalize_action("setOn", [1])
    assert errors_of(exc) == [("parameters", ("JSON object expected",))]
    with pytest.raises(ValidationFailed) as exc:
        manifest.normalize_action("nope", {})
    assert errors_of(exc) == [("name", ("Unknown action 'nope'",))]


def test_normalize_actions_payload(manifest: Manifest) -> None:
    data = {
        "actions": [
            {"name": "setOn", "parameters": {}},
            {"name": "setColorRGB", "parameters": {"intensity": 1}},
        ]
    }
    assert manifest.normalize_actions(data) == {
        "actions": [
            {"name": "setOn", "parameters": {}},
            {"name": "setColorRGB", "parameters": {"intensity": 1}},
        ]
    }


def test_normalize_actions_lists_every_error(manifest: Manifest) -> None:
    data = {
        "actions": [
            {"name": "setOn"},
            {"name": "fly"},
            "x",
            {"name": "setColorRGB", "parameters": {"intensity": "max"}},
            {"parameters": {}},
        ],
        "temp": 1,
    }
    with pytest.raises(ValidationFailed) as exc:
        manifest.normalize_actions(data)
    assert errors_of(exc) == [
        ("data.temp", ("Only 'actions' is allowed here",)),
        ("data.actions.1.name", ("Unknown action 'fly'",)),
        ("data.actions.2", ("JSON object expected",)),
        ("data.actions.3.parameters.intensity", ("Numeric field only",)),
        ("data.actions.4.name", ("Required parameter",)),
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, [("data.actions", ("Required parameter",))]),
        ({"actions": []}, [("data.actions", ("At least one action is required",))]),
        ({"actions": {"name": "setOn"}}, [("data.actions", ("Array expected",))]),
        ("setOn", [("data", ("JSON object expected",))]),
    ],
)
def test_normalize_actions_bad_shapes(manifest: Manifest, data: object, expected: list[Any]) -> None:
    with pytest.raises(ValidationFailed) as exc:
        manifest.normalize_actions(data)
    assert errors_of(exc) == expected
