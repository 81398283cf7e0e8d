"""Alibaba Cloud IoT HTTPS dialect ("Alink"): `/auth` and `/topic/<topic>` (protocols.md §1).

Business errors are HTTP 200 with a non-zero `code`, as the real service answers them.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec

from iotgate import metrics
from iotgate.auth.signing import ALINK_SIGN_METHODS, alink_sign, hex_equal
from iotgate.auth.tokens import DIALECT_ALINK
from iotgate.core import DeviceCore, PropertyReport
from iotgate.errors import (
    AuthFailed,
    RateLimited,
    ReportRejected,
    TokenExpired,
    TokenInvalid,
)
from iotgate.gateway.http import Request, Response
from iotgate.gateway.pending import Pending
from iotgate.registry.service import DeviceInfo

BODY_LIMIT = 128 * 1024
PARAM_ERROR, AUTH_ERROR, TOKEN_EXPIRED, TOKEN_NULL, TOKEN_ERROR = 10001, 20000, 20001, 20002, 20003
PUBLISH_ERROR, TOO_MANY, COMMON_ERROR = 30001, 40000, 10000
MAX_CLIENT_ID = 64
MAX_MESSAGE = 1000  # longest `message` sent back; /auth error replies stay below iotkit's 256-byte buffer
MAX_AUTH_MESSAGE = 180
TOPIC_CONTENT_TYPES = ("application/octet-stream", "application/json", "text/plain")
_decode = msgspec.json.decode
_encode = msgspec.json.encode
_DUMMY_SECRET = secrets.token_hex(16)  # signs for unknown devices, so they cost what known ones do


def reply(code: int, message: str, info: dict[str, Any] | None = None, limit: int = MAX_MESSAGE) -> Response:
    if len(message) > limit:
        message = message[: limit - 3] + "..."
    body: dict[str, Any] = {"code": code, "message": message}
    if info is not None:
        body["info"] = info
    return Response(200, _encode(body))


def success(message_id: int) -> Response:
    return Response(200, b'{"code":0,"message":"success","info":{"messageId":%d}}' % message_id)


def token_reply(token: str) -> Response:
    return Response(200, b'{"code":0,"message":"success","info":{"token":"%s"}}' % token.encode())


class AlinkError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _clip(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."


def _strip_nul(body: bytes) -> bytes:
    """iotkit-embedded sends strlen(payload)+1 bytes: a trailing NUL after the JSON."""
    return body.rstrip(b"\x00") if body.endswith(b"\x00") else body


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise AlinkError(PARAM_ERROR, f"param error: {what} is not valid JSON ({_clip(str(exc), 80)})") from None
    except RecursionError:  # msgspec's answer to very deep nesting
        raise AlinkError(PARAM_ERROR, f"param error: {what} is nested too deeply") from None
    if not isinstance(doc, dict):
        raise AlinkError(PARAM_ERROR, f"param error: {what} must be a JSON object")
    return doc


def _topic_content_type(req: Request) -> str:
    ctype = req.headers.get("content-type", "application/octet-stream")
    return ctype if ctype in TOPIC_CONTENT_TYPES else ctype.split(";", 1)[0].strip().lower()


def _time_ms(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    raise AlinkError(PARAM_ERROR, f"param error: {where} must be a time in ms since the epoch")


def _sign_value(value: object) -> str:
    """A parameter's text in the signed content: strings as sent, anything else as JSON."""
    return value if isinstance(value, str) else _encode(value).decode()


class AlinkDialect:
    def __init__(self, core: DeviceCore) -> None:
        self.core = core
        self.settings = core.settings

    # -- /auth ----------------------------------------------------------------------------
    async def auth(self, req: Request) -> Response:
        try:
            token = await self._auth(req)
        except AlinkError as exc:
            return reply(exc.code, str(exc), limit=MAX_AUTH_MESSAGE)
        return token_reply(token)

    async def _auth(self, req: Request) -> str:
        ctype = req.headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise AlinkError(PARAM_ERROR, f"param error: Content-Type must be application/json, not {_clip(ctype)!r}")
        doc = _json_object(_strip_nul(req.body), "body")
        for field in ("productKey", "deviceName", "clientId", "sign"):
            if not isinstance(doc.get(field), str) or not doc[field]:
                raise AlinkError(PARAM_ERROR, f"param error: {field} is missing or not a string")
        if len(doc["clientId"]) > MAX_CLIENT_ID:
            raise AlinkError(PARAM_ERROR, f"param error: clientId is longer than {MAX_CLIENT_ID} characters")
        method = doc.get("signmethod") or "hmacmd5"
        if not isinstance(method, str) or method.lower() not in ALINK_SIGN_METHODS:
            raise AlinkError(PARAM_ERROR, f"param error: signmethod must be one of {', '.join(ALINK_SIGN_METHODS)}")
        method = method.lower()
        if "timestamp" in doc:
            ts = _time_ms(doc["timestamp"], "timestamp")
            if ts is None:
                raise AlinkError(PARAM_ERROR, "param error: timestamp must be a time in ms since the epoch")
            skew_ms = self.settings.alink_timestamp_skew_s * 1000
            if abs(time.time() * 1000 - ts) > skew_ms:
                minutes = self.settings.alink_timestamp_skew_s // 60
                raise AlinkError(AUTH_ERROR, f"auth check error: timestamp is more than {minutes} min from server time")
        params = {k: _sign_value(v) for k, v in doc.items()}
        try:
            device = await self.core.credentials(doc["productKey"], doc["deviceName"], allow_disabled=True)
        except AuthFailed:
            device = None
        except RateLimited as exc:
            raise AlinkError(TOO_MANY, f"request too many: {exc}") from None
        # unknown device and wrong sign get the same answer (and cost), so names cannot be probed
        expected = alink_sign(params, device.secret if device else _DUMMY_SECRET, method)
        if device is None or not hex_equal(expected, doc["sign"]):
            raise AlinkError(AUTH_ERROR, f"auth check error: productKey, deviceName or sign is wrong ({method})")
        if not device.enabled:
            raise AlinkError(AUTH_ERROR, "auth check error: the device is disabled")
        token, _ = self.core.issue_token(device, DIALECT_ALINK, self.settings.alink_token_ttl_s)
        return token

    # -- /topic/... -----------------------------------------------------------------------
    def topic_now(self, req: Request) -> Pending | Response | None:
        """The hot path without a coroutine: a valid property post of a device whose token,
        product and thing model are cached. None: anything else, which `topic` answers with every
        check in its own order. All checks without effects come first; counting the token, the
        rate limit and submitting follow in `_topic`'s order once they passed, so a request gets
        the same answer and effects either way."""
        token = req.headers.get("password", "").strip()
        core = self.core
        device = core.cached_token_device(token, DIALECT_ALINK) if token else None
        if device is None:
            return None
        product = core.registry.cached_product(device.product_key)
        # device names and product keys hold no "/": equal to what _publish takes apart
        topic = req.path[6:]  # after "/topic"
        if (
            product is None
            or topic != f"/sys/{device.product_key}/{device.device_name}/thing/event/property/post"
            or _topic_content_type(req) not in TOPIC_CONTENT_TYPES
        ):
            return None
        body = _strip_nul(req.body)
        try:
            report = PropertyReport(
                device, property_groups(_json_object(body, "payload").get("params")), None, topic, body
            )
        except AlinkError:
            return None
        groups = core.accepted_groups(report)
        if groups is None:
            return None
        try:
            futures, message_id = core.submit_accepted(DIALECT_ALINK, report, groups, product.rate_per_s)
        except RateLimited as exc:
            return reply(TOO_MANY, f"request too many: {exc}")
        return Pending(futures, success(message_id), metrics.ALINK_TOPIC_OK)

    async def topic(self, req: Request) -> Response:
        try:
            return await self._topic(req)
        except AlinkError as exc:
            return reply(exc.code, str(exc))

    async def _topic(self, req: Request) -> Response:
        token = req.headers.get("password", "").strip()
        if not token:
            raise AlinkError(TOKEN_NULL, "token is null: send the token from /auth in the 'password' header")
        try:
            device = await self.core.device_for_token(token, DIALECT_ALINK)
        except TokenExpired:
            raise AlinkError(TOKEN_EXPIRED, "token is expired") from None
        except TokenInvalid as exc:
            raise AlinkError(TOKEN_ERROR, f"check token error: {exc}") from None
        try:
            if not self.core.check_product_rate(device):
                self.core.check_rate(device, await self.core.product_rate(device))
        except RateLimited as exc:
            raise AlinkError(TOO_MANY, f"request too many: {exc}") from None
        ctype = _topic_content_type(req)
        if ctype not in TOPIC_CONTENT_TYPES:
            raise AlinkError(
                PARAM_ERROR, f"param error: Content-Type must be application/octet-stream, not {_clip(ctype)!r}"
            )
        topic = req.path[len("/topic") :]
        try:
            message_id = await self._publish(device, topic, req.body)
        except ReportRejected as exc:
            raise AlinkError(PUBLISH_ERROR, f"publish message error: {exc}") from None
        return success(message_id)

    async def _publish(self, device: DeviceInfo, topic: str, body: bytes) -> int:
        parts = topic.split("/")
        pk, dn = device.product_key, device.device_name
        # /sys/{pk}/{dn}/thing/...
        if len(parts) >= 6 and parts[0] == "" and parts[1] == "sys" and parts[4] == "thing":
            self._own(parts[2], parts[3], device, topic)
            return await self._thing(device, topic, parts[5:], body)
        # /ota/device/inform/{pk}/{dn}
        if len(parts) == 6 and parts[1:4] == ["ota", "device", "inform"]:
            self._own(parts[4], parts[5], device, topic)
            doc = _json_object(_strip_nul(body), "payload")
            if not isinstance(doc.get("params"), dict) or not isinstance(doc["params"].get("version"), str):
                raise AlinkError(PARAM_ERROR, 'param error: an OTA inform needs params {"version": "..."}')
            return await self.core.store(device, "ota", topic, _strip_nul(body))
        # /{pk}/{dn}/user/... : stored as sent
        if len(parts) >= 5 and parts[1] == pk and parts[2] == dn and parts[3] == "user" and all(parts[4:]):
            return await self.core.store(device, "message", topic, body)
        if len(parts) >= 4 and parts[1] == pk and parts[2] == dn:
            raise AlinkError(
                PUBLISH_ERROR,
                f"publish message error: topic {_clip(topic, 200)} is not allowed (custom topics are /{pk}/{dn}/user/...)",
            )
        raise AlinkError(
            PUBLISH_ERROR, f"publish message error: topic {_clip(topic, 200)} does not belong to device {pk}/{dn}"
        )

    @staticmethod
    def _own(pk: str, dn: str, device: DeviceInfo, topic: str) -> None:
        if pk != device.product_key or dn != device.device_name:
            raise AlinkError(
                PUBLISH_ERROR,
                f"publish message error: topic {_clip(topic, 200)} does not belong to device "
                f"{device.product_key}/{device.device_name}",
            )

    async def _thing(self, device: DeviceInfo, topic: str, rest: list[str], body: bytes) -> int:
        if rest == ["model", "up_raw"]:  # raw bytes for a cloud-side script: stored as sent
            return await self.core.store(device, "message", topic, body)
        body = _strip_nul(body)
        if rest == ["event", "property", "post"]:
            doc = _json_object(body, "payload")
            report = PropertyReport(device, property_groups(doc.get("params")), topic=topic, payload=body)
            return await self.core.report_properties(report)
        if rest == ["event", "property", "batch", "post"]:
            doc = _json_object(body, "payload")
            return await self._batch(device, topic, doc.get("params"), body)
        if len(rest) == 3 and rest[0] == "event" and rest[2] == "post" and rest[1]:
            doc = _json_object(body, "payload")
            values, ts = event_params(doc.get("params"), "params")
            return await self.core.report_event(device, rest[1], values, ts, topic, body)
        if rest in (["deviceinfo", "update"], ["deviceinfo", "delete"]):
            doc = _json_object(body, "payload")
            if not isinstance(doc.get("params"), list):
                raise AlinkError(PARAM_ERROR, "param error: deviceinfo params must be a list of {attrKey, attrValue}")
            return await self.core.store(device, "deviceinfo", topic, body)
        raise AlinkError(PUBLISH_ERROR, f"publish message error: topic {_clip(topic, 200)} is not supported over HTTPS")

    async def _batch(self, device: DeviceInfo, topic: str, params: object, body: bytes) -> int:
        """All or nothing: every event is checked before anything is committed."""
        if not isinstance(params, dict):
            raise AlinkError(PARAM_ERROR, "param error: params must be an object with properties and/or events")
        props = params.get("properties") or {}
        events = params.get("events") or {}
        if not isinstance(props, dict) or not isinstance(events, dict):
            raise AlinkError(PARAM_ERROR, "param error: params.properties and params.events must be objects")
        groups: dict[int | None, dict[str, Any]] = {}
        for identifier, points in props.items():
            if not isinstance(points, list) or not points:
                raise AlinkError(PARAM_ERROR, f"param error: params.properties.{identifier} must be a non-empty list")
            for i, point in enumerate(points):
                if not isinstance(point, dict) or "value" not in point:
                    raise AlinkError(PARAM_ERROR, f"param error: params.properties.{identifier}[{i}] needs a value")
                ts = _time_ms(point.get("time"), f"params.properties.{identifier}[{i}].time")
                group = groups.setdefault(ts, {})
                if identifier in group:
                    raise AlinkError(
                        PARAM_ERROR, f"param error: params.properties.{identifier} has two values for one time"
                    )
                group[identifier] = point["value"]
        event_items: list[tuple[str, dict[str, Any], int | None]] = []
        for identifier, points in events.items():
            for i, point in enumerate(points if isinstance(points, list) else [points]):
                values, ts = event_params(point, f"params.events.{identifier}[{i}]")
                event_items.append((identifier, values, ts))
        if not groups and not event_items:
            raise AlinkError(PARAM_ERROR, "param error: params has no properties and no events")
        model = await self.core.registry.compiled_model(device.product_key)
        if model is not None:
            found = [i for ident, values, _ in event_items for i in model.validate_event(ident, values)[1]]
            if found:
                message = "; ".join(i.message for i in found)
                await self.core.record_rejection(device, message, topic, body, [i.rule for i in found])
                raise ReportRejected(message, [])
        first = 0
        if groups:
            report = PropertyReport(device, list(groups.items()), topic=topic, payload=body)
            first = await self.core.report_properties(report)
        for identifier, values, ts in event_items:
            message_id = await self.core.report_event(device, identifier, values, ts, topic, body)
            first = first or message_id
        return first


def event_params(params: object, where: str) -> tuple[dict[str, Any], int | None]:
    """Event output values and time: the documented `{"value": {...}, "time": ms}` or, as Link
    SDK 4.x sends it, the values object itself (`{"ErrorCode": 0}`)."""
    if not isinstance(params, dict):
        raise AlinkError(PARAM_ERROR, f'param error: {where} must be {{"value": {{...}}, "time": ms}}')
    if isinstance(params.get("value"), dict) and set(params) <= {"value", "time"}:
        return params["value"], _time_ms(params.get("time"), f"{where}.time")
    return params, None


def property_groups(params: object) -> list[tuple[int | None, dict[str, Any]]]:
    """Alink params in short (`{"t": 23}`) or long (`{"t": {"value": 23, "time": ms}}`) form,
    grouped by time."""
    if not isinstance(params, dict) or not params:
        raise AlinkError(PARAM_ERROR, "param error: params must be a non-empty object of property values")
    for value in params.values():
        if isinstance(value, dict):
            break
    else:  # the short form only (what the SDKs send): one group at server time, params as they came
        return [(None, params)]
    groups: dict[int | None, dict[str, Any]] = {}
    for identifier, value in params.items():
        ts = None
        if isinstance(value, dict) and "value" in value and set(value) <= {"value", "time"}:
            ts = _time_ms(value.get("time"), f"params.{identifier}.time")
            value = value["value"]
        groups.setdefault(ts, {})[identifier] = value
    return list(groups.items())
