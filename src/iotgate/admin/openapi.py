"""The OpenAPI 3.1 document of the management API and a self-contained docs page (no CDN).

Paths come from the route tables (`admin/api.py`, `admin/ops_api.py`, `admin/rules_api.py`, the
console's `admin/console_api.py`), so a route cannot be missing from the document; each operation's
parameters, request body and responses are written out below (`OPERATIONS`), and tests/test_openapi.py
fails for a route the admin app serves without an entry there.
Schemas are JSON Schema 2020-12, as OpenAPI 3.1 uses it.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from iotgate import __version__
from iotgate.auth.signing import ALINK_SIGN_METHODS
from iotgate.forward.formats import FORMATS as FORWARD_FORMATS
from iotgate.forward.message import SOURCES as FORWARD_SOURCES
from iotgate.forward.targets import TYPES as TARGET_TYPES
from iotgate.registry.service import DEVICE_NAME_RE

JSON = "application/json"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STR = {"type": "string"}
INT = {"type": "integer"}
MS = {"type": "integer", "description": "milliseconds since the Unix epoch"}
DEVICE_NAME = {"type": "string", "pattern": DEVICE_NAME_RE.pattern}
NODE_TYPES = ["direct", "gateway", "sub-device"]
DATA_FORMATS = ["alink-json", "custom"]
COUNT = {"type": "integer", "minimum": 0}
RATE = {"type": "number", "minimum": 0, "description": "per second"}
ID = {"type": "integer", "minimum": 1}


def obj(required: list[str], properties: Schema, **extra: Any) -> Schema:
    return {"type": "object", "required": required, "properties": properties, **extra}


def rule_input(required: list[str]) -> Schema:
    return obj(
        required,
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "source": {"enum": list(FORWARD_SOURCES)},
            "productKey": nullable({"type": "string", "description": "only this product's devices"}),
            "where": nullable({"type": "string", "description": "filter expression (docs/forwarding.md)"}),
            "format": {"enum": list(FORWARD_FORMATS), "default": "iotgate"},
            "enabled": {"type": "boolean", "default": True},
            "targets": {"type": "array", "minItems": 1, "maxItems": 16, "items": ref("Target")},
        },
        additionalProperties=False,
    )


SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "examples": ["invalid", "not_found", "conflict", "unauthorized"]},
                    "message": STR,
                    "details": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
    },
    "ProductInput": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "nodeType": {"enum": NODE_TYPES, "default": "direct"},
            "dataFormat": {"enum": DATA_FORMATS, "default": "alink-json"},
            "authType": {"enum": ["device-secret"], "default": "device-secret"},
            "description": STR,
            "ratePerSecond": nullable({"type": "number", "exclusiveMinimum": 0}),
        },
    },
    "ProductPatch": {
        "type": "object",
        "additionalProperties": False,
        "description": "Any of the create fields; nodeType only while the product has no devices.",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "nodeType": {"enum": NODE_TYPES},
            "dataFormat": {"enum": DATA_FORMATS},
            "authType": {"enum": ["device-secret"]},
            "description": STR,
            "ratePerSecond": nullable({"type": "number", "exclusiveMinimum": 0}),
        },
    },
    "Product": {
        "type": "object",
        "required": ["productKey", "name", "nodeType", "dataFormat", "authType", "createdAt", "updatedAt"],
        "properties": {
            "productKey": {"type": "string", "examples": ["a1B2c3D4e5F"]},
            "name": STR,
            "nodeType": {"enum": NODE_TYPES},
            "dataFormat": {"enum": DATA_FORMATS},
            "authType": STR,
            "description": STR,
            "ratePerSecond": nullable({"type": "number"}),
            "createdAt": MS,
            "updatedAt": MS,
            "deviceCount": {"type": "integer", "description": "only on GET of one product"},
        },
    },
    "ProductPage": {
        "type": "object",
        "required": ["items", "total", "offset", "limit"],
        "properties": {"items": {"type": "array", "items": ref("Product")}, "total": INT, "offset": INT, "limit": INT},
    },
    "ThingModel": {
        "type": "object",
        "description": "A thing model: iotgate's own format (properties, events, services, modules), "
        "an Alibaba TSL document or a Huawei product model, as chosen by `format` (docs/thing-model.md).",
        "examples": [
            {
                "properties": [
                    {
                        "identifier": "temperature",
                        "name": "Temperature",
                        "accessMode": "r",
                        "dataType": {"type": "int32", "specs": {"min": -10, "max": 50, "unit": "°C"}},
                    }
                ]
            }
        ],
    },
    "PublishResult": {
        "type": "object",
        "required": ["productKey", "version"],
        "properties": {"productKey": STR, "version": INT},
    },
    "ModelVersions": {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "items": {"type": "object", "properties": {"version": INT, "publishedAt": MS}},
            }
        },
    },
    "ModelDiff": {
        "type": "object",
        "required": ["from", "to", "changes"],
        "properties": {
            "from": STR,
            "to": STR,
            "changes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "change": {"enum": ["added", "removed", "changed"]},
                        "kind": STR,
                        "identifier": STR,
                    },
                },
            },
        },
    },
    "DeviceInput": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "deviceName": {**DEVICE_NAME, "description": "generated when omitted"},
            "nickname": STR,
        },
    },
    "DeviceBatchInput": {
        "oneOf": [
            {
                "type": "object",
                "required": ["devices"],
                "additionalProperties": False,
                "properties": {
                    "devices": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 10000,
                        "items": {
                            "anyOf": [
                                DEVICE_NAME,
                                {"type": "object", "properties": {"deviceName": DEVICE_NAME}},
                            ]
                        },
                    }
                },
            },
            {
                "type": "object",
                "required": ["count"],
                "additionalProperties": False,
                "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 10000}},
            },
        ]
    },
    "Credentials": {
        "type": "object",
        "required": ["productKey", "deviceName", "deviceSecret", "deviceId"],
        "properties": {
            "productKey": STR,
            "deviceName": STR,
            "deviceSecret": {"type": "string", "description": "the device's secret: store it on the device"},
            "deviceId": {"type": "string", "description": "IoTDA device_id: {productKey}_{deviceName}"},
        },
    },
    "BatchResult": {
        "type": "object",
        "required": ["devices", "count"],
        "properties": {"devices": {"type": "array", "items": ref("Credentials")}, "count": INT},
    },
    "Device": {
        "type": "object",
        "required": ["productKey", "deviceName", "deviceId", "enabled", "online", "createdAt", "updatedAt"],
        "properties": {
            "productKey": STR,
            "deviceName": STR,
            "deviceId": STR,
            "nickname": STR,
            "enabled": {"type": "boolean"},
            "online": {"type": "boolean", "description": "reported within the online window"},
            "lastSeen": nullable(MS),
            "createdAt": MS,
            "updatedAt": MS,
            "deviceSecret": {"type": "string", "description": "only on GET of one device"},
            "gateway": {"type": "object", "properties": {"productKey": STR, "deviceName": STR}},
        },
    },
    "DevicePage": {
        "type": "object",
        "required": ["items", "total"],
        "properties": {"items": {"type": "array", "items": ref("Device")}, "total": INT, "offset": INT, "limit": INT},
    },
    "DevicePatch": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enabled": {"type": "boolean", "description": "false: the device's tokens stop working at once"},
            "nickname": STR,
        },
    },
    "SubDevicesInput": {
        "type": "object",
        "required": ["devices"],
        "properties": {
            "devices": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["productKey", "deviceName"],
                    "properties": {"productKey": STR, "deviceName": STR},
                },
            }
        },
    },
    "DeviceItems": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": ref("Device")}, "total": INT},
    },
    "Properties": {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["identifier", "value", "time"],
                    "properties": {
                        "identifier": STR,
                        "name": STR,
                        "dataType": nullable(STR),
                        "unit": nullable(STR),
                        "accessMode": nullable(STR),
                        "value": {"description": "the latest value (any JSON type), null before the first report"},
                        "time": nullable(MS),
                    },
                },
            }
        },
    },
    "History": {
        "type": "object",
        "required": ["identifier", "items"],
        "properties": {
            "identifier": STR,
            "items": {
                "type": "array",
                "items": {"type": "object", "properties": {"time": MS, "value": {}}},
            },
        },
    },
    "Message": {
        "type": "object",
        "required": ["messageId", "kind", "time", "receivedAt", "payload"],
        "properties": {
            "messageId": {"type": "string", "description": "64-bit ID as a string (exceeds 2^53)"},
            "kind": {"enum": ["message", "event", "rejected", "deviceinfo", "ota"]},
            "topic": STR,
            "identifier": STR,
            "time": MS,
            "receivedAt": MS,
            "payload": {"type": "string", "description": "the payload as UTF-8 text"},
            "reason": nullable({"type": "string", "description": "why a rejected report was rejected"}),
        },
    },
    "MessagePage": {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {"type": "array", "items": ref("Message")},
            "next": nullable({"type": "string", "description": "pass as `before` for the next page"}),
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "at", "actor", "method", "path", "status"],
        "properties": {
            "id": INT,
            "at": MS,
            "actor": {"type": "string", "description": "key:<admin key fingerprint> or console:<session fingerprint>"},
            "method": STR,
            "path": STR,
            "target": {"type": "string", "description": "product key, or productKey/deviceName"},
            "status": INT,
            "client": STR,
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {"type": "array", "items": ref("AuditEntry")},
            "next": nullable({"type": "integer", "description": "pass as `before` for the next page"}),
        },
    },
    "Overview": obj(
        ["time", "products", "devices", "rate", "lastHour", "totals", "ratesScope"],
        {
            "time": MS,
            "products": {**COUNT, "description": "number of products"},
            "devices": obj(
                ["total", "online", "onlineWindowSeconds"],
                {"total": COUNT, "online": COUNT, "onlineWindowSeconds": {"type": "number", "exclusiveMinimum": 0}},
            ),
            "rate": obj(
                ["windowSeconds", "messagesPerSecond", "rejectedPerSecond"],
                {"windowSeconds": INT, "messagesPerSecond": RATE, "rejectedPerSecond": RATE},
            ),
            "lastHour": obj(
                ["start", "bucketSeconds", "messages", "rejected"],
                {
                    "start": MS,
                    "bucketSeconds": INT,
                    "messages": {"type": "array", "items": RATE},
                    "rejected": {"type": "array", "items": RATE},
                },
            ),
            "totals": obj(
                ["messages", "rejected", "since"],
                {"messages": COUNT, "rejected": COUNT, "since": {**MS, "description": "when counting started"}},
            ),
            "ratesScope": {
                "enum": ["server", "this-process"],
                "description": "this-process: other processes ingest too (--workers, shared PostgreSQL)",
            },
        },
        description="Counted in this server process's memory since it started; devices from the database.",
    ),
    "Connection": obj(
        ["baseUrl", "tls", "listeners", "alink", "iotda", "certificates"],
        {
            "baseUrl": {"type": "string", "description": "the device listener as this request reached the server"},
            "tls": {"type": "boolean"},
            "tlsProfile": STR,
            "listeners": {"type": "array", "items": obj(["host", "port"], {"host": STR, "port": INT})},
            "alink": {"type": "object", "additionalProperties": STR, "description": "Alibaba dialect URLs"},
            "iotda": {"type": "object", "additionalProperties": STR, "description": "Huawei dialect URLs"},
            "certificates": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": STR,
                        "subject": STR,
                        "issuer": STR,
                        "notAfter": MS,
                        "keyType": STR,
                        "names": {"type": "array", "items": STR},
                        "sha256": STR,
                        "error": STR,
                    },
                },
            },
        },
    ),
    "SignInput": obj(
        ["productKey", "deviceName"],
        {
            "productKey": {"type": "string", "minLength": 1},
            "deviceName": {"type": "string", "minLength": 1},
            "deviceSecret": {"type": "string", "description": "default: the registered device's secret"},
            "signMethod": {"enum": sorted(ALINK_SIGN_METHODS), "default": "hmacsha256"},
            "clientId": STR,
            "timestamp": {
                "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^[0-9]+$"}],
                "description": "Alibaba timestamp, ms",
            },
            "iotdaTimestamp": {"type": "string", "pattern": "^[0-9]{10}$", "description": "UTC YYYYMMDDHH"},
        },
        additionalProperties=False,
    ),
    "SignResult": obj(
        ["alink", "iotda"],
        {
            "alink": obj(
                ["url", "body", "signContent"],
                {"url": STR, "body": {"type": "object", "description": "the POST /auth body"}, "signContent": STR},
            ),
            "iotda": obj(
                ["url", "body"],
                {"url": STR, "body": {"type": "object", "description": "the POST /v5/device-auth body"}},
            ),
        },
    ),
    "Target": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"enum": list(TARGET_TYPES)},
            "id": {**ID, "description": "a stored target's id (PATCH: keeps it, and *** keeps its secrets)"},
        },
        "description": "The type's options (url, topic, subject, ...: docs/forwarding.md); secrets show as ***.",
    },
    "RuleInput": rule_input(["name", "source", "targets"]),
    "RulePatch": rule_input([]),
    "Rule": obj(
        ["id", "name", "source", "productKey", "where", "format", "enabled", "targets", "createdAt", "updatedAt"],
        {
            "id": ID,
            "name": STR,
            "source": {"enum": list(FORWARD_SOURCES)},
            "productKey": nullable(STR),
            "where": nullable(STR),
            "format": {"enum": list(FORWARD_FORMATS)},
            "enabled": {"type": "boolean"},
            "targets": {
                "type": "array",
                "items": {
                    "allOf": [ref("Target")],
                    "required": ["id", "type"],
                    "properties": {"stats": {**nullable(ref("TargetStats")), "description": "in the rule list only"}},
                },
            },
            "createdAt": MS,
            "updatedAt": MS,
        },
    ),
    "RulePage": obj(["items", "total"], {"items": {"type": "array", "items": ref("Rule")}, "total": COUNT}),
    "TargetStats": obj(
        ["targetId", "matched", "filteredOut", "delivered", "deadLettered", "inFlight", "queued", "failing"],
        {
            "targetId": ID,
            "type": nullable({"enum": list(TARGET_TYPES)}),
            "matched": COUNT,
            "filteredOut": COUNT,
            "delivered": COUNT,
            "deadLettered": COUNT,
            "inFlight": COUNT,
            "queued": COUNT,
            "redelivered": {**COUNT, "description": "deliveries after an attempt that may have arrived too"},
            "retries": COUNT,
            "replayed": COUNT,
            "failing": {"type": "boolean"},
            "lastError": nullable(STR),
            "lastErrorAt": nullable(MS),
            "lastDeliveredAt": nullable(MS),
        },
    ),
    "RuleStats": obj(
        ["ruleId", "name", "targets", "matched", "delivered", "deadLettered", "queued"],
        {
            "ruleId": ID,
            "name": STR,
            "targets": {"type": "array", "items": ref("TargetStats")},
            **{
                k: {**COUNT, "description": "sum over the targets"}
                for k in ("matched", "filteredOut", "delivered", "deadLettered", "inFlight", "queued", "redelivered")
            },
        },
    ),
    "DeadLetter": obj(
        ["id", "targetId", "messageId", "productKey", "deviceName", "source", "body", "bodyEncoding", "deadAt"],
        {
            "id": ID,
            "targetId": ID,
            "messageId": {"type": "string", "description": "64-bit ID as a string"},
            "productKey": STR,
            "deviceName": STR,
            "source": STR,
            "identifier": STR,
            "topic": nullable(STR),
            "contentType": STR,
            "body": {"type": "string", "description": "the message as it would have been sent"},
            "bodyEncoding": {"enum": ["utf-8", "base64"]},
            "createdAt": MS,
            "deadAt": MS,
            "tries": COUNT,
            "failures": COUNT,
            "lastError": nullable(STR),
        },
    ),
    "DeadLetterPage": obj(
        ["items", "next"],
        {
            "items": {"type": "array", "items": ref("DeadLetter")},
            "next": nullable({"type": "string", "description": "pass as `after` for the next page"}),
        },
    ),
    "ReplayInput": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "target": {**ID, "description": "only this target's dead letters"},
            "ids": {"type": "array", "maxItems": 10000, "items": ID, "description": "only these dead letters"},
        },
    },
    "ReplayResult": obj(["replayed"], {"replayed": COUNT}),
    "RotatedKey": {
        "type": "object",
        "required": ["adminKey", "keyId", "previousKeyId"],
        "properties": {
            "adminKey": {"type": "string", "description": "the new key, shown once (also in the data dir)"},
            "keyId": STR,
            "previousKeyId": STR,
        },
    },
}


def query(name: str, schema: Schema, description: str = "") -> Schema:
    out: Schema = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        out["description"] = description
    return out


MAX_INT64 = 2**63 - 1
PAGE = [
    query("offset", {"type": "integer", "minimum": 0, "maximum": MAX_INT64, "default": 0}),
    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
]
FORMAT = query("format", {"enum": ["iotgate", "alibaba", "huawei"], "default": "iotgate"}, "document format")
DEVICE_LIST = [
    *PAGE,
    query("search", STR, "name or nickname contains"),
    query("online", {"enum": ["true", "false"]}, "filters the page by online state"),
]
VERSION = {"type": "string", "pattern": "^(draft|latest|[1-9][0-9]{0,8})$"}


def body(schema: Schema, required: bool = True, extra: dict[str, Schema] | None = None) -> Schema:
    content = {JSON: {"schema": schema}, **(extra or {})}
    return {"required": required, "content": content}


def ok(schema_name: str | None, status: int = 200, description: str = "OK") -> dict[str, Schema]:
    if schema_name is None:
        return {str(status): {"description": description}}
    return {str(status): {"description": description, "content": {JSON: {"schema": ref(schema_name)}}}}


Op = tuple[str, str, dict[str, Any]]  # tag, summary, extra (parameters, requestBody, responses, errors)

# (method, route path as in admin/api.py) -> operation
OPERATIONS: dict[tuple[str, str], Op] = {
    ("POST", "/api/v1/products"): (
        "products",
        "Create a product",
        {"requestBody": body(ref("ProductInput")), "responses": ok("Product", 201, "Created"), "errors": [422]},
    ),
    ("GET", "/api/v1/products"): ("products", "List products", {"parameters": PAGE, "responses": ok("ProductPage")}),
    ("GET", "/api/v1/products/{product_key}"): (
        "products",
        "Get a product (with deviceCount)",
        {"responses": ok("Product"), "errors": [404]},
    ),
    ("PATCH", "/api/v1/products/{product_key}"): (
        "products",
        "Change a product (ratePerSecond: the per-device rate limit of its devices)",
        {"requestBody": body(ref("ProductPatch")), "responses": ok("Product"), "errors": [404, 409, 422]},
    ),
    ("DELETE", "/api/v1/products/{product_key}"): (
        "products",
        "Delete a product without devices",
        {"responses": ok(None, 204, "Deleted"), "errors": [404, 409]},
    ),
    ("PUT", "/api/v1/products/{product_key}/thing-model"): (
        "thing model",
        "Replace the draft thing model (iotgate, Alibaba TSL or Huawei product model)",
        {
            "parameters": [FORMAT],
            "requestBody": body(ref("ThingModel")),
            "responses": ok("ThingModel"),
            "errors": [404, 422],
        },
    ),
    ("GET", "/api/v1/products/{product_key}/thing-model"): (
        "thing model",
        "Get the draft or a published version of the thing model",
        {
            "parameters": [FORMAT, query("version", VERSION, "draft (default), latest or a version number")],
            "responses": {
                "200": {
                    "description": "The document; header X-Model-Version names the version",
                    "headers": {"X-Model-Version": {"schema": STR}},
                    "content": {JSON: {"schema": ref("ThingModel")}},
                }
            },
            "errors": [404, 422],
        },
    ),
    ("POST", "/api/v1/products/{product_key}/thing-model/publish"): (
        "thing model",
        "Publish the draft as the next version",
        {"responses": ok("PublishResult"), "errors": [404, 422]},
    ),
    ("GET", "/api/v1/products/{product_key}/thing-model/versions"): (
        "thing model",
        "List published versions",
        {"responses": ok("ModelVersions"), "errors": [404]},
    ),
    ("GET", "/api/v1/products/{product_key}/thing-model/diff"): (
        "thing model",
        "Changes between two versions (default: latest published to draft)",
        {
            "parameters": [
                query("from", VERSION, "draft, latest (default) or a version number"),
                query("to", VERSION, "draft (default), latest or a version number"),
            ],
            "responses": ok("ModelDiff"),
            "errors": [404, 422],
        },
    ),
    ("POST", "/api/v1/products/{product_key}/devices:batch"): (
        "devices",
        "Create up to 10,000 devices at once, all or nothing (JSON, or CSV with a deviceName column)",
        {
            "requestBody": body(
                ref("DeviceBatchInput"),
                extra={"text/csv": {"schema": {"type": "string"}}},
            ),
            "responses": ok("BatchResult", 201, "Created"),
            "errors": [404, 409, 422],
        },
    ),
    ("POST", "/api/v1/products/{product_key}/devices"): (
        "devices",
        "Create a device; returns its credentials",
        {
            "requestBody": body(ref("DeviceInput"), required=False),
            "responses": ok("Credentials", 201, "Created"),
            "errors": [404, 409, 422],
        },
    ),
    ("GET", "/api/v1/products/{product_key}/devices"): (
        "devices",
        "List a product's devices",
        {"parameters": DEVICE_LIST, "responses": ok("DevicePage"), "errors": [404]},
    ),
    ("GET", "/api/v1/devices"): (
        "devices",
        "List devices of all products",
        {
            "parameters": [*DEVICE_LIST, query("productKey", STR, "only this product's devices")],
            "responses": ok("DevicePage"),
            "errors": [404, 422],
        },
    ),
    ("GET", "/api/v1/products/{product_key}/devices/{device_name}"): (
        "devices",
        "Get a device with its secret",
        {"responses": ok("Device"), "errors": [404]},
    ),
    ("PATCH", "/api/v1/products/{product_key}/devices/{device_name}"): (
        "devices",
        "Enable or disable a device, set its nickname",
        {"requestBody": body(ref("DevicePatch")), "responses": ok("Device"), "errors": [404, 422]},
    ),
    ("DELETE", "/api/v1/products/{product_key}/devices/{device_name}"): (
        "devices",
        "Delete a device and its data",
        {"responses": ok(None, 204, "Deleted"), "errors": [404, 409]},
    ),
    ("POST", "/api/v1/products/{product_key}/devices/{device_name}/reset-secret"): (
        "devices",
        "Give a device a new secret; its tokens stop working",
        {"responses": ok("Credentials"), "errors": [404]},
    ),
    ("POST", "/api/v1/products/{product_key}/devices/{device_name}/sub-devices"): (
        "gateways",
        "Attach sub-devices to a gateway device",
        {"requestBody": body(ref("SubDevicesInput")), "responses": ok("DeviceItems"), "errors": [404, 409, 422]},
    ),
    ("GET", "/api/v1/products/{product_key}/devices/{device_name}/sub-devices"): (
        "gateways",
        "List a gateway's sub-devices",
        {"parameters": PAGE, "responses": ok("DeviceItems"), "errors": [404]},
    ),
    (
        "DELETE",
        "/api/v1/products/{product_key}/devices/{device_name}/sub-devices/{sub_product_key}/{sub_device_name}",
    ): ("gateways", "Detach a sub-device", {"responses": ok(None, 204, "Detached"), "errors": [404, 409]}),
    ("GET", "/api/v1/products/{product_key}/devices/{device_name}/properties"): (
        "device data",
        "Running status: the latest value of every property",
        {"responses": ok("Properties"), "errors": [404]},
    ),
    ("GET", "/api/v1/products/{product_key}/devices/{device_name}/properties/{identifier}/history"): (
        "device data",
        "History of one property, newest first",
        {
            "parameters": [
                query("from", {"type": "integer", "minimum": 0, "maximum": MAX_INT64}, "since (ms, inclusive)"),
                query(
                    "to",
                    {"type": "integer", "minimum": 0, "maximum": MAX_INT64},
                    "until (ms, inclusive); default: now + 24 h",
                ),
                query("limit", {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1000}),
            ],
            "responses": ok("History"),
            "errors": [404, 422],
        },
    ),
    ("GET", "/api/v1/products/{product_key}/devices/{device_name}/messages"): (
        "device data",
        "Raw messages, events, device info, OTA reports and rejected reports, newest first",
        {
            "parameters": [
                query("kind", STR, "comma-separated: message,event,rejected,deviceinfo,ota"),
                query(
                    "before", {"type": "integer", "minimum": 1, "maximum": MAX_INT64}, "the `next` of the previous page"
                ),
                query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}),
            ],
            "responses": ok("MessagePage"),
            "errors": [404, 422],
        },
    ),
    ("POST", "/api/v1/admin/rotate-key"): (
        "operations",
        "Replace the admin key (stored in the data dir); the old key stops working at once",
        {"responses": ok("RotatedKey"), "errors": [409]},
    ),
    ("GET", "/api/v1/audit"): (
        "operations",
        "Admin actions (every mutating /api request), newest first",
        {
            "parameters": [
                query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
                query(
                    "before", {"type": "integer", "minimum": 1, "maximum": MAX_INT64}, "the `next` of the previous page"
                ),
            ],
            "responses": ok("AuditPage"),
            "errors": [422],
        },
    ),
    # -- the console's endpoints (admin/console_api.py) ---------------------------------------
    ("GET", "/api/v1/stats/overview"): (
        "console",
        "Devices total/online, messages/s and rejected/s now and over the last hour",
        {
            "parameters": [
                query("bucket", {"enum": [1, 5, 10, 30, 60, 300], "default": 10}, "seconds per lastHour bucket")
            ],
            "responses": ok("Overview"),
            "errors": [422],
        },
    ),
    ("GET", "/api/v1/products/{product_key}/devices/{device_name}/events"): (
        "console",
        "Live events of one device (Server-Sent Events) as its reports commit",
        {
            "responses": {
                "200": {
                    "description": "An endless text/event-stream: `ready` ({deviceId}) first, then `property` "
                    "({messageId, time, receivedAt, values}) and `message` (a Message: raw messages, events, "
                    "rejected reports) as they commit; `overflow` ends a stream whose reader fell behind; "
                    "comment lines keep the connection alive.",
                    "content": {"text/event-stream": {"schema": STR}},
                }
            },
            "errors": [404, 503],
        },
    ),
    ("GET", "/api/v1/tools/connection"): (
        "console",
        "Device endpoints of both dialects and the device listener's certificates",
        {"responses": ok("Connection")},
    ),
    ("GET", "/api/v1/tools/device-cert"): (
        "console",
        "The device listener's certificate (PEM), for device trust stores",
        {
            "responses": {"200": {"description": "PEM", "content": {"application/x-pem-file": {"schema": STR}}}},
            "errors": [404],
        },
    ),
    ("POST", "/api/v1/tools/sign"): (
        "console",
        "The signed Alibaba /auth body and Huawei /v5/device-auth body of a device",
        {"requestBody": body(ref("SignInput")), "responses": ok("SignResult"), "errors": [404, 422]},
    ),
    # -- forwarding rules (admin/rules_api.py, docs/forwarding.md) ------------------------------
    ("POST", "/api/v1/rules"): (
        "forwarding",
        "Create a forwarding rule",
        {"requestBody": body(ref("RuleInput")), "responses": ok("Rule", 201, "Created"), "errors": [404, 409, 503]},
    ),
    ("GET", "/api/v1/rules"): (
        "forwarding",
        "List rules with every target's counters",
        {"responses": ok("RulePage"), "errors": [503]},
    ),
    ("GET", "/api/v1/rules/{rule_id}"): ("forwarding", "Get a rule", {"responses": ok("Rule"), "errors": [404, 503]}),
    ("PATCH", "/api/v1/rules/{rule_id}"): (
        "forwarding",
        "Change a rule (absent fields stay; targets: send stored ones back with their id)",
        {"requestBody": body(ref("RulePatch")), "responses": ok("Rule"), "errors": [404, 409, 503]},
    ),
    ("DELETE", "/api/v1/rules/{rule_id}"): (
        "forwarding",
        "Delete a rule with its queued messages and dead letters",
        {"responses": ok(None, 204, "Deleted"), "errors": [404, 503]},
    ),
    ("GET", "/api/v1/rules/{rule_id}/stats"): (
        "forwarding",
        "A rule's delivery counters, per target and summed",
        {"responses": ok("RuleStats"), "errors": [404, 503]},
    ),
    ("GET", "/api/v1/rules/{rule_id}/dead-letters"): (
        "forwarding",
        "Messages that could not be delivered, oldest first",
        {
            "parameters": [
                query("target", ID, "only this target's"),
                query(
                    "after", {"type": "integer", "minimum": 0, "maximum": MAX_INT64}, "the `next` of the previous page"
                ),
                query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
            ],
            "responses": ok("DeadLetterPage"),
            "errors": [404, 503],
        },
    ),
    ("POST", "/api/v1/rules/{rule_id}/dead-letters:replay"): (
        "forwarding",
        "Queue dead letters for delivery again (default: all of the rule's)",
        {
            "parameters": [query("target", ID, "only this target's")],
            "requestBody": body(ref("ReplayInput"), required=False),
            "responses": ok("ReplayResult"),
            "errors": [404, 503],
        },
    ),
}

ERROR_TEXT = {
    401: "No or wrong admin key",
    404: "Unknown product, device, version or sub-device",
    409: "Conflict: duplicate name, product still has devices, and similar",
    422: "Invalid input; the message names the field and the rule",
    503: "Not available now: forwarding is not running, or too many live event streams",
}
PATH_PARAMS = {
    "product_key": "productKey",
    "device_name": "deviceName",
    "sub_product_key": "subProductKey",
    "sub_device_name": "subDeviceName",
    "identifier": "identifier",
    "rule_id": "ruleId",
}
_PARAM = re.compile(r"\{([a-z_]+)\}")


def documented_routes() -> list[Route]:
    from iotgate.admin import api, rules_api
    from iotgate.admin.console_api import API_ROUTES, ConsoleApi
    from iotgate.admin.ops_api import ops_routes

    console = [Route(path, getattr(ConsoleApi, handler), methods=[method]) for method, path, handler in API_ROUTES]
    return [r for r in [*api.ROUTES, *ops_routes(), *rules_api.ROUTES, *console] if r.path.startswith("/api/")]


def build_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in documented_routes():
        for method in sorted((route.methods or set()) - {"HEAD"}):
            tag, summary, extra = OPERATIONS.get(
                (method, route.path), ("other", (route.endpoint.__doc__ or route.name).strip(), {})
            )
            path = _PARAM.sub(lambda m: "{" + PATH_PARAMS.get(m.group(1), m.group(1)) + "}", route.path)
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                for name in (PATH_PARAMS.get(n, n) for n in _PARAM.findall(route.path))
            ] + list(extra.get("parameters", []))
            responses = dict(extra.get("responses") or {"200": {"description": "OK"}})
            errors = set(extra.get("errors", []))
            if "requestBody" in extra or any(p["in"] == "query" for p in params):
                errors.add(422)  # a body or query parameter that breaks its schema
            for status in sorted({401, *errors}):
                responses[str(status)] = {
                    "description": ERROR_TEXT[status],
                    "content": {JSON: {"schema": ref("Error")}},
                }
            op: dict[str, Any] = {
                "tags": [tag],
                "summary": summary,
                "operationId": f"{route.name}_{method.lower()}",
                "parameters": params,
                "responses": responses,
            }
            if "requestBody" in extra:
                op["requestBody"] = extra["requestBody"]
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "iotgate management API",
            "version": __version__,
            "description": "Products, thing models, devices and their data, forwarding rules, the console's "
            "live statistics and tools, audit log and admin key. Every operation needs `Authorization: Bearer "
            "<admin key>` (or, from the console, its session cookie and, on unsafe methods, X-CSRF-Token). Errors are "
            '`{"error": {"code", "message", "details"?}}`; times are milliseconds since the Unix epoch.',
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "security": [{"adminKey": []}],
        "paths": paths,
    }


_DOCUMENT: dict[str, Any] | None = None


async def openapi_json(request: Request) -> Response:
    global _DOCUMENT
    if _DOCUMENT is None:
        _DOCUMENT = build_document()
    return JSONResponse(_DOCUMENT)


DOCS_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>iotgate management API</title>
<style>
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1.5rem;max-width:72rem;color:#1b1f24}
code,pre,textarea,input{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}
pre{background:#f4f5f7;padding:.6rem;overflow:auto;border-radius:4px;max-height:24rem}
details{border:1px solid #d8dde3;border-radius:6px;margin:.4rem 0;background:#fff}
summary{cursor:pointer;padding:.5rem .7rem;display:flex;gap:.7rem;align-items:baseline}
.m{font-weight:700;min-width:4.2rem;text-transform:uppercase}.get{color:#0a7}.post{color:#06c}
.patch{color:#a60}.put{color:#84c}.delete{color:#c22}.body{padding:0 .9rem .8rem}
table{border-collapse:collapse;margin:.3rem 0}td,th{border:1px solid #d8dde3;padding:.2rem .5rem;text-align:left}
h2{margin-top:1.6rem;text-transform:capitalize}.bar{display:flex;gap:.5rem;align-items:center;flex-wrap:wrap}
input{padding:.3rem}textarea{width:100%;min-height:5rem}button{padding:.3rem .8rem;cursor:pointer}
.status{font-weight:700}.muted{color:#667}
</style></head><body>
<h1>iotgate management API</h1>
<p class="muted" id="about"></p>
<p>OpenAPI 3.1 document: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.
Every call needs <code>Authorization: Bearer &lt;admin key&gt;</code>.</p>
<div class="bar"><label for="key">Admin key for "Send":</label>
<input id="key" type="password" size="50" autocomplete="off" placeholder="kept in this tab only">
<input id="filter" placeholder="filter operations" size="24"></div>
<div id="ops"></div>
<script>
"use strict";
const el=(tag,attrs={},...kids)=>{const e=document.createElement(tag);
  for(const[k,v]of Object.entries(attrs))e.setAttribute(k,v);
  for(const k of kids)e.append(k instanceof Node?k:document.createTextNode(String(k)));return e;};
const keyInput=document.getElementById('key');
keyInput.value=sessionStorage.getItem('iotgateKey')||'';
keyInput.addEventListener('input',()=>sessionStorage.setItem('iotgateKey',keyInput.value));
let doc;
function resolve(s,depth=0){
  if(!s||depth>6)return s;
  if(s.$ref)return resolve(doc.components.schemas[s.$ref.split('/').pop()],depth+1);
  if(Array.isArray(s))return s.map(x=>resolve(x,depth+1));
  if(typeof s!=='object')return s;
  const out={};for(const[k,v]of Object.entries(s))out[k]=resolve(v,depth+1);return out;}
const pretty=s=>el('pre',{},JSON.stringify(resolve(s),null,2));
function example(s,depth=0){
  s=resolve(s);if(!s||depth>4)return null;
  if(s.examples)return s.examples[0];if(s.default!==undefined)return s.default;
  if(s.enum)return s.enum[0];if(s.oneOf)return example(s.oneOf[0],depth+1);
  if(s.anyOf)return example(s.anyOf[0],depth+1);
  if(s.type==='object'){const o={};for(const k of s.required||Object.keys(s.properties||{}).slice(0,3))
    o[k]=example((s.properties||{})[k]||{},depth+1);return o;}
  if(s.type==='array')return[];if(s.type==='integer'||s.type==='number')return s.minimum||1;
  if(s.type==='boolean')return true;return 'string';}
function operation(path,method,op){
  const d=el('details',{'data-text':(method+' '+path+' '+op.summary).toLowerCase()});
  d.append(el('summary',{},el('span',{class:'m '+method},method),el('code',{},path),el('span',{},op.summary)));
  const b=el('div',{class:'body'});d.append(b);
  const inputs={};
  if(op.parameters.length){
    const t=el('table',{},el('tr',{},el('th',{},'parameter'),el('th',{},'in'),el('th',{},'schema'),el('th',{},'value')));
    for(const p of op.parameters){const i=el('input',{size:18});inputs[p.in+':'+p.name]=i;
      t.append(el('tr',{},el('td',{},p.name+(p.required?' *':'')),el('td',{},p.in),
        el('td',{},el('code',{},JSON.stringify(resolve(p.schema))),p.description?el('div',{class:'muted'},p.description):''),
        el('td',{},i)));}
    b.append(t);}
  let bodyBox=null;
  if(op.requestBody){const s=op.requestBody.content['application/json'].schema;
    b.append(el('h4',{},'Request body'+(op.requestBody.required?'':' (optional)')),pretty(s));
    bodyBox=el('textarea',{});bodyBox.value=JSON.stringify(example(s),null,2);b.append(bodyBox);}
  b.append(el('h4',{},'Responses'));
  for(const[status,r]of Object.entries(op.responses)){
    b.append(el('div',{},el('span',{class:'status'},status),' ',r.description));
    const c=r.content&&r.content['application/json'];if(c&&status<'400')b.append(pretty(c.schema));}
  const out=el('pre',{},'');const send=el('button',{},'Send');
  send.addEventListener('click',async()=>{
    let url=path;const q=new URLSearchParams();
    for(const p of op.parameters){const v=inputs[p.in+':'+p.name].value;
      if(p.in==='path')url=url.replace('{'+p.name+'}',encodeURIComponent(v));else if(v!=='')q.set(p.name,v);}
    if([...q].length)url+='?'+q;
    const init={method:method.toUpperCase(),headers:{Authorization:'Bearer '+keyInput.value}};
    if(bodyBox&&bodyBox.value.trim()){init.body=bodyBox.value;init.headers['Content-Type']='application/json';}
    out.textContent='…';
    try{const r=await fetch(url,init);const text=await r.text();let shown=text;
      try{shown=JSON.stringify(JSON.parse(text),null,2);}catch(e){}
      out.textContent=r.status+' '+r.statusText+'\\n'+shown;}
    catch(e){out.textContent=String(e);}});
  b.append(el('div',{class:'bar'},send,el('span',{class:'muted'},'sends the request from this page with the key above')),out);
  return d;}
fetch('/api/v1/openapi.json').then(r=>r.json()).then(d=>{doc=d;
  document.getElementById('about').textContent=d.info.description+' Version '+d.info.version+'.';
  const byTag={};
  for(const[p,ms]of Object.entries(d.paths))for(const[m,o]of Object.entries(ms))
    (byTag[o.tags[0]]=byTag[o.tags[0]]||[]).push([p,m,o]);
  const root=document.getElementById('ops');
  for(const[tag,ops]of Object.entries(byTag)){root.append(el('h2',{},tag));
    for(const[p,m,o]of ops)root.append(operation(p,m,o));}});
document.getElementById('filter').addEventListener('input',e=>{const f=e.target.value.toLowerCase();
  for(const d of document.querySelectorAll('details'))d.style.display=d.dataset.text.includes(f)?'':'none';});
</script></body></html>"""


async def docs_page(request: Request) -> Response:
    return HTMLResponse(
        DOCS_PAGE,
        headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff",
        },
    )


def openapi_routes() -> list[Route]:
    return [Route("/api/v1/openapi.json", openapi_json), Route("/api/v1/docs", docs_page)]
