"""Alibaba Cloud IoT HTTPS dialect ("Alink"): `/auth` and `/topic/<topic>` (protocols.md §1).

Business errors are HTTP 200 with a non-zero `code`, as the real service answers them.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

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
from iotgate.registry.service import DeviceInfo

BODY_LIMIT = 128 * 1024
PARAM_ERROR, AUTH_ERROR, TOKEN_EXPIRED, TOKEN_NULL, TOKEN_ERROR = 10001, 20000, 20001, 20002, 20003
PUBLISH_ERROR, TOO_MANY, COMMON_ERROR = 30001, 40000, 10000
_decode = msgspec.json.decode
_encode = msgspec.json.encode


def reply(code: int, message: str, info: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if info is not None:
        body["info"] = info
    return Response(200, _encode(body))


def success(message_id: int) -> Response:
    return Response(200, b'{"code":0,"message":"success","info":{"messageId":%d}}' % message_id)


class AlinkError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    if body.endswith(b"\x00"):  # iotkit-embedded sends strlen(payload)+1 bytes
        body = body.rstrip(b"\x00")
    try:
        doc = _decode(body)
    except msgspec.DecodeError as exc:
        raise AlinkError(PARAM_ERROR, f"param error: {what} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise AlinkError(PARAM_ERROR, f"param error: {what} must be a JSON object")
    return doc


def _time_ms(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise AlinkError(PARAM_ERROR, f"param error: {where} must be a time in ms since the epoch")


class AlinkDialect:
    def __init__(self, core: DeviceCore) -> None:
        self.core = core
        self.settings = core.settings

    # -- /auth ----------------------------------------------------------------------------
    async def auth(self, req: Request) -> Response:
        try:
            token = await self._auth(req)
        except AlinkError as exc:
            return reply(exc.code, str(exc))
        return Response(200, b'{"code":0,"message":"success","info":{"token":"%s"}}' % token.encode())

    async def _auth(self, req: Request) -> str:
        ctype = req.headers.get("content-type", "")
        if not ctype.lower().startswith("application/json"):
            raise AlinkError(PARAM_ERROR, f"param error: Content-Type must be application/json, not {ctype!r}")
        doc = _json_object(req.body, "body")
        for field in ("productKey", "deviceName", "clientId", "sign"):
            if not isinstance(doc.get(field), str) or not doc[field]:
                raise AlinkError(PARAM_ERROR, f"param error: {field} is missing or not a string")
        if len(doc["clientId"]) > 64:
            raise AlinkError(PARAM_ERROR, "param error: clientId is longer than 64 characters")
        method = doc.get("signmethod") or "hmacmd5"
        if not isinstance(method, str) or method.lower() not in ALINK_SIGN_METHODS:
            raise AlinkError(PARAM_ERROR, f"param error: signmethod must be one of {', '.join(ALINK_SIGN_METHODS)}")
        params = {k: v if isinstance(v, str) else _encode(v).decode() for k, v in doc.items()}
        if "timestamp" in doc:
            ts = _time_ms(doc["timestamp"], "timestamp")
            skew = self.settings.alink_timestamp_skew_s * 1000
            if ts is None or abs(time.time() * 1000 - ts) > skew:
                raise AlinkError(AUTH_ERROR, "auth check error: timestamp is more than 15 minutes from server time")
        try:
            device = await self.core.credentials(doc["productKey"], doc["deviceName"])
        except AuthFailed as exc:
            raise AlinkError(AUTH_ERROR, f"auth check error: {exc}") from None
        expected = alink_sign(params, device.secret, method)
        if not hex_equal(expected, doc["sign"]):
            raise AlinkError(AUTH_ERROR, f"auth check error: sign does not match ({method.lower()})")
        token, _ = self.core.issue_token(device, DIALECT_ALINK, self.settings.alink_token_ttl_s)
        return token

    # -- /topic/... -----------------------------------------------------------------------
    async def topic(self, req: Request) -> Response:
        try:
            return await self._topic(req)
        except AlinkError as exc:
            return reply(exc.code, str(exc))

    async def _topic(self, req: Request) -> Response:
        token = req.headers.get("password")
        if not token:
            raise AlinkError(TOKEN_NULL, "token is null: send the token from /auth in the 'password' header")
        try:
            device = await self.core.device_for_token(token.strip(), DIALECT_ALINK)
        except TokenExpired:
            raise AlinkError(TOKEN_EXPIRED, "token is expired") from None
        except TokenInvalid as exc:
            raise AlinkError(TOKEN_ERROR, f"check token error: {exc}") from None
        try:
            self.core.check_rate(device, await self.core.product_rate(device))
        except RateLimited as exc:
            raise AlinkError(TOO_MANY, f"request too many: {exc}") from None
        ctype = req.headers.get("content-type", "application/octet-stream").lower()
        if not ctype.startswith(("application/octet-stream", "application/json", "text/plain")):
            raise AlinkError(PARAM_ERROR, f"param error: Content-Type must be application/octet-stream, not {ctype!r}")
        topic = req.path[len("/topic") :]
        body = req.body[:-1] if req.body.endswith(b"\x00") else req.body
        try:
            message_id = await self._publish(device, topic, body)
        except ReportRejected as exc:
            raise AlinkError(PUBLISH_ERROR, f"publish message error: {exc}") from None
        return success(message_id)

    async def _publish(self, device: DeviceInfo, topic: str, body: bytes) -> int:
        parts = topic.split("/")
        pk, dn = device.product_key, device.device_name
        # /sys/{pk}/{dn}/thing/...
        if len(parts) >= 5 and parts[1] == "sys" and parts[4] == "thing":
            self._own(parts[2], parts[3], device, topic)
            return await self._thing(device, topic, parts[5:], body)
        if len(parts) == 6 and parts[1:4] == ["ota", "device", "inform"]:
            self._own(parts[4], parts[5], device, topic)
            return await self.core.store(device, "ota", topic, body)
        if len(parts) >= 5 and parts[3] == "user" and parts[1] == pk and parts[2] == dn and all(parts[4:]):
            return await self.core.store(device, "message", topic, body)
        if len(parts) >= 4 and parts[1] == pk and parts[2] == dn:
            raise AlinkError(
                PUBLISH_ERROR,
                f"publish message error: topic {topic} is not allowed (custom topics are /{pk}/{dn}/user/...)",
            )
        raise AlinkError(PUBLISH_ERROR, f"publish message error: topic {topic} does not belong to device {pk}/{dn}")

    @staticmethod
    def _own(pk: str, dn: str, device: DeviceInfo, topic: str) -> None:
        if pk != device.product_key or dn != device.device_name:
            raise AlinkError(
                PUBLISH_ERROR,
                f"publish message error: topic {topic} does not belong to device {device.product_key}/{device.device_name}",
            )

    async def _thing(self, device: DeviceInfo, topic: str, rest: list[str], body: bytes) -> int:
        if rest == ["event", "property", "post"]:
            doc = _json_object(body, "payload")
            report = PropertyReport(device, property_groups(doc.get("params")), topic=topic, payload=body)
            return await self.core.report_properties(report)
        if rest == ["event", "property", "batch", "post"]:
            doc = _json_object(body, "payload")
            return await self._batch(device, topic, doc.get("params"), body)
        if len(rest) == 3 and rest[0] == "event" and rest[2] == "post" and rest[1]:
            doc = _json_object(body, "payload")
            params = doc.get("params")
            if not isinstance(params, dict) or not isinstance(params.get("value", {}), dict):
                raise AlinkError(PARAM_ERROR, 'param error: params must be {"value": {...}, "time": ms}')
            ts = _time_ms(params.get("time"), "params.time")
            return await self.core.report_event(device, rest[1], params.get("value") or {}, ts, topic, body)
        if rest in (["deviceinfo", "update"], ["deviceinfo", "delete"]):
            _json_object(body, "payload")
            return await self.core.store(device, "deviceinfo", topic, body)
        if rest == ["model", "up_raw"]:
            return await self.core.store(device, "message", topic, body)
        raise AlinkError(PUBLISH_ERROR, f"publish message error: topic {topic} is not supported over HTTPS")

    async def _batch(self, device: DeviceInfo, topic: str, params: object, body: bytes) -> int:
        if not isinstance(params, dict):
            raise AlinkError(PARAM_ERROR, "param error: params must be an object with properties and/or events")
        props = params.get("properties") or {}
        events = params.get("events") or {}
        if not isinstance(props, dict) or not isinstance(events, dict):
            raise AlinkError(PARAM_ERROR, "param error: params.properties and params.events must be objects")
        groups: dict[int | None, dict[str, Any]] = {}
        for identifier, points in props.items():
            if not isinstance(points, list):
                raise AlinkError(PARAM_ERROR, f"param error: params.properties.{identifier} must be a list")
            for i, point in enumerate(points):
                if not isinstance(point, dict) or "value" not in point:
                    raise AlinkError(PARAM_ERROR, f"param error: params.properties.{identifier}[{i}] needs a value")
                ts = _time_ms(point.get("time"), f"params.properties.{identifier}[{i}].time")
                groups.setdefault(ts, {})[identifier] = point["value"]
        first = 0
        if groups:
            report = PropertyReport(device, list(groups.items()), topic=topic, payload=body)
            first = await self.core.report_properties(report)
        for identifier, points in events.items():
            for i, point in enumerate(points if isinstance(points, list) else [points]):
                if not isinstance(point, dict) or not isinstance(point.get("value", {}), dict):
                    raise AlinkError(PARAM_ERROR, f"param error: params.events.{identifier}[{i}] needs an object value")
                ts = _time_ms(point.get("time"), f"params.events.{identifier}[{i}].time")
                message_id = await self.core.report_event(device, identifier, point.get("value") or {}, ts, topic, body)
                first = first or message_id
        if not first:
            raise AlinkError(PARAM_ERROR, "param error: params has no properties and no events")
        return first


def property_groups(params: object) -> list[tuple[int | None, dict[str, Any]]]:
    """Alink params in short (`{"t": 23}`) or long (`{"t": {"value": 23, "time": ms}}`) form,
    grouped by time."""
    if not isinstance(params, dict) or not params:
        raise AlinkError(PARAM_ERROR, "param error: params must be a non-empty object of property values")
    groups: dict[int | None, dict[str, Any]] = {}
    for identifier, value in params.items():
        ts = None
        if isinstance(value, dict) and "value" in value and set(value) <= {"value", "time"}:
            ts = _time_ms(value.get("time"), f"params.{identifier}.time")
            value = value["value"]
        groups.setdefault(ts, {})[identifier] = value
    return list(groups.items())
