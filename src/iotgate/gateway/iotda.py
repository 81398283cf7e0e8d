"""Huawei Cloud IoTDA HTTPS dialect: `/v5/device-auth` and `/v5/devices/{id}/sys/...` (protocols.md §2).

Errors are `{"error_code": "IOTDA.xxxxxx", "error_msg": "..."}` with the documented status; the
message starts with Huawei's documented text and then says what exactly was wrong.
A gateway batch is all-or-nothing: one invalid child rejects the whole request, the message names
every bad child, and every rejection is recorded (docs/iotda.md explains why).
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import msgspec

from iotgate import metrics
from iotgate.auth.signing import hex_equal, iotda_password
from iotgate.auth.tokens import DIALECT_IOTDA
from iotgate.core import DeviceCore, PropertyReport
from iotgate.errors import AuthFailed, RateLimited, ReportRejected, TokenExpired, TokenInvalid
from iotgate.gateway.http import Request, Response
from iotgate.gateway.pending import Pending
from iotgate.registry.service import DeviceInfo, split_device_id

BODY_LIMIT = 1024 * 1024
MAX_SUB_DEVICES = 50
HOUR_S = 3600
MAX_ERROR_MSG = 16384  # a 50-child refusal names every child; identifiers in messages are device-chosen
# Huawei documents [A-Za-z0-9_-]; iotgate device names may also hold . @ : (device_id = {ProductKey}_{DeviceName})
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_\-.@:]{1,128}$")
PASSWORD_RE = re.compile(r"^[0-9A-Fa-f]{64}$")
ACTIONS = ("messages/up", "properties/report", "gateway/sub-devices/properties/report")
EVENT_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y%m%dT%H%M%SZ", "%Y-%m-%dT%H:%M:%SZ")

INVALID_INPUT = "IOTDA.000006"
AUTH_FAILED = "IOTDA.000002"
INVALID_TOKEN = "IOTDA.000004"
RATE_LIMITED = "IOTDA.021101"
NOT_A_SUB_DEVICE = "IOTDA.021104"
TOO_LARGE = "IOTDA.021105"

_DUMMY_SECRET = secrets.token_hex(16)  # checked for unknown devices, so they cost what known ones do
_decode = msgspec.json.decode
_encode = msgspec.json.encode
OK = Response(200, b"")


class IotdaError(Exception):
    def __init__(self, status: int, code: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail or message


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."


def error(status: int, code: str, message: str) -> Response:
    return Response(status, _encode({"error_code": code, "error_msg": _clip(message, MAX_ERROR_MSG)}))


def invalid(detail: str) -> IotdaError:
    return IotdaError(400, INVALID_INPUT, f"Invalid input data: {detail}", detail)


def auth_failed(detail: str) -> IotdaError:
    return IotdaError(401, AUTH_FAILED, f"Authentication failed: {detail}", detail)


def bad_token(detail: str) -> IotdaError:
    return IotdaError(403, INVALID_TOKEN, f"Invalid access token: {detail}", detail)


def not_sub_devices(detail: str) -> IotdaError:
    return IotdaError(
        400,
        NOT_A_SUB_DEVICE,
        f"Subdevices in the request does not exist or does not belong to the gateway: {detail}",
        detail,
    )


def timestamp_in_window(stamp_s: float, now_s: float, skew_s: int) -> bool:
    """sign_type 1: does some instant of the hour `stamp_s` names lie within ±skew_s of `now_s`?

    A device clock reading t gives the stamp floor_hour(t); |t − now| ≤ skew for some t in
    [stamp, stamp + 1 h) ⇔ now − skew ≤ … ⇔ −skew ≤ now − stamp < 1 h + skew.
    """
    return -skew_s <= now_s - stamp_s < HOUR_S + skew_s


def parse_event_time(value: object) -> int | None:
    """`yyyy-MM-dd'T'HH:mm:ss.SSS'Z'` or `yyyyMMdd'T'HHmmss'Z'` → ms; absent or not in either
    format → None (server time), as IoTDA documents."""
    if not isinstance(value, str) or not value:
        return None
    for fmt in EVENT_TIME_FORMATS:
        try:
            return int(datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp() * 1000)
        except ValueError:
            continue
    return None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = _decode(body.rstrip(b"\x00"))
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise invalid(f"body is not valid JSON ({_clip(str(exc), 120)})") from None
    if not isinstance(doc, dict):
        raise invalid("body must be a JSON object")
    return doc


class _Service(msgspec.Struct, gc=False):
    service_id: str
    properties: dict[str, Any]
    event_time: Any = None


class _Child(msgspec.Struct, gc=False):
    device_id: str
    services: list[_Service]


class _GatewayBody(msgspec.Struct, gc=False):
    devices: list[msgspec.Raw]


_decode_gateway = msgspec.json.Decoder(_GatewayBody).decode
_decode_child = msgspec.json.Decoder(_Child).decode


def service_reports(
    device: DeviceInfo, doc: dict[str, Any], where: str, topic: str, payload: bytes
) -> list[PropertyReport]:
    """`{"services": [{service_id, properties, event_time?}, ...]}` → one report per service.
    Structure only; values are checked against the thing model by the core."""
    services = doc.get("services")
    if not isinstance(services, list) or not services:
        raise invalid(f"{where}services must be a non-empty list of {{service_id, properties, event_time}}")
    reports = []
    for i, service in enumerate(services):
        at = f"{where}services[{i}]"
        if not isinstance(service, dict):
            raise invalid(f"{at} must be an object")
        service_id, props = service.get("service_id"), service.get("properties")
        if not isinstance(service_id, str) or not service_id:
            raise invalid(f"{at}.service_id is missing or not a string (use 'default' for the default module)")
        if not isinstance(props, dict) or not props:
            raise invalid(f"{at}.properties must be a non-empty object of property values")
        ts = parse_event_time(service.get("event_time"))
        reports.append(PropertyReport(device, [(ts, props)], module=service_id, topic=topic, payload=payload))
    return reports


def _access_token(req: Request) -> str:
    """The token header, stripped ("" if absent or blank): `access_token`, or `access-token`
    (also accepted, docs/iotda.md)."""
    token = req.headers.get("access_token") or req.headers.get("access-token")
    return token.strip() if token else ""


class IotdaDialect:
    def __init__(self, core: DeviceCore) -> None:
        self.core = core
        self.settings = core.settings

    def report_now(self, req: Request) -> Pending | Response | None:
        """The hot path without a coroutine: a valid one-service properties/report of a device
        whose token, product and thing model are cached. None: anything else, which `handle`
        answers with every check in its own order. All checks without effects come first;
        counting the token, the rate limit and submitting follow in `_device_call`'s order once
        they passed, so a request gets the same answer and effects either way."""
        token = _access_token(req)
        core = self.core
        device = core.cached_token_device(token, DIALECT_IOTDA, self.settings.iotda_reauth_grace_s) if token else None
        if device is None:
            return None
        product = core.registry.cached_product(device.product_key)
        # a device ID holds no "/" and no "%": equal to what _device_call takes apart and unquotes
        if product is None or req.path != f"/v5/devices/{device.device_id}/sys/properties/report":
            return None
        try:
            reports = service_reports(device, _json_object(req.body), "", req.path, req.body)
        except IotdaError:
            return None
        groups = core.accepted_groups(reports[0]) if len(reports) == 1 else None
        if groups is None:
            return None
        try:
            futures, _ = core.submit_accepted(DIALECT_IOTDA, reports[0], groups, product.rate_per_s)
        except RateLimited as exc:
            return error(403, RATE_LIMITED, f"Request reached the maximum rate limit: {exc}")
        return Pending(futures, OK, metrics.IOTDA_REPORT_OK)

    async def handle(self, req: Request) -> Response:
        try:
            if req.path == "/v5/device-auth":
                return await self._auth(req)
            return await self._device_call(req)
        except IotdaError as exc:
            return error(exc.status, exc.code, str(exc))

    # -- /v5/device-auth ------------------------------------------------------------------
    async def _auth(self, req: Request) -> Response:
        doc = _json_object(req.body)
        device_id, sign_type = doc.get("device_id"), doc.get("sign_type")
        timestamp, password = doc.get("timestamp"), doc.get("password")
        if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
            raise invalid("device_id must be a string of 1-128 letters, digits, _ and - ({ProductKey}_{DeviceName})")
        if isinstance(sign_type, str) and sign_type in ("0", "1"):
            sign_type = int(sign_type)
        if type(sign_type) is not int or sign_type not in (0, 1):
            raise invalid(f"sign_type must be 0 (check the password only) or 1 (also the timestamp), not {sign_type!r}")
        if not isinstance(timestamp, str) or len(timestamp) != 10 or not timestamp.isdigit():
            raise invalid(f"timestamp must be the UTC hour as a 10-digit string YYYYMMDDHH, not {timestamp!r}")
        try:
            stamp = datetime.strptime(timestamp, "%Y%m%d%H").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise invalid(f"timestamp {timestamp} is not a valid UTC hour YYYYMMDDHH") from None
        if not isinstance(password, str) or not PASSWORD_RE.match(password):
            raise invalid("password must be 64 lowercase hex characters: HMAC-SHA256(key=timestamp, msg=secret)")
        skew = self.settings.iotda_timestamp_skew_s
        now = time.time()
        if sign_type == 1 and not timestamp_in_window(stamp, now, skew):
            server_hour = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H")
            raise auth_failed(
                f"timestamp {timestamp} is more than {skew} s from server time (server UTC hour {server_hour}); "
                "fix the device clock or use sign_type 0"
            )
        parts = split_device_id(device_id)
        device = None
        if parts is not None:
            try:
                device = await self.core.credentials(*parts, allow_disabled=True)
            except AuthFailed:
                pass
            except RateLimited as exc:
                raise IotdaError(403, "IOTDA.021101", f"Request reached the maximum rate limit: {exc}") from None
        # unknown device and wrong password get the same answer (and cost): device ids cannot be probed
        expected = iotda_password(device.secret if device else _DUMMY_SECRET, timestamp)
        if device is None or not hex_equal(expected, password):
            raise auth_failed(
                "device_id or password is wrong (password = lowercase hex HMAC-SHA256, key = timestamp, "
                "message = DeviceSecret)"
            )
        if not device.enabled:  # told only to a caller holding the secret
            raise auth_failed(f"device {device_id} is disabled")
        ttl = self.settings.iotda_token_ttl_s
        token, issued_ms = self.core.issue_token(device, DIALECT_IOTDA, ttl)
        info = await self.core.registry.info(device.id)
        if info is not None:  # older tokens now live only `iotda_reauth_grace_s` more
            await self.core.registry.note_token_issued(info, issued_ms)
        return Response(200, _encode({"access_token": token, "expires_in": ttl}))

    # -- /v5/devices/{device_id}/sys/... --------------------------------------------------
    async def _device_call(self, req: Request) -> Response:
        parts = req.path.split("/")  # ['', 'v5', 'devices', id, 'sys', ...]
        action = "/".join(parts[5:])
        if len(parts) < 6 or parts[2] != "devices" or parts[4] != "sys" or action not in ACTIONS:
            raise IotdaError(404, INVALID_INPUT, f"Invalid input data: no such API {req.path}")
        device = await self._token_device(req, unquote(parts[3]))
        try:
            if not self.core.check_product_rate(device):
                self.core.check_rate(device, await self.core.product_rate(device))
        except RateLimited as exc:
            raise IotdaError(403, RATE_LIMITED, f"Request reached the maximum rate limit: {exc}") from None
        topic = req.path
        try:
            if action == "messages/up":
                if not req.body.strip():
                    raise invalid("the message body is empty")
                await self.core.store(device, "message", topic, req.body)
            elif action == "properties/report":
                reports = service_reports(device, _json_object(req.body), "", topic, req.body)
                if len(reports) == 1:
                    await self.core.report_properties(reports[0])
                else:  # several services: all of them or none, like a gateway batch
                    await self.core.report_many(reports)
            else:
                await self._gateway_report(device, req.body, topic)
        except ReportRejected as exc:  # values broke the model; the core has recorded it
            raise invalid(str(exc)) from None
        except IotdaError as exc:  # malformed, or a refused gateway batch: record it on this device too
            await self.core.record_rejection(device, exc.detail, topic, req.body)
            raise
        return OK

    async def _token_device(self, req: Request, path_device: str) -> DeviceInfo:
        token = _access_token(req)
        if not token:
            raise bad_token("the access_token header is missing (get one from /v5/device-auth)")
        try:
            device = await self.core.device_for_token(token, DIALECT_IOTDA, self.settings.iotda_reauth_grace_s)
        except (TokenExpired, TokenInvalid) as exc:
            raise bad_token(f"{exc}; authenticate again with /v5/device-auth") from None
        if device.device_id != path_device:
            raise bad_token(f"it was issued to {device.device_id}, not {_clip(path_device, 140)}")
        return device

    # -- gateway batch --------------------------------------------------------------------
    async def _gateway_report(self, gateway: DeviceInfo, body: bytes, topic: str) -> None:
        """All children valid, or nothing stored: every bad child is named and recorded."""
        registry = self.core.registry
        product = registry.cached_product(gateway.product_key)
        if product is not None and product.node_type == "gateway":
            well_formed = self._well_formed_children(gateway, body, topic)
            if well_formed is not None:
                reports, count = well_formed
                try:  # validates every child, then commits all of them or records each rejection
                    await self.core.report_many(reports)
                except ReportRejected as exc:
                    names = list(dict.fromkeys(str(issue.get("deviceId", "")) for issue in exc.issues))
                    raise invalid(batch_message(names, count, [str(exc)])) from None
                return
        await self._gateway_report_checked(gateway, body, topic)

    def _well_formed_children(
        self, gateway: DeviceInfo, body: bytes, topic: str
    ) -> tuple[list[PropertyReport], int] | None:
        """The common case in one pass: the body decoded into typed structs (no dict walking, no
        re-encoding: each child's payload is its own bytes of the body) and every child a cached,
        enabled sub-device of this gateway. None: anything else, which the checked path handles
        (it names every problem)."""
        try:
            raw = _decode_gateway(body.rstrip(b"\x00")).devices
            if not raw or len(raw) > MAX_SUB_DEVICES:
                return None
            children = [_decode_child(entry) for entry in raw]
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # ValidationError is a DecodeError
            return None
        cached = self.core.registry.cached_info_by_name
        reports: list[PropertyReport] = []
        for entry, child in zip(raw, children, strict=True):
            parts = split_device_id(child.device_id)
            info = cached(*parts) if parts else None
            if info is None or info.gateway_id != gateway.id or not info.enabled or not child.services:
                return None
            payload = bytes(entry)
            for service in child.services:
                if not service.service_id or not service.properties:
                    return None
                ts = parse_event_time(service.event_time)
                group = [(ts, service.properties)]
                reports.append(PropertyReport(info, group, module=service.service_id, topic=topic, payload=payload))
        return reports, len(children)

    async def _gateway_report_checked(self, gateway: DeviceInfo, body: bytes, topic: str) -> None:
        doc = _json_object(body)
        devices = doc.get("devices")
        if not isinstance(devices, list) or not devices:
            raise invalid("devices must be a non-empty list of {device_id, services}")
        if len(devices) > MAX_SUB_DEVICES:
            raise invalid(f"devices has {len(devices)} entries; at most {MAX_SUB_DEVICES} per request")
        registry = self.core.registry
        product = await registry.product_cached(gateway.product_key)
        if product is None or product.node_type != "gateway":
            kind = product.node_type if product else "unknown"
            raise not_sub_devices(f"{gateway.device_id} is not a gateway (its product's node type is {kind})")
        reports: list[PropertyReport] = []
        foreign: list[str] = []  # unknown, or not under this gateway (recorded on the gateway only)
        bad: list[tuple[DeviceInfo | None, str, str, bytes, list[str]]] = []  # child, name, problem, entry, rules
        for i, entry in enumerate(devices):
            where = f"devices[{i}]"
            child_id = entry.get("device_id") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or not isinstance(child_id, str) or not child_id:
                bad.append((None, where, f"{where} must be an object with a device_id string and services", b"", []))
                continue
            parts = split_device_id(child_id)
            child = await registry.info_by_name(*parts) if parts else None
            if child is None or child.gateway_id != gateway.id:
                foreign.append(f"{where} {_clip(child_id, 140)}")
                continue
            payload = _encode(entry)
            if not child.enabled:
                bad.append((child, child_id, f"{where} is a disabled sub-device", payload, ["disabled"]))
                continue
            try:
                reports.extend(service_reports(child, entry, f"{where}.", topic, payload))
            except IotdaError as exc:
                bad.append((child, child_id, exc.detail, payload, []))
        if not foreign and not bad:
            try:  # validates every child, then commits all of them or records each rejection
                await self.core.report_many(reports)
            except ReportRejected as exc:
                names = list(dict.fromkeys(str(issue.get("deviceId", "")) for issue in exc.issues))
                raise invalid(batch_message(names, len(devices), [str(exc)])) from None
            return
        # Refused anyway: still check the well-formed children so the reply names every problem.
        for report in reports:
            try:
                await self.core.validate(report)
            except ReportRejected as exc:
                rules = [str(issue.get("rule") or "malformed") for issue in exc.issues] or ["model"]
                bad.append((report.device, report.device.device_id, str(exc), report.payload, rules))
        for child, _, problem, payload, rules in bad:
            if child is not None:
                reason = f"gateway {gateway.device_id}: {problem}"
                await self.core.record_rejection(child, reason, topic, payload, rules)
        problems = [f"{name}: {_clip(problem, 300)}" for _, name, problem, _, _ in bad]
        if foreign:  # the caller records the whole refusal on the gateway
            detail = f"{', '.join(foreign)} not sub-devices of gateway {gateway.device_id}"
            raise not_sub_devices(detail + ("; also: " + "; ".join(problems) if problems else ""))
        names = list(dict.fromkeys(name for _, name, _, _, _ in bad))
        raise invalid(batch_message(names, len(devices), problems))


def batch_message(names: list[str], total: int, problems: list[str]) -> str:
    """Every bad child named first (so a clipped message still names them all), then why."""
    listed = ", ".join(_clip(n, 140) for n in names)
    return f"{len(names)} of {total} sub-devices rejected, nothing stored ({listed}): " + "; ".join(problems)
