"""Alibaba Cloud IoT TSL (Thing Specification Language) import/export.

TSL shape::

    {"schema": "https://iotx-tsl.oss-ap-southeast-1.aliyuncs.com/schema.json",
     "profile": {"version": "1.0", "productKey": "..."},
     "properties": [...], "events": [...], "services": [...]}

Mapping: TSL ``int`` <-> ``int32`` (iotgate ``int64`` is exported as ``int``, see below); spec numbers
are strings in TSL (``"min": "-10"``); ``desc`` <-> ``description``. The auto-generated event ``post``
(``thing.event.property.post``) and services ``set``/``get`` (``thing.service.property.set``/``get``) are
skipped on import and regenerated on export from the default module's properties (``set`` lists the
``rw`` properties, ``get`` lists all identifiers as inputData and all properties as outputData).

Modules: a TSL document that carries ``"functionBlockId"``/``"functionBlockName"`` at top level (Alibaba's
export of one custom function block) is imported as a model whose only content is that module. Exporting a
model with modules emits them as **iotgate's extension** of TSL: a top-level list
``"functionBlocks": [{"functionBlockId", "functionBlockName", "description"?, "properties", "events",
"services"}]`` (no auto post/set/get inside); :func:`import_alibaba` reads that list back.

Losslessness: TSL fields without an iotgate equivalent (e.g. ``required`` of events/services, an unusual
``method``) go to ``extensions["alibaba"]``; iotgate details TSL cannot express (``int64``, an unset text
length, …) are written into the TSL object as ``"extensions": {"iotgate": {...}}`` and restored on import.

Normalisation done by :func:`export_alibaba` (so vendor -> iotgate -> vendor equals the original after it):
``schema``/``profile.version`` default to the values above, events/services always carry ``required``
(default ``false``), ``set``/``get`` always use ``callType: "async"`` and are listed first (``post`` first
among events), spec numbers are rendered canonically (``"1.50"`` -> ``"1.5"``), and array items of
number/text type carry no ``specs`` unless they had some.
"""

from __future__ import annotations

from typing import Any

from ._convert import finish_export, finish_import, int_in, lst, num_in, num_str, obj, strip_extensions
from .types import ModelError, ThingModel, decode_document, model_to_dict, parse_model

__all__ = ["TSL_SCHEMA", "export_alibaba", "export_alibaba_module", "import_alibaba"]

TSL_SCHEMA = "https://iotx-tsl.oss-ap-southeast-1.aliyuncs.com/schema.json"
VENDOR = "alibaba"

_TYPE_IN = {
    "int": "int32",
    "float": "float",
    "double": "double",
    "text": "text",
    "date": "date",
    "bool": "bool",
    "enum": "enum",
    "struct": "struct",
    "array": "array",
}
_TYPE_OUT = {
    "int32": "int",
    "int64": "int",
    "float": "float",
    "double": "double",
    "text": "text",
    "date": "date",
    "bool": "bool",
    "enum": "enum",
    "struct": "struct",
    "array": "array",
}
_NUMBER = ("int32", "float", "double")
_AUTO_EVENTS = {"post": "thing.event.property.post"}
_AUTO_SERVICES = {"set": "thing.service.property.set", "get": "thing.service.property.get"}
_FEATURE_DEFAULTS = {"required": False}


# --------------------------------------------------------------------------------------------- import


def _dt_in(v: object, path: str) -> dict[str, Any]:
    d = obj(v, path)
    t = d.get("type")
    if t not in _TYPE_IN:
        raise ModelError(f"{path}.type: unsupported TSL data type {t!r}")
    it = _TYPE_IN[t]
    raw = d.get("specs")
    sp = f"{path}.specs"
    specs: Any
    if it in _NUMBER:
        s = obj({} if raw is None else raw, sp)
        specs = {}
        for key in ("min", "max", "step"):
            n = num_in(s.get(key), f"{sp}.{key}")
            if n is not None:
                specs[key] = n
        for key in ("unit", "unitName"):
            if s.get(key) is not None:
                specs[key] = s[key]
    elif it == "text":
        s = obj({} if raw is None else raw, sp)
        length = int_in(s.get("length"), f"{sp}.length")
        specs = {} if length is None else {"length": length}
    elif it == "date":
        specs = {}
    elif it in ("bool", "enum"):
        specs = dict(obj({} if raw is None else raw, sp))
    elif it == "struct":
        specs = [_param_in(m, f"{sp}[{i}]") for i, m in enumerate(lst(raw, sp))]
    else:
        s = obj(raw, sp)
        specs = {"size": int_in(s.get("size"), f"{sp}.size"), "item": _dt_in(s.get("item"), f"{sp}.item")}
    return {"type": it, "specs": specs}


def _param_in(v: object, path: str) -> dict[str, Any]:
    d = obj(v, path)
    r = {
        "identifier": d.get("identifier"),
        "name": d.get("name"),
        "dataType": _dt_in(d.get("dataType"), f"{path}.dataType"),
    }
    return finish_import(r, VENDOR, d, ("identifier", "name", "dataType"), {}, path)


def _desc(d: dict[str, Any], consumed: list[str]) -> str:
    desc = d.get("desc")
    if isinstance(desc, str) and desc:
        consumed.append("desc")
        return desc
    return ""  # absent/empty/odd values are kept verbatim in extensions


def _property_in(v: object, path: str) -> dict[str, Any]:
    d = obj(v, path)
    consumed = ["identifier", "name", "accessMode", "required", "dataType"]
    r = {
        "identifier": d.get("identifier"),
        "name": d.get("name"),
        "accessMode": d.get("accessMode"),
        "required": d.get("required"),
        "description": _desc(d, consumed),
        "dataType": _dt_in(d.get("dataType"), f"{path}.dataType"),
    }
    return finish_import(r, VENDOR, d, consumed, {}, path)


def _params_in(v: object, path: str) -> list[dict[str, Any]]:
    return [_param_in(p, f"{path}[{i}]") for i, p in enumerate(lst(v, path))]


def _event_in(d: dict[str, Any], path: str) -> dict[str, Any]:
    consumed = ["identifier", "name", "type", "outputData"]
    if d.get("method") == f"thing.event.{d.get('identifier')}.post":
        consumed.append("method")
    r = {
        "identifier": d.get("identifier"),
        "name": d.get("name"),
        "type": d.get("type"),
        "description": _desc(d, consumed),
        "outputData": _params_in(d.get("outputData"), f"{path}.outputData"),
    }
    return finish_import(r, VENDOR, d, consumed, _FEATURE_DEFAULTS, path)


def _service_in(d: dict[str, Any], path: str) -> dict[str, Any]:
    consumed = ["identifier", "name", "callType", "inputData", "outputData"]
    if d.get("method") == f"thing.service.{d.get('identifier')}":
        consumed.append("method")
    r = {
        "identifier": d.get("identifier"),
        "name": d.get("name"),
        "callType": d.get("callType"),
        "description": _desc(d, consumed),
        "inputData": _params_in(d.get("inputData"), f"{path}.inputData"),
        "outputData": _params_in(d.get("outputData"), f"{path}.outputData"),
    }
    return finish_import(r, VENDOR, d, consumed, _FEATURE_DEFAULTS, path)


def _is_auto(d: dict[str, Any], auto: dict[str, str]) -> bool:
    ident = d.get("identifier")
    if ident not in auto:
        return False
    method = d.get("method")
    return method is None or method == auto[ident]


def _features_in(d: dict[str, Any], path: str) -> dict[str, Any]:
    pre = f"{path}." if path else ""
    props = [
        _property_in(p, f"{pre}properties[{i}]") for i, p in enumerate(lst(d.get("properties"), f"{pre}properties"))
    ]
    events = []
    for i, e in enumerate(lst(d.get("events"), f"{pre}events")):
        e = obj(e, f"{pre}events[{i}]")
        if not _is_auto(e, _AUTO_EVENTS):
            events.append(_event_in(e, f"{pre}events[{i}]"))
    services = []
    for i, s in enumerate(lst(d.get("services"), f"{pre}services")):
        s = obj(s, f"{pre}services[{i}]")
        if not _is_auto(s, _AUTO_SERVICES):
            services.append(_service_in(s, f"{pre}services[{i}]"))
    return {"properties": props, "events": events, "services": services}


def _module_in(d: dict[str, Any], path: str) -> dict[str, Any]:
    consumed = ["functionBlockId", "functionBlockName", "properties", "events", "services"]
    r = {"identifier": d.get("functionBlockId"), "name": d.get("functionBlockName"), "description": ""}
    desc = d.get("description")
    if isinstance(desc, str) and desc:
        consumed.append("description")
        r["description"] = desc
    r.update(_features_in(d, path))
    return finish_import(r, VENDOR, d, consumed, {}, path)


_DOC_CONSUMED = ("schema", "profile", "properties", "events", "services", "functionBlocks")


def _doc_in(doc: object) -> dict[str, Any]:
    d = obj(doc, "")
    extra: dict[str, Any] = {}
    if d.get("schema") not in (None, TSL_SCHEMA):
        extra["schema"] = d["schema"]
    profile = d.get("profile")
    if profile is not None:
        rest = {k: v for k, v in obj(profile, "profile").items() if k != "productKey"}
        if rest != {"version": "1.0"}:
            extra["profile"] = rest
    if "functionBlockId" in d:
        # the whole document is one function block: its fields and extensions belong to the module
        module = _module_in(d, "")
        extra["functionBlockDocument"] = True
        res: dict[str, Any] = {"properties": [], "events": [], "services": [], "modules": [module]}
        return finish_import(res, VENDOR, {}, (), {}, "", extra)
    res = _features_in(d, "")
    res["modules"] = [
        _module_in(obj(m, f"functionBlocks[{i}]"), f"functionBlocks[{i}]")
        for i, m in enumerate(lst(d.get("functionBlocks"), "functionBlocks"))
    ]
    return finish_import(res, VENDOR, d, _DOC_CONSUMED, {}, "", extra)


def import_alibaba(doc: object) -> ThingModel:
    """Import an Alibaba TSL document (dict or JSON text); raises :class:`ModelError` on bad documents."""
    return parse_model(_doc_in(decode_document(doc)))


# --------------------------------------------------------------------------------------------- export


def _clamp_int32(n: int) -> int:
    """TSL ``int`` is 32-bit: an int64 range is clamped (the exact type/range travels in the stash)."""
    return max(-(2**31), min(2**31 - 1, n))


def _dt_out(dt: dict[str, Any], item: bool = False) -> dict[str, Any]:
    t = dt["type"]
    s = dt["specs"]
    specs: Any
    if t in ("int32", "int64", "float", "double"):
        specs = {k: num_str(_clamp_int32(s[k]) if t == "int64" else s[k]) for k in ("min", "max", "step") if k in s}
        specs.update({k: s[k] for k in ("unit", "unitName") if k in s})
        if item and not specs:
            return {"type": _TYPE_OUT[t]}
    elif t == "text":
        if item and "length" not in s:
            return {"type": "text"}
        specs = {"length": str(s.get("length", 10240))}
    elif t == "bool":
        specs = dict(s) if s else {"0": "false", "1": "true"}
    elif t == "enum":
        specs = dict(s)
    elif t == "date":
        specs = {}
    elif t == "struct":
        specs = [_param_out(m) for m in s]
    else:
        specs = {"size": str(s["size"]), "item": _dt_out(s["item"], item=True)}
    return {"type": _TYPE_OUT[t], "specs": specs}


def _param_out(p: dict[str, Any]) -> dict[str, Any]:
    mapped = {"identifier": p["identifier"], "name": p["name"], "dataType": _dt_out(p["dataType"])}
    return finish_export(p, VENDOR, mapped, {}, lambda o: _param_in(o, ""), ("name", "dataType"))


def _property_out(p: dict[str, Any]) -> dict[str, Any]:
    mapped = {
        "identifier": p["identifier"],
        "name": p["name"],
        "accessMode": p["accessMode"],
        "required": p["required"],
        "desc": p["description"] or None,
        "dataType": _dt_out(p["dataType"]),
    }
    return finish_export(
        p,
        VENDOR,
        mapped,
        {},
        lambda o: _property_in(o, ""),
        ("name", "accessMode", "required", "description", "dataType"),
    )


def _vendor_method(x: dict[str, Any], default: str) -> str:
    ext = (x.get("extensions") or {}).get(VENDOR)
    m = ext.get("method") if isinstance(ext, dict) else None
    return m if isinstance(m, str) else default


def _event_out(e: dict[str, Any]) -> dict[str, Any]:
    mapped = {
        "identifier": e["identifier"],
        "name": e["name"],
        "type": e["type"],
        "desc": e["description"] or None,
        "method": _vendor_method(e, f"thing.event.{e['identifier']}.post"),
        "outputData": [_param_out(p) for p in e["outputData"]],
    }
    return finish_export(
        e, VENDOR, mapped, _FEATURE_DEFAULTS, lambda o: _event_in(o, ""), ("name", "type", "description")
    )


def _service_out(s: dict[str, Any]) -> dict[str, Any]:
    mapped = {
        "identifier": s["identifier"],
        "name": s["name"],
        "callType": s["callType"],
        "desc": s["description"] or None,
        "method": _vendor_method(s, f"thing.service.{s['identifier']}"),
        "inputData": [_param_out(p) for p in s["inputData"]],
        "outputData": [_param_out(p) for p in s["outputData"]],
    }
    return finish_export(
        s,
        VENDOR,
        mapped,
        _FEATURE_DEFAULTS,
        lambda o: _service_in(o, ""),
        ("name", "callType", "description"),
    )


def _auto_params(props: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"identifier": p["identifier"], "name": p["name"], "dataType": _dt_out(p["dataType"])} for p in props]


def _features_out(block: dict[str, Any], auto: bool) -> dict[str, Any]:
    props = block["properties"]
    events = [_event_out(e) for e in block["events"]]
    services = [_service_out(s) for s in block["services"]]
    if auto:
        events.insert(
            0,
            {
                "identifier": "post",
                "name": "post",
                "type": "info",
                "required": True,
                "desc": "属性上报",
                "method": "thing.event.property.post",
                "outputData": _auto_params(props),
            },
        )
        services[0:0] = [
            {
                "identifier": "set",
                "name": "set",
                "required": True,
                "callType": "async",
                "desc": "属性设置",
                "method": "thing.service.property.set",
                "inputData": _auto_params([p for p in props if p["accessMode"] == "rw"]),
                "outputData": [],
            },
            {
                "identifier": "get",
                "name": "get",
                "required": True,
                "callType": "async",
                "desc": "属性获取",
                "method": "thing.service.property.get",
                "inputData": [p["identifier"] for p in props],
                "outputData": _auto_params(props),
            },
        ]
    return {"properties": [_property_out(p) for p in props], "events": events, "services": services}


def _module_out(m: dict[str, Any], auto: bool = False) -> dict[str, Any]:
    mapped: dict[str, Any] = {
        "functionBlockId": m["identifier"],
        "functionBlockName": m["name"],
        "description": m["description"] or None,
    }
    mapped.update(_features_out(m, auto))
    return finish_export(m, VENDOR, mapped, {}, lambda o: _module_in(o, ""), ("name", "description"))


def _doc_out(d: dict[str, Any], product_key: str) -> dict[str, Any]:
    exts = dict(d.get("extensions") or {})
    ali = exts.pop(VENDOR, None)
    ali = dict(ali) if isinstance(ali, dict) else {}
    schema = ali.pop("schema", TSL_SCHEMA)
    profile = ali.pop("profile", {"version": "1.0"})
    fb_doc = bool(ali.pop("functionBlockDocument", False))
    out: dict[str, Any] = {
        "schema": schema,
        "profile": {**(profile if isinstance(profile, dict) else {}), "productKey": product_key},
    }
    if fb_doc and len(d["modules"]) == 1 and not (d["properties"] or d["events"] or d["services"]):
        # the model came from a function-block document: export it in the same shape
        # (model-level extensions other than Alibaba's own fields are dropped in this shape)
        out.update(ali)
        out.update(_module_out(d["modules"][0], auto=True))
        return out
    out.update(ali)
    out.update(_features_out(d, auto=True))
    if d["modules"]:
        out["functionBlocks"] = [_module_out(m) for m in d["modules"]]
    if exts:
        out["extensions"] = exts
    return out


def export_alibaba(model: ThingModel, product_key: str, *, extensions: bool = True) -> dict[str, Any]:
    """Export a model as an Alibaba TSL document (see the module docstring for the mapping).

    ``extensions=False`` omits iotgate's ``extensions`` objects (plain TSL for Alibaba's console; the export is
    then lossy where TSL cannot express the model)."""
    doc = _doc_out(model_to_dict(model), product_key)
    return doc if extensions else strip_extensions(doc)


def export_alibaba_module(model: ThingModel, module: str, product_key: str) -> dict[str, Any]:
    """Export one custom module as Alibaba's function-block TSL (``functionBlockId`` at top level)."""
    d = model_to_dict(model)
    for m in d["modules"]:
        if m["identifier"] == module:
            head = {"schema": TSL_SCHEMA, "profile": {"version": "1.0", "productKey": product_key}}
            return {**head, **_module_out(m, auto=True)}
    raise ModelError(f"{module}: no such module")
