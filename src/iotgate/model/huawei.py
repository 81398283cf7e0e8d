"""Huawei Cloud IoTDA product model ("profile") import/export.

Shape::

    {"product_id"?, "manufacturer_name"?, "device_type"?, "protocol_type"?, ...,
     "service_capabilities": [{"service_id", "service_type", "description", "option",
                               "properties": [...], "commands": [...], "events": [...]}]}

Mapping:

* ``service_id == "default"`` <-> the default module; every other service <-> a module with that identifier
  (``service_type`` <-> module name, ``description`` <-> description).
* properties: ``property_name`` <-> identifier (and name), ``method`` containing ``W`` <-> ``accessMode: rw``
  (else ``r``), ``required``, ``description``; data types ``int``->int32, ``long``->int64,
  ``decimal``->double, ``string``->text (``max_length``; a string with an ``enum_list`` -> enum),
  ``DateTime``->date, ``jsonObject``->struct without members (accepts any object; marked with
  ``extensions.huawei.data_type``), ``enum``->enum (``enum_list``), ``boolean``->bool,
  ``string list``->array (size 512) of text. ``min``/``max`` are strings.
* commands <-> services (``paras`` <-> inputData, ``responses[0].paras`` <-> outputData);
  events <-> events (``event_type`` <-> identifier).

Unmapped Huawei fields (``option``, ``default_value``, method letters such as ``E``, ``response_name``,
manufacturer fields, …) are kept in ``extensions["huawei"]``; iotgate details Huawei cannot express (display
names, float vs double, enum labels, struct members, …) are exported as ``"extensions": {"iotgate": {...}}``
inside the Huawei object and restored on import.

Normalisation done by :func:`export_huawei`: every property/parameter carries all Huawei fields (``null``
when unset), the ``default`` service is emitted first, ``responses`` is always a list and ``product_id`` is
the given one.
"""

from __future__ import annotations

from typing import Any

from ._convert import finish_export, finish_import, int_in, lst, num_in, num_str, obj, strip_extensions, vendor_field
from .types import DEFAULT_MODULE, TEXT_MAX_LENGTH, ModelError, ThingModel, decode_document, model_to_dict, parse_model

__all__ = ["export_huawei", "import_huawei"]

VENDOR = "huawei"
STRING_LIST_SIZE = 512

_PARA_DEFAULTS: dict[str, Any] = {
    "para_name": None,
    "data_type": None,
    "required": False,
    "enum_list": None,
    "min": None,
    "max": None,
    "max_length": None,
    "step": None,
    "unit": None,
    "description": None,
}
_PROPERTY_DEFAULTS: dict[str, Any] = {
    "property_name": None,
    "data_type": None,
    "required": False,
    "enum_list": None,
    "min": None,
    "max": None,
    "max_length": None,
    "step": None,
    "unit": None,
    "method": None,
    "description": None,
    "default_value": None,
}
_SERVICE_DEFAULTS: dict[str, Any] = {"description": None, "option": "Optional"}
_DEFAULT_SERVICE_DEFAULTS: dict[str, Any] = {
    "service_type": DEFAULT_MODULE,
    "description": None,
    "option": "Optional",
}
_COMPATIBLE = {"enum": ("enum", "string"), "struct": ("jsonObject",), "text": ("string",)}


# --------------------------------------------------------------------------------------------- import


def _enum_list(v: object, path: str) -> list[str]:
    items = lst(v, path)
    if not items:
        raise ModelError(f"{path}: an enum needs a non-empty enum_list")
    out: list[str] = []
    for i, x in enumerate(items):
        if isinstance(x, bool) or not isinstance(x, (str, int, float)):
            raise ModelError(f"{path}[{i}]: enum values must be strings")
        out.append(x if isinstance(x, str) else num_str(x))
    return out


def _text_length(d: dict[str, Any], path: str, consumed: list[str]) -> dict[str, Any]:
    n = int_in(d.get("max_length"), f"{path}.max_length")
    if n is None:
        consumed.append("max_length")
        return {}
    if 1 <= n <= TEXT_MAX_LENGTH:
        consumed.append("max_length")
        return {"length": n}
    # longer than iotgate's limit: validate with the limit, keep the original in extensions
    return {"length": TEXT_MAX_LENGTH}


def _dt_in(d: dict[str, Any], path: str) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Flat Huawei data-type fields -> (iotgate dataType, consumed keys, extension markers)."""
    t = d.get("data_type")
    consumed = ["data_type"]
    extra: dict[str, Any] = {}
    specs: Any
    if t in ("int", "long", "decimal"):
        it = {"int": "int32", "long": "int64", "decimal": "double"}[t]
        specs = {}
        for key in ("min", "max", "step"):
            n = num_in(d.get(key), f"{path}.{key}")
            if n is not None:
                specs[key] = n
        if d.get("unit") is not None:
            specs["unit"] = d["unit"]
        consumed += ["min", "max", "step", "unit"]
    elif t == "string":
        if d.get("enum_list"):
            it = "enum"
            specs = {x: x for x in _enum_list(d["enum_list"], f"{path}.enum_list")}
            consumed.append("enum_list")
            extra["data_type"] = "string"
        else:
            it = "text"
            specs = _text_length(d, path, consumed)
    elif t == "enum":
        it = "enum"
        specs = {x: x for x in _enum_list(d.get("enum_list"), f"{path}.enum_list")}
        consumed.append("enum_list")
    elif t == "DateTime":
        it, specs = "date", {}
    elif t == "boolean":
        it, specs = "bool", {}
    elif t == "jsonObject":
        it, specs = "struct", []
        extra["data_type"] = "jsonObject"
    elif t == "string list":
        it = "array"
        specs = {"size": STRING_LIST_SIZE, "item": {"type": "text", "specs": _text_length(d, path, consumed)}}
    else:
        raise ModelError(f"{path}.data_type: unsupported Huawei data type {t!r}")
    return {"type": it, "specs": specs}, consumed, extra


def _desc(d: dict[str, Any], consumed: list[str]) -> str:
    desc = d.get("description")
    if isinstance(desc, str) and desc:
        consumed.append("description")
        return desc
    return ""


def _para_in(v: object, path: str) -> dict[str, Any]:
    d = obj(v, path)
    dt, consumed, extra = _dt_in(d, path)
    consumed.append("para_name")
    r = {"identifier": d.get("para_name"), "name": d.get("para_name"), "dataType": dt}
    return finish_import(r, VENDOR, d, consumed, _PARA_DEFAULTS, path, extra)


def _paras_in(v: object, path: str) -> list[dict[str, Any]]:
    return [_para_in(p, f"{path}[{i}]") for i, p in enumerate(lst(v, path))]


def _gen_method(access: str) -> str:
    return "RW" if access == "rw" else "R"


def _property_in(v: object, path: str) -> dict[str, Any]:
    d = obj(v, path)
    dt, consumed, extra = _dt_in(d, path)
    method = d.get("method")
    access = "rw" if isinstance(method, str) and "W" in method.upper() else "r"
    consumed += ["property_name", "required"]
    if method == _gen_method(access):
        consumed.append("method")
    required = d.get("required")
    r = {
        "identifier": d.get("property_name"),
        "name": d.get("property_name"),
        "accessMode": access,
        "required": bool(required) if required is not None else False,
        "description": _desc(d, consumed),
        "dataType": dt,
    }
    return finish_import(r, VENDOR, d, consumed, _PROPERTY_DEFAULTS, path, extra)


def _response_name(command: str) -> str:
    return f"{command}_response"


def _command_in(v: object, path: str) -> dict[str, Any]:
    d = obj(v, path)
    name = d.get("command_name")
    consumed = ["command_name", "paras", "responses"]
    extra: dict[str, Any] = {}
    responses = lst(d.get("responses"), f"{path}.responses")
    out: list[dict[str, Any]] = []
    if responses:
        first = obj(responses[0], f"{path}.responses[0]")
        out = _paras_in(first.get("paras"), f"{path}.responses[0].paras")
        rn = first.get("response_name")
        if rn != _response_name(str(name)) or not out:
            extra["response_name"] = rn
        if len(responses) > 1:
            extra["more_responses"] = responses[1:]
    r = {
        "identifier": name,
        "name": name,
        "callType": "async",
        "description": _desc(d, consumed),
        "inputData": _paras_in(d.get("paras"), f"{path}.paras"),
        "outputData": out,
    }
    return finish_import(r, VENDOR, d, consumed, {}, path, extra)


def _event_in(v: object, path: str) -> dict[str, Any]:
    d = obj(v, path)
    consumed = ["event_type", "paras"]
    r = {
        "identifier": d.get("event_type"),
        "name": d.get("event_type"),
        "type": "info",
        "description": _desc(d, consumed),
        "outputData": _paras_in(d.get("paras"), f"{path}.paras"),
    }
    return finish_import(r, VENDOR, d, consumed, {}, path)


def _features_in(d: dict[str, Any], path: str) -> dict[str, Any]:
    return {
        "properties": [
            _property_in(p, f"{path}.properties[{i}]")
            for i, p in enumerate(lst(d.get("properties"), f"{path}.properties"))
        ],
        "events": [_event_in(e, f"{path}.events[{i}]") for i, e in enumerate(lst(d.get("events"), f"{path}.events"))],
        "services": [
            _command_in(c, f"{path}.commands[{i}]") for i, c in enumerate(lst(d.get("commands"), f"{path}.commands"))
        ],
    }


def _service_in(d: dict[str, Any], path: str) -> dict[str, Any]:
    sid = d.get("service_id")
    consumed = ["service_id", "properties", "commands", "events"]
    st = d.get("service_type")
    if isinstance(st, str) and st:
        consumed.append("service_type")
    r: dict[str, Any] = {"identifier": sid, "name": st if isinstance(st, str) and st else sid}
    r["description"] = _desc(d, consumed)
    r.update(_features_in(d, path))
    return finish_import(r, VENDOR, d, consumed, _SERVICE_DEFAULTS, path)


def _doc_in(doc: object) -> dict[str, Any]:
    d = obj(doc, "")
    res: dict[str, Any] = {"properties": [], "events": [], "services": [], "modules": []}
    extra: dict[str, Any] = {}
    if "service_capabilities" not in d:
        raise ModelError("service_capabilities: required (a Huawei product model lists its services there)")
    caps = lst(d.get("service_capabilities"), "service_capabilities")
    for i, svc in enumerate(caps):
        path = f"service_capabilities[{i}]"
        s = obj(svc, path)
        if s.get("service_id") == DEFAULT_MODULE:
            if "default_service" in extra:
                raise ModelError(f"{path}.service_id: duplicate service 'default'")
            res.update(_features_in(s, path))
            meta = finish_import(
                {},
                VENDOR,
                s,
                ("service_id", "properties", "commands", "events"),
                _DEFAULT_SERVICE_DEFAULTS,
                path,
            )
            extra["default_service"] = meta.get("extensions", {}).get(VENDOR, {})
            if not extra["default_service"]:
                extra["default_service"] = {}
        else:
            res["modules"].append(_service_in(s, path))
    if not extra.get("default_service"):
        extra.pop("default_service", None)
    return finish_import(res, VENDOR, d, ("product_id", "service_capabilities"), {}, "", extra)


def import_huawei(doc: object) -> ThingModel:
    """Import a Huawei IoTDA product model (dict or JSON text); raises :class:`ModelError` if bad."""
    return parse_model(_doc_in(decode_document(doc)))


# --------------------------------------------------------------------------------------------- export


def _dt_out(x: dict[str, Any]) -> dict[str, Any]:
    """iotgate dataType of ``x`` -> flat Huawei fields (``data_type``, ``min``, …)."""
    dt = x["dataType"]
    t = dt["type"]
    s = dt["specs"]
    out: dict[str, Any] = {}
    if t in ("int32", "int64", "float", "double"):
        out["data_type"] = {"int32": "int", "int64": "long"}.get(t, "decimal")
        for k in ("min", "max"):
            if k in s:
                out[k] = num_str(s[k])
        if "step" in s:
            out["step"] = s["step"]
        if "unit" in s:
            out["unit"] = s["unit"]
    elif t == "text":
        out["data_type"] = "string"
        out["max_length"] = s.get("length")
    elif t == "enum":
        out["data_type"] = "enum"
        out["enum_list"] = list(s)
    elif t == "date":
        out["data_type"] = "DateTime"
    elif t == "bool":
        out["data_type"] = "boolean"
    elif t == "struct":
        out["data_type"] = "jsonObject"
    else:
        out["data_type"] = "string list"
        item = s["item"]
        if item["type"] == "text":
            out["max_length"] = item["specs"].get("length")
    kept = vendor_field(x, VENDOR, "data_type")
    if kept in _COMPATIBLE.get(t, ()):
        out["data_type"] = kept
    long = vendor_field(x, VENDOR, "max_length")
    if out.get("max_length") == TEXT_MAX_LENGTH and isinstance(long, int) and long > TEXT_MAX_LENGTH:
        out["max_length"] = long  # a Huawei string longer than iotgate's limit
    return out


def _para_out(p: dict[str, Any]) -> dict[str, Any]:
    mapped = {"para_name": p["identifier"], **_dt_out(p)}
    return finish_export(p, VENDOR, mapped, _PARA_DEFAULTS, lambda o: _para_in(o, ""), ("name", "dataType"))


def _property_out(p: dict[str, Any]) -> dict[str, Any]:
    method = vendor_field(p, VENDOR, "method")
    rw = p["accessMode"] == "rw"
    if not (isinstance(method, str) and ("W" in method.upper()) == rw):
        method = _gen_method(p["accessMode"])
    mapped = {
        "property_name": p["identifier"],
        **_dt_out(p),
        "required": p["required"],
        "method": method,
        "description": p["description"] or None,
    }
    return finish_export(
        p,
        VENDOR,
        mapped,
        _PROPERTY_DEFAULTS,
        lambda o: _property_in(o, ""),
        ("name", "accessMode", "required", "description", "dataType"),
    )


def _command_out(s: dict[str, Any]) -> dict[str, Any]:
    ext = (s.get("extensions") or {}).get(VENDOR)
    ext = ext if isinstance(ext, dict) else {}
    responses: list[Any] = []
    if s["outputData"] or "response_name" in ext:
        responses.append(
            {
                "response_name": ext.get("response_name", _response_name(s["identifier"])),
                "paras": [_para_out(p) for p in s["outputData"]],
            }
        )
    more = ext.get("more_responses")
    if isinstance(more, list):
        responses += more
    # response bookkeeping lives in "responses", not as Huawei fields of the command
    kept = {k: v for k, v in ext.items() if k not in ("response_name", "more_responses")}
    src = dict(s)
    exts = dict(s.get("extensions") or {})
    if kept:
        exts[VENDOR] = kept
    else:
        exts.pop(VENDOR, None)
    src["extensions"] = exts or None
    mapped = {
        "command_name": s["identifier"],
        "description": s["description"] or None,
        "paras": [_para_out(p) for p in s["inputData"]],
        "responses": responses,
    }
    out = finish_export(
        src,
        VENDOR,
        mapped,
        {},
        lambda o: _command_in(o, ""),
        ("name", "callType", "description"),
        check_ext=False,
    )
    return _fix_stash(out, s, lambda o: _command_in(o, ""))


def _fix_stash(out: dict[str, Any], iot: dict[str, Any], back: Any) -> dict[str, Any]:
    """Make sure the re-import of ``out`` reproduces the extensions of ``iot`` exactly."""
    again = back(out)
    if (again.get("extensions") or None) != (iot.get("extensions") or None):
        exts = dict(out.get("extensions") or {})
        stash = dict(exts.get("iotgate") or {})
        stash["extensions"] = iot.get("extensions") or None
        exts["iotgate"] = stash
        out["extensions"] = exts
    return out


def _event_out(e: dict[str, Any]) -> dict[str, Any]:
    mapped = {
        "event_type": e["identifier"],
        "description": e["description"] or None,
        "paras": [_para_out(p) for p in e["outputData"]],
    }
    return finish_export(e, VENDOR, mapped, {}, lambda o: _event_in(o, ""), ("name", "type", "description"))


def _features_out(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "properties": [_property_out(p) for p in block["properties"]],
        "commands": [_command_out(s) for s in block["services"]],
        "events": [_event_out(e) for e in block["events"]],
    }


def _service_out(m: dict[str, Any]) -> dict[str, Any]:
    mapped = {
        "service_id": m["identifier"],
        "service_type": m["name"],
        "description": m["description"] or None,
        **_features_out(m),
    }
    return finish_export(m, VENDOR, mapped, _SERVICE_DEFAULTS, lambda o: _service_in(o, ""), ("name", "description"))


def export_huawei(model: ThingModel, product_id: str, *, extensions: bool = True) -> dict[str, Any]:
    """Export a model as a Huawei IoTDA product model (see the module docstring for the mapping).

    ``extensions=False`` omits iotgate's ``extensions`` objects (plain product model for Huawei's console;
    the export is then lossy where the product model cannot express the model)."""
    d = model_to_dict(model)
    exts = dict(d.get("extensions") or {})
    hw = exts.pop(VENDOR, None)
    hw = dict(hw) if isinstance(hw, dict) else {}
    default_meta = hw.pop("default_service", None)
    caps: list[dict[str, Any]] = []
    if d["properties"] or d["events"] or d["services"] or default_meta is not None:
        svc: dict[str, Any] = {"service_id": DEFAULT_MODULE, **_DEFAULT_SERVICE_DEFAULTS}
        if isinstance(default_meta, dict):
            svc.update(default_meta)
        svc.update(_features_out(d))
        caps.append(svc)
    caps += [_service_out(m) for m in d["modules"]]
    out: dict[str, Any] = {"product_id": product_id, **hw, "service_capabilities": caps}
    if exts:
        out["extensions"] = exts
    return out if extensions else strip_extensions(out)
