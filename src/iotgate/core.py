"""The protocol-agnostic device core: authenticate, issue and check tokens, accept reports.

Dialects (gateway/alink.py, gateway/iotda.py) translate their wire format into these calls and
map `iotgate.errors` back onto their own codes; nothing here knows either vendor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from iotgate import metrics
from iotgate.auth.tokens import TokenClaims, TokenError, TokenSigner
from iotgate.clock import now_ms
from iotgate.config import Settings
from iotgate.errors import (
    AuthFailed,
    DeviceDisabled,
    RateLimited,
    ReportRejected,
    TokenExpired,
    TokenInvalid,
)
from iotgate.ingest.ids import MessageIds
from iotgate.ingest.limits import RateLimiter
from iotgate.ingest.pipeline import IngestQueue
from iotgate.model import CompiledModel, ValidationIssue
from iotgate.registry.service import DeviceInfo, Registry
from iotgate.storage.base import DeviceRow, Record

MAX_FUTURE_MS = 24 * 3600 * 1000  # Alink: a report time may be at most 24 h ahead


class PropertyReport:
    """Values of one device, grouped by event time (None: server time), optionally in a module."""

    __slots__ = ("device", "groups", "module", "payload", "topic")

    def __init__(
        self,
        device: DeviceInfo,
        groups: list[tuple[int | None, dict[str, Any]]],
        module: str | None = None,
        topic: str = "",
        payload: bytes = b"",
    ) -> None:
        self.device = device
        self.groups = groups
        self.module = module
        self.topic = topic
        self.payload = payload


class DeviceCore:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        ingestor: IngestQueue,
        signer: TokenSigner,
        ids: MessageIds,
        track_seen: bool = True,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.ingestor = ingestor
        self.signer = signer
        self.ids = ids
        self.limiter = RateLimiter(settings.device_rate_per_s, settings.device_rate_burst)
        self.auth_limiter = RateLimiter(settings.auth_rate_per_s, settings.auth_rate_burst)
        # last report time per device, read by the admin API, /metrics and lifecycle forwarding. A
        # device worker on SQLite has none of those (the main process folds every commit it makes
        # into its own): track_seen=False spares it a pass over each answered frame.
        self.last_seen: dict[int, int] = {}
        if track_seen:
            ingestor.after_commit.append(self._note_seen)

    # -- credentials ----------------------------------------------------------------------
    async def credentials(self, product_key: str, device_name: str, *, allow_disabled: bool = False) -> DeviceRow:
        """The device with its secret, for checking a signature. Unknown and disabled both fail
        (allow_disabled: the caller checks `enabled` itself, after the signature, so that only a
        device holding the secret learns that it is disabled)."""
        row = await self.registry.storage.get_device(product_key, device_name)
        if row is None:
            raise AuthFailed(f"device {product_key}/{device_name} does not exist")
        if not self.auth_limiter.allow(row.id):  # bounds the cost a leaked or looping client can cause
            raise RateLimited(f"device {device_name} exceeded {self.auth_limiter.rate:g} authentications/s")
        if not row.enabled and not allow_disabled:
            raise DeviceDisabled(f"device {product_key}/{device_name} is disabled")
        return row

    def issue_token(self, device: DeviceRow, dialect: int, ttl_s: int) -> tuple[str, int]:
        token, claims = self.signer.issue(device.id, device.generation, dialect, ttl_s)
        return token, claims.issued_ms

    async def device_for_token(self, token: str, dialect: int, grace_s: int | None = None) -> DeviceInfo:
        """The device a token speaks for. grace_s: how long a token outlives a newer one."""
        try:
            info = await self._token_device(token, dialect, grace_s)
        except TokenExpired:
            metrics.token_checked(dialect, "expired")
            raise
        except TokenInvalid:
            metrics.token_checked(dialect, "invalid")
            raise
        metrics.token_checked(dialect, "ok")
        return info

    async def _token_device(self, token: str, dialect: int, grace_s: int | None) -> DeviceInfo:
        try:
            claims = self.signer.verify(token, dialect)
        except TokenError as exc:
            raise (TokenExpired if exc.expired else TokenInvalid)(str(exc)) from None
        info = self.registry.cached_info(claims.device_id) or await self.registry.info(claims.device_id)
        refusal = _token_refusal(claims, info, grace_s)
        if refusal is not None:
            raise refusal
        assert info is not None  # _token_refusal: an unknown device is refused
        return info

    def cached_token_device(self, token: str, dialect: int, grace_s: int | None = None) -> DeviceInfo | None:
        """The hot path's look at a token: its device when the token is valid and the device
        cached, without a coroutine and without counting the check. None: anything else - then
        device_for_token answers (and counts) it."""
        try:
            claims = self.signer.verify(token, dialect)
        except TokenError:
            return None
        info = self.registry.cached_info(claims.device_id)
        if info is None or _token_refusal(claims, info, grace_s) is not None:
            return None
        return info

    def check_rate(self, device: DeviceInfo, rate: float | None = None) -> None:
        if not self.limiter.allow(device.id, rate):
            metrics.limit_hit("rate_limited")
            raise RateLimited(f"device {device.device_name} exceeded {rate or self.limiter.rate:g} requests/s")

    async def product_rate(self, device: DeviceInfo) -> float | None:
        product = await self.registry.product_cached(device.product_key)
        return product.rate_per_s if product else None

    def check_product_rate(self, device: DeviceInfo) -> bool:
        """check_rate with the product's rate when the product is cached (the hot path, without a
        coroutine); False: not cached, await product_rate and call check_rate instead."""
        product = self.registry.cached_product(device.product_key)
        if product is None:
            return False
        self.check_rate(device, product.rate_per_s)
        return True

    # -- reports --------------------------------------------------------------------------
    async def validate(self, report: PropertyReport) -> list[tuple[int, dict[str, Any]]]:
        """Accepted (ts, values) groups, or ReportRejected naming every bad value."""
        return self._validate(await self.registry.compiled_model(report.device.product_key), report, now_ms())

    def _validate(
        self, model: CompiledModel | None, report: PropertyReport, now: int
    ) -> list[tuple[int, dict[str, Any]]]:
        if model is None:
            raise ReportRejected(
                f"product {report.device.product_key} has no published thing model",
                [{"identifier": "", "rule": "model", "message": "publish the product's thing model first"}],
            )
        out: list[tuple[int, dict[str, Any]]] = []
        issues: list[ValidationIssue] = []
        for ts, values in report.groups:
            accepted, bad = model.validate_properties(values, report.module)
            issues.extend(bad)
            if ts is not None and ts > now + MAX_FUTURE_MS:
                issues.append(
                    ValidationIssue(
                        identifier=",".join(values),
                        rule="time",
                        message=f"time {ts} is more than 24 h in the future",
                    )
                )
            out.append((now if ts is None else ts, accepted))
        if issues:
            raise ReportRejected("; ".join(i.message for i in issues), [_issue(i) for i in issues])
        return out

    def accepted_groups(self, report: PropertyReport) -> list[tuple[int, dict[str, Any]]] | None:
        """The hot path's validation, without a coroutine and without recording anything: the
        accepted groups when the product's model is cached and every value is valid. None:
        anything else - then report_properties answers (and records) it."""
        model = self.registry.cached_model(report.device.product_key)
        if model is None:
            return None
        try:
            return self._validate(model, report, now_ms())
        except ReportRejected:
            return None

    async def report_properties(self, report: PropertyReport) -> int:
        """Validate, commit, and return the message ID. Rejections are recorded, then raised."""
        model = self.registry.cached_model(report.device.product_key)
        try:  # a cached model validates without a coroutine (the hot path)
            groups = self._validate(model, report, now_ms()) if model is not None else await self.validate(report)
        except ReportRejected as rejected:
            await self.record_rejection(report.device, str(rejected), report.topic, report.payload, _rules(rejected))
            raise
        return await self._commit_groups([(report, groups)])

    async def report_many(self, reports: list[PropertyReport]) -> int:
        """A gateway batch: all children valid, or nothing is stored (each rejection recorded)."""
        accepted: list[tuple[PropertyReport, list[tuple[int, dict[str, Any]]]]] = []
        failures: list[tuple[PropertyReport, ReportRejected]] = []
        models: dict[str, CompiledModel | None] = {}  # children mostly share one product
        now = now_ms()
        for report in reports:
            product_key = report.device.product_key
            if product_key not in models:
                cached = self.registry.cached_model(product_key)
                models[product_key] = cached or await self.registry.compiled_model(product_key)
            try:
                accepted.append((report, self._validate(models[product_key], report, now)))
            except ReportRejected as exc:
                failures.append((report, exc))
        if failures:
            for report, failure in failures:
                await self.record_rejection(report.device, str(failure), report.topic, report.payload, _rules(failure))
            issues = [dict(i, deviceId=r.device.device_id) for r, e in failures for i in e.issues]
            message = "; ".join(f"{r.device.device_id}: {e}" for r, e in failures)
            raise ReportRejected(message, issues)
        return await self._commit_groups(accepted)

    async def _commit_groups(self, items: list[tuple[PropertyReport, list[tuple[int, dict[str, Any]]]]]) -> int:
        futures, message_id = self.submit_groups(items)
        for fut in futures:
            await fut
        return message_id

    def submit_accepted(
        self, dialect: int, report: PropertyReport, groups: list[tuple[int, dict[str, Any]]], rate: float | None
    ) -> tuple[list[asyncio.Future[None]], int]:
        """The hot path's effects once every check passed, in the async path's order: count the
        token, take a rate token (RateLimited: nothing submitted), submit (see submit_groups)."""
        metrics.token_checked(dialect, "ok")
        self.check_rate(report.device, rate)
        return self.submit_groups([(report, groups)])

    def submit_groups(
        self, items: list[tuple[PropertyReport, list[tuple[int, dict[str, Any]]]]]
    ) -> tuple[list[asyncio.Future[None]], int]:
        """Hand accepted groups to the ingest queue: (the futures that resolve after COMMIT, the
        first record's message ID). The caller awaits every future before telling the device."""
        received = now_ms()
        next_id = self.ids.next
        records = [
            Record(
                message_id=next_id(),
                device_id=report.device.id,
                kind="property",
                ts=ts,
                received_at=received,
                values=values,
                topic=report.topic,  # not stored with history; forwarding names the request by them
                payload=report.payload,
            )
            for report, groups in items
            for ts, values in groups
        ]
        # one request's records go into one batch (one transaction), not split by an early commit
        return self.ingestor.submit_many(records), records[0].message_id if records else 0

    async def report_event(
        self,
        device: DeviceInfo,
        identifier: str,
        params: dict[str, Any],
        ts: int | None,
        topic: str,
        payload: bytes,
    ) -> int:
        model = self.registry.cached_model(device.product_key) or await self.registry.compiled_model(device.product_key)
        if model is None:
            message = f"product {device.product_key} has no published thing model"
            await self.record_rejection(device, message, topic, payload, ["model"])
            raise ReportRejected(message, [])
        accepted, issues = model.validate_event(identifier, params)
        if issues:
            message = "; ".join(i.message for i in issues)
            await self.record_rejection(device, message, topic, payload, [i.rule for i in issues])
            raise ReportRejected(message, [_issue(i) for i in issues])
        return await self.store(device, "event", topic, payload, identifier=identifier, ts=ts, params=accepted)

    async def store(
        self,
        device: DeviceInfo,
        kind: str,
        topic: str,
        payload: bytes,
        identifier: str = "",
        ts: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> int:
        """Commit a raw message (custom topic, messages/up, device info, OTA version, event).
        params: an event's validated parameters (forwarded, not stored apart from the payload)."""
        received = now_ms()
        message_id = self.ids.next()
        await self.ingestor.submit(
            Record(
                message_id=message_id,
                device_id=device.id,
                kind=kind,
                ts=ts or received,
                received_at=received,
                topic=topic,
                identifier=identifier,
                payload=payload,
                params=params,
            )
        )
        return message_id

    async def record_rejection(
        self, device: DeviceInfo, reason: str, topic: str, payload: bytes, rules: Iterable[str] = ()
    ) -> None:
        """Store a rejected report for the console. rules: the thing-model rules it broke (metrics
        label); none: the payload was malformed."""
        metrics.reports_rejected(rules)
        received = now_ms()
        await self.ingestor.submit(
            Record(
                message_id=self.ids.next(),
                device_id=device.id,
                kind="rejected",
                ts=received,
                received_at=received,
                topic=topic,
                payload=payload,
                detail=reason[:2000],
            )
        )

    def _note_seen(self, records: list[Record]) -> None:
        seen = self.last_seen
        for r in records:
            if r.kind != "rejected" and seen.get(r.device_id, 0) < r.received_at:
                seen[r.device_id] = r.received_at


def _token_refusal(
    claims: TokenClaims, info: DeviceInfo | None, grace_s: int | None
) -> TokenInvalid | TokenExpired | None:
    """Why a token with a valid MAC does not speak for `info` (its device, None: gone), or None."""
    if info is None:
        return TokenInvalid("the token's device no longer exists")
    if not info.enabled:
        return TokenInvalid("the device is disabled")
    if info.generation != claims.generation:
        return TokenInvalid("the token was revoked (device secret reset or device re-enabled)")
    if grace_s is not None and claims.issued_ms < info.token_epoch_ms:
        if now_ms() > info.token_epoch_ms + grace_s * 1000:
            return TokenExpired("the token was replaced by a newer one")
    return None


def _rules(rejected: ReportRejected) -> list[str]:
    return [str(i.get("rule") or "malformed") for i in rejected.issues] or ["model"]


def _issue(issue: ValidationIssue) -> dict[str, Any]:
    return {"identifier": issue.identifier, "rule": issue.rule, "message": issue.message}
