"""Huawei Cloud IoTDA HTTPS dialect: `/v5/device-auth` and `/v5/devices/{id}/sys/...` (protocols.md §2).

Errors are `{"error_code": "IOTDA.xxxxxx", "error_msg": "..."}` with the documented status.
A gateway batch is all-or-nothing: one invalid child rejects the whole request, and the
message names every bad child (docs/protocols.md explains why).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from iotgate.auth.signing import hex_equal, iotda_password
from iotgate.auth.tokens import DIALECT_IOTDA
from iotgate.core import DeviceCore, PropertyReport
from iotgate.errors import AuthFailed, RateLimited, ReportRejected, TokenExpired, TokenInvalid
from iotgate.gateway.http import Request, Response
from iotgate.registry.service import DeviceInfo, split_device_id

BODY_LIMIT = 1024 * 1024
MAX_SUB_DEVICES = 50
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_\-.@:]{1,128}$")
_decode = msgspec.json.decode
_encode = msgspec.json.encode
OK = Response(200, b"")


class IotdaError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def error(status: int, code: str, message: str) -> Response:
    return Response(status, _encode({"error_code": code, "error_msg": message}))


def invalid(message: str) -> IotdaError:
    return IotdaError(400, "IOTDA.000006", f"Invalid input data: {message}")


def parse_event_time(value: object, where: str) -> int | None:
    """`yyyy-MM-dd'T'HH:mm:ss.SSS'Z'` or `yyyyMMdd'T'HHmmss'Z'`; absent means server time."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string like 2021-08-13T10:10:10.555Z or 20210813T101010Z")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y%m%dT%H%M%SZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return int(datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp() * 1000)
        except ValueError:
            continue
    raise invalid(f"{where} {value!r} is not yyyy-MM-dd'T'HH:mm:ss.SSS'Z' or yyyyMMdd'T'HHmmss'Z'")


class IotdaDialect:
    def __init__(self, core: DeviceCore) -> None:
        self.core = core
        self.settings = core.settings

    async def handle(self, req: Request) -> Response:
        try:
            if req.path == "/v5/device-auth":
                return await self._auth(req)
            return await self._device_call(req)
        except IotdaError as exc:
            return error(exc.status, exc.code, str(exc))

    # -- /v5/device-auth ------------------------------------------------------------------
    async def _auth(self, req: Request) -> Response:
        doc = self._json(req.body)
        device_id, sign_type = doc.get("device_id"), doc.get("sign_type", 0)
        timestamp, password = doc.get("timestamp"), doc.get("password")
        if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
            raise invalid("device_id must be 1-128 characters of letters, digits, _ and -")
        if isinstance(sign_type, str) and sign_type.isdigit():
            sign_type = int(sign_type)
        if sign_type not in (0, 1) or isinstance(sign_type, bool):
            raise invalid("sign_type must be 0 or 1")
        if not isinstance(timestamp, str) or len(timestamp) != 10 or not timestamp.isdigit():
            raise invalid("timestamp must be the UTC hour as YYYYMMDDHH (10 digits)")
        try:
            stamp = datetime.strptime(timestamp, "%Y%m%d%H").replace(tzinfo=UTC)
        except ValueError:
            raise invalid(f"timestamp {timestamp} is not a valid YYYYMMDDHH") from None
        if not isinstance(password, str) or not password:
            raise invalid("password is missing")
        if sign_type == 1 and abs(time.time() - stamp.timestamp()) > self.settings.iotda_timestamp_skew_s + 3599:
            # the stamp names an hour; allow the whole hour plus the configured skew
            raise IotdaError(401, "IOTDA.000002", "Authentication failed: timestamp is too far from server time")
        parts = split_device_id(device_id)
        if parts is None:
            raise IotdaError(401, "IOTDA.000002", f"Authentication failed: unknown device {device_id}")
        try:
            device = await self.core.credentials(*parts)
        except AuthFailed as exc:
            raise IotdaError(401, "IOTDA.000002", f"Authentication failed: {exc}") from None
        if not hex_equal(iotda_password(device.secret, timestamp), password):
            raise IotdaError(401, "IOTDA.000002", "Authentication failed: password does not match")
        ttl = self.settings.iotda_token_ttl_s
        token, issued_ms = self.core.issue_token(device, DIALECT_IOTDA, ttl)
        info = await self.core.registry.info(device.id)
        if info is not None:
            await self.core.registry.note_token_issued(info, issued_ms)
        return Response(200, _encode({"access_token": token, "expires_in": ttl}))

    # -- /v5/devices/{device_id}/sys/... --------------------------------------------------
    async def _device_call(self, req: Request) -> Response:
        parts = req.path.split("/")  # ['', 'v5', 'devices', id, 'sys', ...]
        if len(parts) < 6 or parts[2] != "devices" or parts[4] != "sys":
            raise IotdaError(404, "IOTDA.000006", f"Invalid input data: no such API {req.path}")
        action = "/".join(parts[5:])
        if action not in ("messages/up", "properties/report", "gateway/sub-devices/properties/report"):
            raise IotdaError(404, "IOTDA.000006", f"Invalid input data: no such API {req.path}")
        device = await self._token_device(req, parts[3])
        try:
            self.core.check_rate(device, await self.core.product_rate(device))
        except RateLimited as exc:
            raise IotdaError(403, "IOTDA.021101", f"Request reached the maximum rate limit: {exc}") from None
        topic = req.path
        try:
            if action == "messages/up":
                await self.core.store(device, "message", topic, req.body)
            elif action == "properties/report":
                report = self._report(device, self._json(req.body), "", topic, req.body)
                await self.core.report_many(report) if len(report) > 1 else await self.core.report_properties(report[0])
            else:
                await self.core.report_many(await self._gateway_reports(device, req, topic))
        except ReportRejected as exc:
            raise invalid(str(exc)) from None
        return OK

    async def _token_device(self, req: Request, path_device: str) -> DeviceInfo:
        token = req.headers.get("access_token") or req.headers.get("access-token")
        if not token:
            raise IotdaError(403, "IOTDA.000004", "Invalid access token: the access_token header is missing")
        try:
            device = await self.core.device_for_token(token.strip(), DIALECT_IOTDA, self.settings.iotda_reauth_grace_s)
        except (TokenExpired, TokenInvalid) as exc:
            raise IotdaError(403, "IOTDA.000004", f"Invalid access token: {exc}") from None
        if device.device_id != path_device:
            raise IotdaError(403, "IOTDA.000004", f"Invalid access token: it was issued to {device.device_id}")
        return device

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            doc = _decode(body.rstrip(b"\x00"))
        except msgspec.DecodeError as exc:
            raise invalid(f"body is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise invalid("body must be a JSON object")
        return doc

    @staticmethod
    def _report(device: DeviceInfo, doc: dict[str, Any], where: str, topic: str, body: bytes) -> list[PropertyReport]:
        services = doc.get("services")
        if not isinstance(services, list) or not services:
            raise invalid(f"{where}services must be a non-empty list")
        reports = []
        for i, service in enumerate(services):
            at = f"{where}services[{i}]"
            if not isinstance(service, dict):
                raise invalid(f"{at} must be an object")
            service_id, props = service.get("service_id"), service.get("properties")
            if not isinstance(service_id, str) or not service_id:
                raise invalid(f"{at}.service_id is missing")
            if not isinstance(props, dict) or not props:
                raise invalid(f"{at}.properties must be a non-empty object")
            ts = parse_event_time(service.get("event_time"), f"{at}.event_time")
            reports.append(PropertyReport(device, [(ts, props)], module=service_id, topic=topic, payload=body))
        return reports

    async def _gateway_reports(self, gateway: DeviceInfo, req: Request, topic: str) -> list[PropertyReport]:
        doc = self._json(req.body)
        devices = doc.get("devices")
        if not isinstance(devices, list) or not devices:
            raise invalid("devices must be a non-empty list")
        if len(devices) > MAX_SUB_DEVICES:
            raise invalid(f"devices has {len(devices)} entries; at most {MAX_SUB_DEVICES} per request")
        reports: list[PropertyReport] = []
        for i, entry in enumerate(devices):
            if not isinstance(entry, dict) or not isinstance(entry.get("device_id"), str):
                raise invalid(f"devices[{i}].device_id is missing")
            child = await self._child(gateway, entry["device_id"])
            reports.extend(self._report(child, entry, f"devices[{i}].", topic, req.body))
        return reports

    async def _child(self, gateway: DeviceInfo, device_id: str) -> DeviceInfo:
        parts = split_device_id(device_id)
        child = await self.core.registry.info_by_name(*parts) if parts else None
        if child is None or child.gateway_id != gateway.id:
            raise IotdaError(
                400,
                "IOTDA.021104",
                f"Subdevices in the request does not exist or does not belong to the gateway: {device_id}",
            )
        if not child.enabled:
            raise invalid(f"sub-device {device_id} is disabled")
        return child
