"""Management REST API under /api/v1 (products, thing models, devices, data)."""

from __future__ import annotations

import csv
import time
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from iotgate.admin.errors import ApiError
from iotgate.model import (
    Property,
    ThingModel,
    diff_models,
    export_alibaba,
    export_huawei,
    import_alibaba,
    import_huawei,
    model_to_dict,
    parse_model,
)
from iotgate.registry.names import device_names_from_csv
from iotgate.registry.service import DEVICE_NAME_RE, DEVICE_NAME_RULE, device_id_of
from iotgate.storage.base import DeviceRow, ProductRow, Record

if TYPE_CHECKING:
    from iotgate.server import Platform

MAX_PAGE = 1000
MAX_BATCH = 10000
MAX_INT64 = 2**63 - 1
FORMATS = ("iotgate", "alibaba", "huawei")


def platform(request: Request) -> Platform:
    return request.app.state.platform


def json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status, media_type="application/json")


async def body_json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise ApiError(422, "invalid", "request body is empty; send a JSON document")
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_json", f"request body is not valid JSON: {exc}") from None


async def body_object(request: Request) -> dict[str, Any]:
    doc = await body_json(request)
    if not isinstance(doc, dict):
        raise ApiError(422, "invalid", "request body must be a JSON object")
    return doc


def int_param(request: Request, name: str, default: int, low: int = 0, high: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid", f"query parameter {name} must be an integer") from None
    if value < low or (high is not None and value > high) or value > MAX_INT64:  # databases hold 64-bit integers
        bound = f"{low}..{high}" if high is not None else f"{low}..{MAX_INT64}"
        raise ApiError(422, "invalid", f"query parameter {name} must be {bound}")
    return value


def str_field(doc: dict[str, Any], name: str, required: bool = True, default: str = "") -> str:
    value = doc.get(name)
    if value is None:
        if required:
            raise ApiError(422, "invalid", f"{name} is required", [{"field": name, "reason": "required"}])
        return default
    if not isinstance(value, str):
        raise ApiError(422, "invalid", f"{name} must be a string", [{"field": name, "reason": "type"}])
    return value


def unknown_fields(doc: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise ApiError(422, "invalid", f"unknown field(s): {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")


# -- representations -------------------------------------------------------------------------
def product_json(row: ProductRow, device_count: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "productKey": row.product_key,
        "name": row.name,
        "nodeType": row.node_type,
        "dataFormat": row.data_format,
        "authType": row.auth_type,
        "description": row.description,
        "ratePerSecond": row.rate_per_s,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }
    if device_count is not None:
        out["deviceCount"] = device_count
    return out


def device_json(p: Platform, row: DeviceRow, secret: bool = False) -> dict[str, Any]:
    last = p.core.last_seen.get(row.id)
    out: dict[str, Any] = {
        "productKey": row.product_key,
        "deviceName": row.device_name,
        "deviceId": device_id_of(row.product_key, row.device_name),
        "nickname": row.nickname,
        "enabled": row.enabled,
        "online": bool(last and time.time() * 1000 - last < p.settings.online_window_s * 1000),
        "lastSeen": last,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }
    if secret:
        out["deviceSecret"] = row.secret
    return out


def credentials_json(row: DeviceRow) -> dict[str, Any]:
    return {
        "productKey": row.product_key,
        "deviceName": row.device_name,
        "deviceSecret": row.secret,
        "deviceId": device_id_of(row.product_key, row.device_name),
    }


def message_json(r: Record) -> dict[str, Any]:
    payload = r.payload.decode("utf-8", "replace")
    return {
        "messageId": str(r.message_id),
        "kind": r.kind,
        "topic": r.topic,
        "identifier": r.identifier,
        "time": r.ts,
        "receivedAt": r.received_at,
        "payload": payload,
        "reason": r.detail or None,
    }


# -- products --------------------------------------------------------------------------------
PRODUCT_INPUT = {"name", "nodeType", "dataFormat", "authType", "description", "ratePerSecond"}


async def create_product(request: Request) -> Response:
    doc = await body_object(request)
    unknown_fields(doc, PRODUCT_INPUT)
    row = await platform(request).registry.create_product(
        name=str_field(doc, "name"),
        node_type=str_field(doc, "nodeType", False, "direct"),
        data_format=str_field(doc, "dataFormat", False, "alink-json"),
        auth_type=str_field(doc, "authType", False, "device-secret"),
        description=str_field(doc, "description", False),
    )
    if doc.get("ratePerSecond") is not None:
        row = await platform(request).registry.update_product(row.product_key, _product_fields(doc))
    return json(product_json(row), 201)


async def list_products(request: Request) -> Response:
    offset = int_param(request, "offset", 0)
    limit = int_param(request, "limit", 100, 1, MAX_PAGE)
    rows, total = await platform(request).storage.list_products(offset, limit)
    return json({"items": [product_json(r) for r in rows], "total": total, "offset": offset, "limit": limit})


async def get_product(request: Request) -> Response:
    p = platform(request)
    pk = request.path_params["product_key"]
    row = await p.registry.product(pk)
    return json(product_json(row, await p.storage.count_devices(pk)))


def _product_fields(doc: dict[str, Any]) -> dict[str, Any]:
    names = {"name": "name", "nodeType": "node_type", "dataFormat": "data_format", "authType": "auth_type"}
    fields: dict[str, Any] = {names[k]: str_field(doc, k) for k in names if k in doc}
    if "description" in doc:
        fields["description"] = str_field(doc, "description")
    if "ratePerSecond" in doc:
        rate = doc["ratePerSecond"]
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
            raise ApiError(422, "invalid", "ratePerSecond must be a positive number or null")
        fields["rate_per_s"] = rate
    return fields


async def update_product(request: Request) -> Response:
    doc = await body_object(request)
    unknown_fields(doc, PRODUCT_INPUT)
    pk = request.path_params["product_key"]
    p = platform(request)
    if "nodeType" in doc and await p.storage.count_devices(pk):
        current = await p.registry.product(pk)
        if doc["nodeType"] != current.node_type:
            raise ApiError(409, "conflict", "nodeType cannot change while the product has devices")
    return json(product_json(await p.registry.update_product(pk, _product_fields(doc))))


async def delete_product(request: Request) -> Response:
    await platform(request).registry.delete_product(request.path_params["product_key"])
    return Response(status_code=204)


# -- thing model -----------------------------------------------------------------------------
def model_format(request: Request) -> str:
    fmt = request.query_params.get("format", "iotgate")
    if fmt not in FORMATS:
        raise ApiError(422, "invalid", f"format must be one of {', '.join(FORMATS)}")
    return fmt


def render_model(fmt: str, model: ThingModel, product_key: str) -> dict[str, Any]:
    if fmt == "alibaba":
        return export_alibaba(model, product_key)
    if fmt == "huawei":
        return export_huawei(model, product_key)
    return model_to_dict(model)


async def put_model(request: Request) -> Response:
    fmt = model_format(request)
    doc = await body_json(request)
    pk = request.path_params["product_key"]
    model = {"alibaba": import_alibaba, "huawei": import_huawei, "iotgate": parse_model}[fmt](doc)
    await platform(request).registry.save_draft(pk, model)
    return json(model_to_dict(model))


async def get_model(request: Request) -> Response:
    fmt = model_format(request)
    pk = request.path_params["product_key"]
    registry = platform(request).registry
    version = request.query_params.get("version", "draft")
    if version == "draft":
        model = await registry.draft(pk)
        label = "draft"
    else:
        wanted = None if version == "latest" else int_param(request, "version", 0, 1)
        number, model = await registry.published(pk, wanted)
        label = str(number)
    return Response(
        msgspec.json.encode(render_model(fmt, model, pk)),
        media_type="application/json",
        headers={"X-Model-Version": label},
    )


async def publish_model(request: Request) -> Response:
    pk = request.path_params["product_key"]
    version = await platform(request).registry.publish(pk)
    return json({"productKey": pk, "version": version})


async def model_versions(request: Request) -> Response:
    pk = request.path_params["product_key"]
    p = platform(request)
    await p.registry.product(pk)
    versions = await p.storage.list_model_versions(pk)
    return json({"items": [{"version": v, "publishedAt": at} for v, at in versions]})


async def model_diff(request: Request) -> Response:
    """Changes from version `from` (default: latest published) to `to` (default: the draft)."""
    pk = request.path_params["product_key"]
    registry = platform(request).registry
    to_raw = request.query_params.get("to", "draft")
    from_raw = request.query_params.get("from", "latest")

    async def load(raw: str, name: str) -> ThingModel:
        if raw == "draft":
            return await registry.draft(pk)
        return (await registry.published(pk, None if raw == "latest" else int_param(request, name, 0, 1)))[1]

    old, new = await load(from_raw, "from"), await load(to_raw, "to")
    return json({"from": from_raw, "to": to_raw, "changes": diff_models(old, new)})


# -- devices ---------------------------------------------------------------------------------
async def create_device(request: Request) -> Response:
    raw = await request.body()
    doc: dict[str, Any] = {}
    if raw.strip():
        doc = await body_object(request)
    unknown_fields(doc, {"deviceName", "nickname"})
    name = str_field(doc, "deviceName", False) or None
    if name is not None and not DEVICE_NAME_RE.match(name):  # named as sent, not as the batch's devices[0]
        raise ApiError(
            422,
            "invalid",
            f"deviceName {name!r}: {DEVICE_NAME_RULE}",
            [{"field": "deviceName", "reason": "pattern"}],
        )
    p = platform(request)
    pk = request.path_params["product_key"]
    [row] = await p.registry.add_devices(pk, [name])
    if doc.get("nickname"):
        row = await p.registry.update_device(pk, row.device_name, {"nickname": str_field(doc, "nickname")})
    return json(credentials_json(row), 201)


def names_from_csv(text: str) -> list[str | None]:
    """CSV with a `deviceName` header (other columns ignored), or one name per line."""
    try:
        return device_names_from_csv(text)
    except csv.Error as exc:
        raise ApiError(422, "invalid_csv", f"the CSV body cannot be read: {exc}") from None


async def create_devices_batch(request: Request) -> Response:
    p = platform(request)
    pk = request.path_params["product_key"]
    ctype = request.headers.get("content-type", "")
    names: list[str | None]
    if ctype.startswith("text/csv") or ctype.startswith("text/plain"):
        names = names_from_csv((await request.body()).decode("utf-8-sig", "replace"))
    else:
        doc = await body_object(request)
        unknown_fields(doc, {"devices", "count"})
        if "devices" in doc:
            devices = doc["devices"]
            if not isinstance(devices, list):
                raise ApiError(422, "invalid", 'devices must be a list of {"deviceName": ...}')
            names = []
            for i, d in enumerate(devices):
                if isinstance(d, str):
                    names.append(d)
                elif isinstance(d, dict) and isinstance(d.get("deviceName", ""), str):
                    names.append(d.get("deviceName") or None)
                else:
                    raise ApiError(422, "invalid", f'devices[{i}] must be {{"deviceName": string}} or a string')
        else:
            count = doc.get("count")
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BATCH:
                raise ApiError(422, "invalid", f"send devices: [...] or count: N (1 ≤ N ≤ {MAX_BATCH})")
            names = [None] * count
    if not names:
        raise ApiError(422, "invalid", "no devices in the request")
    if len(names) > MAX_BATCH:
        raise ApiError(422, "invalid", f"at most {MAX_BATCH} devices per batch; split the file")
    rows = await p.registry.add_devices(pk, names)
    return json({"devices": [credentials_json(r) for r in rows], "count": len(rows)}, 201)


async def _list_devices(request: Request, product_key: str | None) -> Response:
    p = platform(request)
    offset = int_param(request, "offset", 0)
    limit = int_param(request, "limit", 100, 1, MAX_PAGE)
    search = request.query_params.get("search") or None
    if product_key:
        await p.registry.product(product_key)
    rows, total = await p.storage.list_devices(product_key, search, offset, limit)
    items = [device_json(p, r) for r in rows]
    online = request.query_params.get("online")
    if online in ("true", "false"):  # filters the page; the online state lives in memory
        items = [d for d in items if d["online"] == (online == "true")]
    return json({"items": items, "total": total, "offset": offset, "limit": limit})


async def list_devices(request: Request) -> Response:
    return await _list_devices(request, request.path_params["product_key"])


async def list_all_devices(request: Request) -> Response:
    return await _list_devices(request, request.query_params.get("productKey") or None)


async def _device(request: Request) -> DeviceRow:
    return await platform(request).registry.device(
        request.path_params["product_key"], request.path_params["device_name"]
    )


async def get_device(request: Request) -> Response:
    p = platform(request)
    row = await _device(request)
    out = device_json(p, row, secret=True)
    if row.gateway_id:
        gw = await p.storage.get_device_by_id(row.gateway_id)
        if gw:
            out["gateway"] = {"productKey": gw.product_key, "deviceName": gw.device_name}
    return json(out)


async def update_device(request: Request) -> Response:
    doc = await body_object(request)
    unknown_fields(doc, {"enabled", "nickname"})
    if "enabled" in doc and not isinstance(doc["enabled"], bool):
        raise ApiError(422, "invalid", "enabled must be true or false")
    if "nickname" in doc:
        str_field(doc, "nickname")
    p = platform(request)
    row = await p.registry.update_device(request.path_params["product_key"], request.path_params["device_name"], doc)
    return json(device_json(p, row))


async def delete_device(request: Request) -> Response:
    await platform(request).registry.delete_device(
        request.path_params["product_key"], request.path_params["device_name"]
    )
    return Response(status_code=204)


async def reset_secret(request: Request) -> Response:
    row = await platform(request).registry.reset_secret(
        request.path_params["product_key"], request.path_params["device_name"]
    )
    return json(credentials_json(row))


async def attach_sub_devices(request: Request) -> Response:
    doc = await body_object(request)
    devices = doc.get("devices")
    if not isinstance(devices, list) or not devices:
        raise ApiError(422, "invalid", "devices must be a non-empty list of {productKey, deviceName}")
    pairs = []
    for i, d in enumerate(devices):
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("productKey"), str)
            or not isinstance(d.get("deviceName"), str)
        ):
            raise ApiError(422, "invalid", f'devices[{i}] must be {{"productKey": string, "deviceName": string}}')
        pairs.append((d["productKey"], d["deviceName"]))
    p = platform(request)
    rows = await p.registry.attach(await _device(request), pairs)
    return json({"items": [device_json(p, r) for r in rows]})


async def list_sub_devices(request: Request) -> Response:
    p = platform(request)
    offset = int_param(request, "offset", 0)
    limit = int_param(request, "limit", 100, 1, MAX_PAGE)
    rows, total = await p.registry.sub_devices(await _device(request), offset, limit)
    return json({"items": [device_json(p, r) for r in rows], "total": total})


async def detach_sub_device(request: Request) -> Response:
    await platform(request).registry.detach(
        await _device(request), request.path_params["sub_product_key"], request.path_params["sub_device_name"]
    )
    return Response(status_code=204)


# -- device data -----------------------------------------------------------------------------
async def device_properties(request: Request) -> Response:
    p = platform(request)
    row = await _device(request)
    latest = await p.storage.latest_values(row.id)
    model = await p.registry.compiled_model(row.product_key)
    items = []
    listed = set()
    for identifier, prop in model.properties() if model else []:
        value, ts = latest.get(identifier, (None, None))
        listed.add(identifier)
        items.append(_property_json(identifier, prop, value, ts))
    for identifier, (value, ts) in sorted(latest.items()):
        if identifier not in listed:  # reported under an older model version
            items.append({"identifier": identifier, "name": identifier, "value": value, "time": ts})
    return json({"items": items})


def _property_json(identifier: str, prop: Property, value: Any, ts: int | None) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "name": prop.name,
        "dataType": prop.data_type.type,
        "unit": prop.data_type.unit or None,
        "accessMode": prop.access_mode,
        "value": value,
        "time": ts,
    }


async def property_history(request: Request) -> Response:
    p = platform(request)
    row = await _device(request)
    now = int(time.time() * 1000)
    until = int_param(request, "to", now + 24 * 3600 * 1000)
    since = int_param(request, "from", 0)
    limit = int_param(request, "limit", 1000, 1, 100000)
    if since > until:
        raise ApiError(422, "invalid", "from must not be after to")
    identifier = request.path_params["identifier"]
    points = await p.storage.property_history(row.id, identifier, since, until, limit)
    return json({"identifier": identifier, "items": [{"time": ts, "value": v} for ts, v in points]})


MESSAGE_KINDS = {"message", "event", "rejected", "deviceinfo", "ota"}


async def device_messages(request: Request) -> Response:
    p = platform(request)
    row = await _device(request)
    kinds = [k for k in request.query_params.get("kind", "").split(",") if k]
    bad = set(kinds) - MESSAGE_KINDS
    if bad:
        raise ApiError(422, "invalid", f"kind must be among {', '.join(sorted(MESSAGE_KINDS))}")
    before_raw = request.query_params.get("before")
    before = int_param(request, "before", 0, 1) if before_raw else None
    limit = int_param(request, "limit", 50, 1, MAX_PAGE)
    records = await p.storage.device_messages(row.id, kinds or None, before, limit)
    nxt = str(records[-1].message_id) if len(records) == limit else None
    return json({"items": [message_json(r) for r in records], "next": nxt})


ROUTES = [
    Route("/api/v1/products", create_product, methods=["POST"]),
    Route("/api/v1/products", list_products, methods=["GET"]),
    Route("/api/v1/products/{product_key}", get_product, methods=["GET"]),
    Route("/api/v1/products/{product_key}", update_product, methods=["PATCH"]),
    Route("/api/v1/products/{product_key}", delete_product, methods=["DELETE"]),
    Route("/api/v1/products/{product_key}/thing-model", put_model, methods=["PUT"]),
    Route("/api/v1/products/{product_key}/thing-model", get_model, methods=["GET"]),
    Route("/api/v1/products/{product_key}/thing-model/publish", publish_model, methods=["POST"]),
    Route("/api/v1/products/{product_key}/thing-model/versions", model_versions, methods=["GET"]),
    Route("/api/v1/products/{product_key}/thing-model/diff", model_diff, methods=["GET"]),
    Route("/api/v1/products/{product_key}/devices:batch", create_devices_batch, methods=["POST"]),
    Route("/api/v1/products/{product_key}/devices", create_device, methods=["POST"]),
    Route("/api/v1/products/{product_key}/devices", list_devices, methods=["GET"]),
    Route("/api/v1/devices", list_all_devices, methods=["GET"]),
    Route("/api/v1/products/{product_key}/devices/{device_name}", get_device, methods=["GET"]),
    Route("/api/v1/products/{product_key}/devices/{device_name}", update_device, methods=["PATCH"]),
    Route("/api/v1/products/{product_key}/devices/{device_name}", delete_device, methods=["DELETE"]),
    Route("/api/v1/products/{product_key}/devices/{device_name}/reset-secret", reset_secret, methods=["POST"]),
    Route(
        "/api/v1/products/{product_key}/devices/{device_name}/sub-devices",
        attach_sub_devices,
        methods=["POST"],
    ),
    Route("/api/v1/products/{product_key}/devices/{device_name}/sub-devices", list_sub_devices, methods=["GET"]),
    Route(
        "/api/v1/products/{product_key}/devices/{device_name}/sub-devices/{sub_product_key}/{sub_device_name}",
        detach_sub_device,
        methods=["DELETE"],
    ),
    Route("/api/v1/products/{product_key}/devices/{device_name}/properties", device_properties, methods=["GET"]),
    Route(
        "/api/v1/products/{product_key}/devices/{device_name}/properties/{identifier}/history",
        property_history,
        methods=["GET"],
    ),
    Route("/api/v1/products/{product_key}/devices/{device_name}/messages", device_messages, methods=["GET"]),
]
