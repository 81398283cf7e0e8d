"""parse_model / model_to_dict / diff_models."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from iotgate.model import (
    ModelError,
    NumberSpecs,
    ThingModel,
    diff_models,
    empty_model,
    model_to_dict,
    parse_model,
)

SEED: dict[str, Any] = {
    "properties": [
        {
            "identifier": "temperature",
            "name": "Temperature",
            "accessMode": "r",
            "required": False,
            "description": "",
            "dataType": {
                "type": "int32",
                "specs": {"min": -10, "max": 50, "step": 1, "unit": "°C", "unitName": "Celsius"},
            },
        },
        {
            "identifier": "humidity",
            "name": "Humidity",
            "accessMode": "r",
            "required": False,
            "description": "",
            "dataType": {"type": "int32", "specs": {"min": 1, "max": 100, "step": 1, "unit": "%RH"}},
        },
    ],
    "events": [
        {
            "identifier": "overheat",
            "name": "Overheat",
            "type": "alert",
            "description": "",
            "outputData": [
                {"identifier": "temperature", "name": "Temperature", "dataType": {"type": "double", "specs": {}}}
            ],
        }
    ],
    "services": [
        {
            "identifier": "reboot",
            "name": "Reboot",
            "callType": "async",
            "description": "",
            "inputData": [{"identifier": "delay", "name": "Delay", "dataType": {"type": "int32", "specs": {"min": 0}}}],
            "outputData": [],
        }
    ],
    "modules": [
        {
            "identifier": "battery",
            "name": "Battery",
            "description": "",
            "properties": [
                {
                    "identifier": "level",
                    "name": "Level",
                    "accessMode": "r",
                    "required": True,
                    "description": "",
                    "dataType": {"type": "int32", "specs": {"min": 0, "max": 100}},
                }
            ],
            "events": [],
            "services": [],
        }
    ],
}

ALL_TYPES: dict[str, Any] = {
    "properties": [
        {
            "identifier": "i64",
            "name": "i64",
            "accessMode": "rw",
            "required": False,
            "description": "d",
            "dataType": {"type": "int64", "specs": {"min": -(2**40), "max": 2**40, "step": 2}},
        },
        {
            "identifier": "f",
            "name": "f",
            "accessMode": "r",
            "required": False,
            "description": "",
            "dataType": {"type": "float", "specs": {"min": -1.5, "max": 1.5, "step": 0.25, "unit": "V"}},
        },
        {
            "identifier": "t",
            "name": "t",
            "accessMode": "r",
            "required": False,
            "description": "",
            "dataType": {"type": "text", "specs": {"length": 8}},
        },
        {
            "identifier": "b",
            "name": "b",
            "accessMode": "r",
            "required": False,
            "description": "",
            "dataType": {"type": "bool", "specs": {"0": "off", "1": "on"}},
        },
        {
            "identifier": "e",
            "name": "e",
            "accessMode": "r",
            "required": False,
            "description": "",
            "dataType": {"type": "enum", "specs": {"0": "a", "1": "b"}},
        },
        {
            "identifier": "d",
            "name": "d",
            "accessMode": "r",
            "required": False,
            "description": "",
            "dataType": {"type": "date", "specs": {}},
        },
        {
            "identifier": "pos",
            "name": "pos",
            "accessMode": "r",
            "required": False,
            "description": "",
            "dataType": {
                "type": "struct",
                "specs": [
                    {"identifier": "x", "name": "x", "dataType": {"type": "double", "specs": {"min": 0, "max": 10}}},
                    {"identifier": "y", "name": "y", "dataType": {"type": "text", "specs": {}}},
                ],
            },
        },
        {
            "identifier": "arr",
            "name": "arr",
            "accessMode": "r",
            "required": False,
            "description": "",
            "dataType": {
                "type": "array",
                "specs": {"size": 3, "item": {"type": "int32", "specs": {"min": 0, "max": 9}}},
            },
            "extensions": {"huawei": {"default_value": [1, 2]}},
        },
    ],
    "events": [],
    "services": [],
    "modules": [],
    "extensions": {"huawei": {"manufacturer_name": "acme"}},
}


def test_seed_round_trip() -> None:
    m = parse_model(SEED)
    assert isinstance(m, ThingModel)
    assert model_to_dict(m) == SEED
    assert parse_model(model_to_dict(m)) == m


def test_all_types_round_trip() -> None:
    m = parse_model(ALL_TYPES)
    assert model_to_dict(m) == ALL_TYPES
    assert parse_model(model_to_dict(m)) == m


def test_attributes_and_json_text() -> None:
    m = parse_model(SEED)
    t = m.properties[0]
    assert t.identifier == "temperature"
    assert t.access_mode == "r"
    assert t.data_type.type == "int32"
    assert isinstance(t.data_type.specs, NumberSpecs)
    assert t.data_type.specs.unit_name == "Celsius"
    assert t.data_type.unit == "°C"
    assert m.module("battery") is not None and m.module("nope") is None
    import json

    assert parse_model(json.dumps(SEED)) == m
    with pytest.raises(ModelError, match="not valid JSON"):
        parse_model("{nope")


def test_defaults_filled() -> None:
    m = parse_model({"properties": [{"identifier": "x", "dataType": {"type": "bool"}}]})
    p = m.properties[0]
    assert (p.name, p.access_mode, p.required, p.description) == ("x", "r", False, "")


def test_empty_model() -> None:
    m = empty_model()
    assert model_to_dict(m) == {"properties": [], "events": [], "services": [], "modules": []}
    assert parse_model({}) == m


def _bad(path: list[Any], value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(base or SEED)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()
_SPECS = ["properties", 0, "dataType", "specs"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["properties", 0, "dataType", "type"], "int", r"properties\[0\]\.dataType\.type: unsupported type 'int'"),
        ([*_SPECS, "min"], "-10", r"properties\[0\]\.dataType\.specs\.min: must be a number"),
        ([*_SPECS, "min"], 60, r"properties\[0\]\.dataType\.specs\.min: min 60 is greater than max 50"),
        ([*_SPECS, "step"], 0, r"properties\[0\]\.dataType\.specs\.step: must be > 0"),
        ([*_SPECS, "step"], -1, r"properties\[0\]\.dataType\.specs\.step: must be > 0"),
        ([*_SPECS, "max"], 1.5, r"specs\.max: must be an integer for type int32"),
        ([*_SPECS, "max"], 2**31, r"specs\.max: 2147483648 is out of the int32 range"),
        ([*_SPECS, "max"], True, r"specs\.max: must be a number, got boolean"),
        ([*_SPECS, "bogus"], 1, r"properties\[0\]\.dataType\.specs\.bogus: unknown field"),
        (["properties", 1, "identifier"], "temperature", r"properties\[1\]\.identifier: duplicate identifier"),
        (["events", 0, "identifier"], "temperature", r"events\[0\]\.identifier: duplicate identifier 'temperature'"),
        (["properties", 0, "identifier"], "1abc", r"properties\[0\]\.identifier: invalid identifier"),
        (["properties", 0, "identifier"], "a" * 51, r"invalid identifier"),
        (["properties", 0, "accessMode"], "w", r"properties\[0\]\.accessMode: must be one of r, rw"),
        (["events", 0, "type"], "warning", r"events\[0\]\.type: must be one of info, alert, error"),
        (["services", 0, "callType"], "later", r"services\[0\]\.callType: must be one of async, sync"),
        (["properties", 0, "required"], "yes", r"properties\[0\]\.required: must be a boolean"),
        (["properties", 0, "dataType"], _DELETE, r"properties\[0\]\.dataType: must be an object, got null"),
        (["properties"], {}, r"properties: must be an array"),
        (["modules", 0, "identifier"], "default", r"modules\[0\]\.identifier: 'default' is reserved"),
        (["modules", 0, "properties", 0, "dataType", "specs", "min"], "x", r"modules\[0\]\.properties\[0\]"),
        (["services", 0, "inputData", 0, "dataType", "type"], "blob", r"services\[0\]\.inputData\[0\]"),
        (["properties", 0, "extensions"], [], r"properties\[0\]\.extensions: must be an object"),
    ],
)
def test_parse_errors(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_model(_bad(path, value))


def _typed(dt: Any) -> dict[str, Any]:
    return {"properties": [{"identifier": "p", "dataType": dt}]}


@pytest.mark.parametrize(
    ("dt", "message"),
    [
        ({"type": "text", "specs": {"length": 0}}, r"specs\.length: must be between 1 and 10240"),
        ({"type": "text", "specs": {"length": 10241}}, r"specs\.length: must be between 1 and 10240"),
        ({"type": "text", "specs": {"length": "10"}}, r"specs\.length: must be an integer"),
        ({"type": "enum", "specs": {}}, r"specs: an enum needs at least one value"),
        ({"type": "enum", "specs": {"1": 2}}, r"specs\.1: must be a string"),
        ({"type": "bool", "specs": {"2": "x"}}, r"specs\.2: unknown field"),
        ({"type": "date", "specs": {"x": 1}}, r"specs\.x: unknown field"),
        ({"type": "array", "specs": {"size": 0, "item": {"type": "int32"}}}, r"specs\.size: must be between 1 and 512"),
        ({"type": "array", "specs": {"size": 513, "item": {"type": "int32"}}}, r"specs\.size"),
        (
            {"type": "array", "specs": {"size": 2, "item": {"type": "bool"}}},
            r"specs\.item\.type: unsupported type 'bool'",
        ),
        (
            {"type": "struct", "specs": [{"identifier": "a", "dataType": {"type": "struct", "specs": []}}]},
            r"specs\[0\]\.dataType\.type: unsupported type 'struct'",
        ),
        (
            {
                "type": "struct",
                "specs": [
                    {"identifier": "a", "dataType": {"type": "bool"}},
                    {"identifier": "a", "dataType": {"type": "bool"}},
                ],
            },
            r"specs\[1\]\.identifier: duplicate member identifier 'a'",
        ),
        ({"type": "double", "specs": {"min": float("nan")}}, r"specs\.min: must be a finite number"),
    ],
)
def test_parse_data_type_errors(dt: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_model(_typed(dt))


def test_duplicate_module() -> None:
    doc = copy.deepcopy(SEED)
    doc["modules"].append(copy.deepcopy(doc["modules"][0]))
    with pytest.raises(ModelError, match=r"modules\[1\]\.identifier: duplicate module identifier 'battery'"):
        parse_model(doc)


def test_not_an_object() -> None:
    with pytest.raises(ModelError, match="document must be a JSON object"):
        parse_model([1, 2])
    assert issubclass(ModelError, ValueError)


def test_diff_models() -> None:
    old = parse_model(SEED)
    new_doc = copy.deepcopy(SEED)
    new_doc["properties"][0]["dataType"]["specs"]["max"] = 60  # changed
    del new_doc["properties"][1]  # removed
    new_doc["events"] = []  # removed
    new_doc["modules"][0]["properties"].append(
        {"identifier": "voltage", "dataType": {"type": "double", "specs": {}}}
    )  # added in module
    new_doc["modules"].append(
        {"identifier": "gps", "properties": [{"identifier": "lat", "dataType": {"type": "double"}}]}
    )
    changes = diff_models(old, parse_model(new_doc))
    assert {"change": "changed", "kind": "property", "identifier": "temperature"} in changes
    assert {"change": "removed", "kind": "property", "identifier": "humidity"} in changes
    assert {"change": "removed", "kind": "event", "identifier": "overheat"} in changes
    assert {"change": "added", "kind": "property", "identifier": "battery:voltage"} in changes
    assert {"change": "added", "kind": "module", "identifier": "gps"} in changes
    assert {"change": "added", "kind": "property", "identifier": "gps:lat"} in changes
    assert len(changes) == 6
    assert diff_models(old, old) == []
    back = diff_models(parse_model(new_doc), old)
    assert {"change": "removed", "kind": "module", "identifier": "gps"} in back


def test_diff_module_meta() -> None:
    old = parse_model(SEED)
    doc = copy.deepcopy(SEED)
    doc["modules"][0]["name"] = "Akku"
    assert diff_models(old, parse_model(doc)) == [{"change": "changed", "kind": "module", "identifier": "battery"}]
