"""Thing-model structures and parsing of iotgate's own model JSON (``?format=iotgate``).

The document shape::

    {"properties": [...], "events": [...], "services": [...], "modules": [...], "extensions": {...}?}

Top-level properties/events/services form the *default* module (no identifier prefix); every entry of
``modules`` is a named module whose features are addressed as ``"<module>:<identifier>"``.

:func:`parse_model` validates a document and raises :class:`ModelError` whose message names the JSON path
of the offending value, e.g. ``"properties[1].dataType.specs.min: must be a number"``.
:func:`model_to_dict` is the exact inverse (``parse_model(model_to_dict(m)) == m``).

``extensions`` (allowed on the model, modules, properties, events, services and parameters) is an opaque
JSON object keyed by vendor (``"alibaba"``, ``"huawei"``) holding vendor fields that have no iotgate
equivalent, so that vendor round trips are lossless.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

__all__ = [
    "ARRAY_ITEM_TYPES",
    "DATA_TYPES",
    "DEFAULT_MODULE",
    "MEMBER_TYPES",
    "NUMBER_TYPES",
    "ArraySpecs",
    "BoolSpecs",
    "DataType",
    "DateSpecs",
    "EnumSpecs",
    "Event",
    "ModelError",
    "Module",
    "NumberSpecs",
    "Param",
    "Property",
    "Service",
    "StructSpecs",
    "TextSpecs",
    "ThingModel",
    "empty_model",
    "model_to_dict",
    "parse_model",
]

DEFAULT_MODULE = "default"
NUMBER_TYPES = frozenset({"int32", "int64", "float", "double"})
INT_TYPES = frozenset({"int32", "int64"})
DATA_TYPES = frozenset(NUMBER_TYPES | {"text", "bool", "enum", "date", "struct", "array"})
MEMBER_TYPES = frozenset(NUMBER_TYPES | {"text", "date", "bool", "enum"})
ARRAY_ITEM_TYPES = frozenset(NUMBER_TYPES | {"text", "struct"})
TEXT_MAX_LENGTH = 10240
ARRAY_MAX_SIZE = 512

#: inclusive value range of each numeric type
TYPE_BOUNDS: dict[str, tuple[int | float, int | float]] = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "float": (-3.4028234663852886e38, 3.4028234663852886e38),
    "double": (-1.7976931348623157e308, 1.7976931348623157e308),
}

IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,49}")


class ModelError(ValueError):
    """An invalid model document. The message starts with the JSON path of the offending value."""


# --------------------------------------------------------------------------------------------- structs


class NumberSpecs(msgspec.Struct, kw_only=True):
    """Specs of ``int32``/``int64``/``float``/``double``; every field is optional."""

    min: int | float | None = None
    max: int | float | None = None
    step: int | float | None = None
    unit: str | None = None
    unit_name: str | None = None


class TextSpecs(msgspec.Struct, kw_only=True):
    """``length``: maximum UTF-8 byte length (``None`` = platform limit 10240)."""

    length: int | None = None


class BoolSpecs(msgspec.Struct, kw_only=True):
    """Labels of the values, keys ``"0"`` and ``"1"`` (may be empty)."""

    labels: dict[str, str] = msgspec.field(default_factory=dict)


class EnumSpecs(msgspec.Struct, kw_only=True):
    """``values``: wire value (as a string) -> label."""

    values: dict[str, str] = msgspec.field(default_factory=dict)


class DateSpecs(msgspec.Struct, kw_only=True):
    """Dates have no specs (UTC milliseconds)."""


class StructSpecs(msgspec.Struct, kw_only=True):
    """Members of a struct. No members means a free-form JSON object (Huawei ``jsonObject``)."""

    members: list[Param] = msgspec.field(default_factory=list)


class ArraySpecs(msgspec.Struct, kw_only=True):
    size: int
    item: DataType


Specs = NumberSpecs | TextSpecs | BoolSpecs | EnumSpecs | DateSpecs | StructSpecs | ArraySpecs


class DataType(msgspec.Struct, kw_only=True):
    type: str
    specs: Specs

    @property
    def unit(self) -> str | None:
        """Unit of a numeric type (``None`` for others)."""
        return self.specs.unit if isinstance(self.specs, NumberSpecs) else None


class Param(msgspec.Struct, kw_only=True):
    """A struct member or an event/service parameter."""

    identifier: str
    name: str
    data_type: DataType
    extensions: dict[str, Any] | None = None


class Property(msgspec.Struct, kw_only=True):
    identifier: str
    name: str
    data_type: DataType
    access_mode: str = "r"
    required: bool = False
    description: str = ""
    extensions: dict[str, Any] | None = None


class Event(msgspec.Struct, kw_only=True):
    identifier: str
    name: str
    type: str = "info"
    description: str = ""
    output_data: list[Param] = msgspec.field(default_factory=list)
    extensions: dict[str, Any] | None = None


class Service(msgspec.Struct, kw_only=True):
    identifier: str
    name: str
    call_type: str = "async"
    description: str = ""
    input_data: list[Param] = msgspec.field(default_factory=list)
    output_data: list[Param] = msgspec.field(default_factory=list)
    extensions: dict[str, Any] | None = None


class Module(msgspec.Struct, kw_only=True):
    identifier: str
    name: str
    description: str = ""
    properties: list[Property] = msgspec.field(default_factory=list)
    events: list[Event] = msgspec.field(default_factory=list)
    services: list[Service] = msgspec.field(default_factory=list)
    extensions: dict[str, Any] | None = None


class ThingModel(msgspec.Struct, kw_only=True):
    """A parsed thing model. Top-level properties/events/services are the default module."""

    properties: list[Property] = msgspec.field(default_factory=list)
    events: list[Event] = msgspec.field(default_factory=list)
    services: list[Service] = msgspec.field(default_factory=list)
    modules: list[Module] = msgspec.field(default_factory=list)
    extensions: dict[str, Any] | None = None

    def module(self, identifier: str) -> Module | None:
        """The named module (``None`` if absent; the default module is not a :class:`Module`)."""
        for m in self.modules:
            if m.identifier == identifier:
                return m
        return None


def empty_model() -> ThingModel:
    return ThingModel()


# --------------------------------------------------------------------------------------------- parsing


def type_name(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _obj(v: object, path: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ModelError(f"{path}: must be an object, got {type_name(v)}")
    for k in v:
        if k not in allowed:
            raise ModelError(f"{_join(path, str(k))}: unknown field")
    return v


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _list(v: object, path: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ModelError(f"{path}: must be an array, got {type_name(v)}")
    return v


def _str(v: object, path: str, *, default: str | None = None, nonempty: bool = False) -> str:
    if v is None and default is not None:
        return default
    if not isinstance(v, str):
        raise ModelError(f"{path}: must be a string, got {type_name(v)}")
    if nonempty and not v:
        raise ModelError(f"{path}: must not be empty")
    return v


def _opt_str(v: object, path: str) -> str | None:
    if v is None:
        return None
    return _str(v, path)


def _identifier(v: object, path: str) -> str:
    s = _str(v, path)
    if not IDENTIFIER_RE.fullmatch(s):
        raise ModelError(f"{path}: invalid identifier {s!r} (letters, digits, '_', '-'; no leading digit; max 50)")
    return s


def _choice(v: object, path: str, choices: tuple[str, ...], default: str) -> str:
    if v is None:
        return default
    s = _str(v, path)
    if s not in choices:
        raise ModelError(f"{path}: must be one of {', '.join(choices)}, got {s!r}")
    return s


def _bool(v: object, path: str) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ModelError(f"{path}: must be a boolean, got {type_name(v)}")
    return v


def _extensions(v: object, path: str) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ModelError(f"{path}: must be an object, got {type_name(v)}")
    return v


def _number(v: object, path: str, type_: str) -> int | float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ModelError(f"{path}: must be a number, got {type_name(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ModelError(f"{path}: must be a finite number")
    if type_ in INT_TYPES and isinstance(v, float):
        if not v.is_integer():
            raise ModelError(f"{path}: must be an integer for type {type_}")
        v = int(v)
    lo, hi = TYPE_BOUNDS[type_]
    if not lo <= v <= hi:
        raise ModelError(f"{path}: {v} is out of the {type_} range")
    return v


_NUMBER_SPEC_KEYS = frozenset({"min", "max", "step", "unit", "unitName"})
_TEXT_SPEC_KEYS = frozenset({"length"})
_DT_KEYS = frozenset({"type", "specs"})
_ARRAY_SPEC_KEYS = frozenset({"size", "item"})
_PARAM_KEYS = frozenset({"identifier", "name", "dataType", "extensions"})


def _int_in(v: object, path: str, lo: int, hi: int) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ModelError(f"{path}: must be an integer, got {type_name(v)}")
    if not lo <= v <= hi:
        raise ModelError(f"{path}: must be between {lo} and {hi}, got {v}")
    return v


def _parse_data_type(v: object, path: str, allowed: frozenset[str] = DATA_TYPES) -> DataType:
    d = _obj(v, path, _DT_KEYS)
    tpath = _join(path, "type")
    t = _str(d.get("type"), tpath)
    if t not in allowed:
        raise ModelError(f"{tpath}: unsupported type {t!r} here (expected one of {', '.join(sorted(allowed))})")
    spath = _join(path, "specs")
    raw = d.get("specs")
    specs: Specs
    if t in NUMBER_TYPES:
        s = _obj({} if raw is None else raw, spath, _NUMBER_SPEC_KEYS)
        lo = _number(s.get("min"), _join(spath, "min"), t)
        hi = _number(s.get("max"), _join(spath, "max"), t)
        step = _number(s.get("step"), _join(spath, "step"), t)
        if lo is not None and hi is not None and lo > hi:
            raise ModelError(f"{_join(spath, 'min')}: min {lo} is greater than max {hi}")
        if step is not None and step <= 0:
            raise ModelError(f"{_join(spath, 'step')}: must be > 0, got {step}")
        specs = NumberSpecs(
            min=lo,
            max=hi,
            step=step,
            unit=_opt_str(s.get("unit"), _join(spath, "unit")),
            unit_name=_opt_str(s.get("unitName"), _join(spath, "unitName")),
        )
    elif t == "text":
        s = _obj({} if raw is None else raw, spath, _TEXT_SPEC_KEYS)
        ln = s.get("length")
        specs = TextSpecs(length=None if ln is None else _int_in(ln, _join(spath, "length"), 1, TEXT_MAX_LENGTH))
    elif t == "bool":
        s = _obj({} if raw is None else raw, spath, frozenset({"0", "1"}))
        specs = BoolSpecs(labels={k: _str(x, _join(spath, k)) for k, x in s.items()})
    elif t == "enum":
        if not isinstance(raw, dict):
            raise ModelError(f"{spath}: must be an object of value -> label, got {type_name(raw)}")
        if not raw:
            raise ModelError(f"{spath}: an enum needs at least one value")
        values: dict[str, str] = {}
        for k, x in raw.items():
            if not isinstance(k, str) or not k:
                raise ModelError(f"{spath}: enum values must be non-empty strings")
            values[k] = _str(x, _join(spath, k))
        specs = EnumSpecs(values=values)
    elif t == "date":
        _obj({} if raw is None else raw, spath, frozenset())
        specs = DateSpecs()
    elif t == "struct":
        members = _parse_params(raw, spath, MEMBER_TYPES, "member")
        specs = StructSpecs(members=members)
    else:  # array
        s = _obj(raw, spath, _ARRAY_SPEC_KEYS)
        size = _int_in(s.get("size"), _join(spath, "size"), 1, ARRAY_MAX_SIZE)
        item = _parse_data_type(s.get("item"), _join(spath, "item"), ARRAY_ITEM_TYPES)
        specs = ArraySpecs(size=size, item=item)
    return DataType(type=t, specs=specs)


def _parse_param(v: object, path: str, allowed: frozenset[str]) -> Param:
    d = _obj(v, path, _PARAM_KEYS)
    ident = _identifier(d.get("identifier"), _join(path, "identifier"))
    return Param(
        identifier=ident,
        name=_str(d.get("name"), _join(path, "name"), default=ident),
        data_type=_parse_data_type(d.get("dataType"), _join(path, "dataType"), allowed),
        extensions=_extensions(d.get("extensions"), _join(path, "extensions")),
    )


def _parse_params(v: object, path: str, allowed: frozenset[str], what: str = "parameter") -> list[Param]:
    out: list[Param] = []
    seen: set[str] = set()
    for i, item in enumerate(_list(v, path)):
        p = _parse_param(item, f"{path}[{i}]", allowed)
        if p.identifier in seen:
            raise ModelError(f"{path}[{i}].identifier: duplicate {what} identifier {p.identifier!r}")
        seen.add(p.identifier)
        out.append(p)
    return out


_PROPERTY_KEYS = frozenset({"identifier", "name", "accessMode", "required", "description", "dataType", "extensions"})
_EVENT_KEYS = frozenset({"identifier", "name", "type", "description", "outputData", "extensions"})
_SERVICE_KEYS = frozenset({"identifier", "name", "callType", "description", "inputData", "outputData", "extensions"})
_MODULE_KEYS = frozenset({"identifier", "name", "description", "properties", "events", "services", "extensions"})
_MODEL_KEYS = frozenset({"properties", "events", "services", "modules", "extensions"})


def _parse_property(v: object, path: str) -> Property:
    d = _obj(v, path, _PROPERTY_KEYS)
    ident = _identifier(d.get("identifier"), _join(path, "identifier"))
    return Property(
        identifier=ident,
        name=_str(d.get("name"), _join(path, "name"), default=ident),
        access_mode=_choice(d.get("accessMode"), _join(path, "accessMode"), ("r", "rw"), "r"),
        required=_bool(d.get("required"), _join(path, "required")),
        description=_str(d.get("description"), _join(path, "description"), default=""),
        data_type=_parse_data_type(d.get("dataType"), _join(path, "dataType")),
        extensions=_extensions(d.get("extensions"), _join(path, "extensions")),
    )


def _parse_event(v: object, path: str) -> Event:
    d = _obj(v, path, _EVENT_KEYS)
    ident = _identifier(d.get("identifier"), _join(path, "identifier"))
    return Event(
        identifier=ident,
        name=_str(d.get("name"), _join(path, "name"), default=ident),
        type=_choice(d.get("type"), _join(path, "type"), ("info", "alert", "error"), "info"),
        description=_str(d.get("description"), _join(path, "description"), default=""),
        output_data=_parse_params(d.get("outputData"), _join(path, "outputData"), DATA_TYPES),
        extensions=_extensions(d.get("extensions"), _join(path, "extensions")),
    )


def _parse_service(v: object, path: str) -> Service:
    d = _obj(v, path, _SERVICE_KEYS)
    ident = _identifier(d.get("identifier"), _join(path, "identifier"))
    return Service(
        identifier=ident,
        name=_str(d.get("name"), _join(path, "name"), default=ident),
        call_type=_choice(d.get("callType"), _join(path, "callType"), ("async", "sync"), "async"),
        description=_str(d.get("description"), _join(path, "description"), default=""),
        input_data=_parse_params(d.get("inputData"), _join(path, "inputData"), DATA_TYPES),
        output_data=_parse_params(d.get("outputData"), _join(path, "outputData"), DATA_TYPES),
        extensions=_extensions(d.get("extensions"), _join(path, "extensions")),
    )


def _parse_features(d: dict[str, Any], path: str) -> tuple[list[Property], list[Event], list[Service]]:
    seen: dict[str, str] = {}

    def claim(ident: str, where: str) -> None:
        if ident in seen:
            raise ModelError(f"{where}.identifier: duplicate identifier {ident!r} (also used by {seen[ident]})")
        seen[ident] = where

    props: list[Property] = []
    for i, item in enumerate(_list(d.get("properties"), _join(path, "properties"))):
        where = f"{_join(path, 'properties')}[{i}]"
        p = _parse_property(item, where)
        claim(p.identifier, where)
        props.append(p)
    events: list[Event] = []
    for i, item in enumerate(_list(d.get("events"), _join(path, "events"))):
        where = f"{_join(path, 'events')}[{i}]"
        e = _parse_event(item, where)
        claim(e.identifier, where)
        events.append(e)
    services: list[Service] = []
    for i, item in enumerate(_list(d.get("services"), _join(path, "services"))):
        where = f"{_join(path, 'services')}[{i}]"
        s = _parse_service(item, where)
        claim(s.identifier, where)
        services.append(s)
    return props, events, services


def decode_document(doc: object) -> object:
    """A document given as JSON text or bytes, decoded (ModelError if it is not JSON); others as they are."""
    if isinstance(doc, (str, bytes, bytearray)):
        try:
            return msgspec.json.decode(doc)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ModelError(f"document is not valid JSON: {exc}") from None
    return doc


def parse_model(doc: object) -> ThingModel:
    """Validate a model document in iotgate format (a dict, or JSON text/bytes); raise :class:`ModelError`."""
    doc = decode_document(doc)
    d = _obj(doc, "", _MODEL_KEYS) if isinstance(doc, dict) else None
    if d is None:
        raise ModelError(f"document must be a JSON object, got {type_name(doc)}")
    props, events, services = _parse_features(d, "")
    modules: list[Module] = []
    seen: set[str] = set()
    for i, item in enumerate(_list(d.get("modules"), "modules")):
        path = f"modules[{i}]"
        m = _obj(item, path, _MODULE_KEYS)
        ident = _identifier(m.get("identifier"), f"{path}.identifier")
        if ident == DEFAULT_MODULE:
            raise ModelError(f"{path}.identifier: 'default' is reserved for the top-level (default) module")
        if ident in seen:
            raise ModelError(f"{path}.identifier: duplicate module identifier {ident!r}")
        seen.add(ident)
        mp, me, ms = _parse_features(m, path)
        modules.append(
            Module(
                identifier=ident,
                name=_str(m.get("name"), f"{path}.name", default=ident),
                description=_str(m.get("description"), f"{path}.description", default=""),
                properties=mp,
                events=me,
                services=ms,
                extensions=_extensions(m.get("extensions"), f"{path}.extensions"),
            )
        )
    return ThingModel(
        properties=props,
        events=events,
        services=services,
        modules=modules,
        extensions=_extensions(d.get("extensions"), "extensions"),
    )


# --------------------------------------------------------------------------------------------- dumping


def data_type_to_dict(dt: DataType) -> dict[str, Any]:
    s = dt.specs
    specs: Any
    if isinstance(s, NumberSpecs):
        specs = {}
        for key, val in (
            ("min", s.min),
            ("max", s.max),
            ("step", s.step),
            ("unit", s.unit),
            ("unitName", s.unit_name),
        ):
            if val is not None:
                specs[key] = val
    elif isinstance(s, TextSpecs):
        specs = {} if s.length is None else {"length": s.length}
    elif isinstance(s, BoolSpecs):
        specs = dict(s.labels)
    elif isinstance(s, EnumSpecs):
        specs = dict(s.values)
    elif isinstance(s, StructSpecs):
        specs = [param_to_dict(m) for m in s.members]
    elif isinstance(s, ArraySpecs):
        specs = {"size": s.size, "item": data_type_to_dict(s.item)}
    else:
        specs = {}
    return {"type": dt.type, "specs": specs}


def _with_ext(d: dict[str, Any], ext: dict[str, Any] | None) -> dict[str, Any]:
    if ext is not None:
        d["extensions"] = ext
    return d


def param_to_dict(p: Param) -> dict[str, Any]:
    return _with_ext(
        {"identifier": p.identifier, "name": p.name, "dataType": data_type_to_dict(p.data_type)}, p.extensions
    )


def property_to_dict(p: Property) -> dict[str, Any]:
    return _with_ext(
        {
            "identifier": p.identifier,
            "name": p.name,
            "accessMode": p.access_mode,
            "required": p.required,
            "description": p.description,
            "dataType": data_type_to_dict(p.data_type),
        },
        p.extensions,
    )


def event_to_dict(e: Event) -> dict[str, Any]:
    return _with_ext(
        {
            "identifier": e.identifier,
            "name": e.name,
            "type": e.type,
            "description": e.description,
            "outputData": [param_to_dict(p) for p in e.output_data],
        },
        e.extensions,
    )


def service_to_dict(s: Service) -> dict[str, Any]:
    return _with_ext(
        {
            "identifier": s.identifier,
            "name": s.name,
            "callType": s.call_type,
            "description": s.description,
            "inputData": [param_to_dict(p) for p in s.input_data],
            "outputData": [param_to_dict(p) for p in s.output_data],
        },
        s.extensions,
    )


def module_to_dict(m: Module) -> dict[str, Any]:
    return _with_ext(
        {
            "identifier": m.identifier,
            "name": m.name,
            "description": m.description,
            "properties": [property_to_dict(p) for p in m.properties],
            "events": [event_to_dict(e) for e in m.events],
            "services": [service_to_dict(s) for s in m.services],
        },
        m.extensions,
    )


def model_to_dict(model: ThingModel) -> dict[str, Any]:
    """The model as iotgate JSON (plain dicts/lists); ``parse_model(model_to_dict(m)) == m``."""
    return _with_ext(
        {
            "properties": [property_to_dict(p) for p in model.properties],
            "events": [event_to_dict(e) for e in model.events],
            "services": [service_to_dict(s) for s in model.services],
            "modules": [module_to_dict(m) for m in model.modules],
        },
        model.extensions,
    )
