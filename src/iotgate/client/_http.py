"""Thin httpx drivers of the sans-IO flows (see :mod:`iotgate.client.protocol`): one kept-alive
``httpx.Client`` / ``httpx.AsyncClient`` per device, and a lock so concurrent callers share one token."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx

from iotgate import __version__
from iotgate.client.protocol import (
    Authenticate,
    DeviceStats,
    Flow,
    HttpRequest,
    HttpResponse,
    Reply,
    Sleep,
    TransportFailure,
    _Session,
)

T = TypeVar("T")
CAFile = str | os.PathLike[str]
#: ``True`` (system CAs), ``False`` (no verification: testing only), a CA file or directory (e.g. the
#: server's self-signed ``device-cert.pem``), several of them, or a ready ``ssl.SSLContext``.
Verify = bool | CAFile | Sequence[CAFile] | ssl.SSLContext
USER_AGENT = f"iotgate-device-sdk/{__version__}"


def ssl_verify(verify: Verify) -> bool | ssl.SSLContext:
    """The ``verify=`` argument for httpx; CA file paths become an SSLContext trusting just those."""
    if isinstance(verify, bool | ssl.SSLContext):
        return verify
    paths = [verify] if isinstance(verify, str | os.PathLike) else list(verify)
    if not paths:
        raise ValueError("verify: an empty list of CA files")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in paths:
        text = os.fspath(path)
        if os.path.isdir(text):
            ctx.load_verify_locations(capath=text)
        elif os.path.isfile(text):
            ctx.load_verify_locations(cafile=text)
        else:
            raise FileNotFoundError(f"verify: no CA file or directory at {text}")
    return ctx


def _ssl_cause(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def transport_failure(exc: httpx.TransportError, url: str) -> TransportFailure:
    cert = _ssl_cause(exc)
    if cert is not None:
        return TransportFailure(
            f"TLS certificate of {url} did not verify ({cert.verify_message or cert}); pass verify= the server's "
            "certificate file (e.g. device-cert.pem) or its CA",
            retryable=False,
        )
    retryable = not isinstance(exc, httpx.UnsupportedProtocol | httpx.ProxyError | httpx.LocalProtocolError)
    return TransportFailure(f"{type(exc).__name__} talking to {url}: {exc or 'no detail'}", retryable=retryable)


def _client_args(endpoint: str, verify: Verify, timeout: float) -> dict[str, Any]:
    if not endpoint.startswith(("https://", "http://")):
        raise ValueError(f"endpoint must be an http(s):// URL, not {endpoint!r}")
    return {
        "base_url": endpoint.rstrip("/"),
        "verify": ssl_verify(verify),
        "timeout": timeout,
        "headers": {"User-Agent": USER_AGENT},
    }


class SyncDriver:
    """Runs flows with blocking I/O; thread-safe (auth is serialised with a lock)."""

    def __init__(self, session: _Session, endpoint: str, verify: Verify, timeout: float) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/")
        self.http = httpx.Client(**_client_args(endpoint, verify, timeout))
        self._auth_lock = threading.Lock()

    def run(self, flow: Flow[T]) -> T:
        try:
            reply: Reply = None
            while True:
                try:
                    step = flow.send(reply)
                except StopIteration as done:
                    return done.value
                if isinstance(step, HttpRequest):
                    reply = self._request(step)
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    reply = None
                elif isinstance(step, Authenticate):
                    with self._auth_lock:
                        if self.session.token_due():
                            self.run(self.session.auth_flow(step.reason))
                    reply = None
                else:  # pragma: no cover - a flow yields only the three step types
                    raise TypeError(f"unknown step {step!r}")
        finally:
            flow.close()

    def authenticate(self) -> str:
        with self._auth_lock:
            return self.run(self.session.auth_flow())

    def _request(self, req: HttpRequest) -> HttpResponse | TransportFailure:
        self.session.stats.requests += 1
        try:
            resp = self.http.request(req.method, req.path, content=req.body, headers=dict(req.headers))
        except httpx.TransportError as exc:
            return transport_failure(exc, self.endpoint)
        return HttpResponse(resp.status_code, resp.content)

    def close(self) -> None:
        self.http.close()


class AsyncDriver:
    """Runs flows on asyncio; safe for concurrent tasks of one event loop."""

    def __init__(self, session: _Session, endpoint: str, verify: Verify, timeout: float) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/")
        self.http = httpx.AsyncClient(**_client_args(endpoint, verify, timeout))
        self._auth_lock = asyncio.Lock()

    async def run(self, flow: Flow[T]) -> T:
        try:
            reply: Reply = None
            while True:
                try:
                    step = flow.send(reply)
                except StopIteration as done:
                    return done.value
                if isinstance(step, HttpRequest):
                    reply = await self._request(step)
                elif isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    reply = None
                elif isinstance(step, Authenticate):
                    async with self._auth_lock:
                        if self.session.token_due():
                            await self.run(self.session.auth_flow(step.reason))
                    reply = None
                else:  # pragma: no cover
                    raise TypeError(f"unknown step {step!r}")
        finally:
            flow.close()

    async def authenticate(self) -> str:
        async with self._auth_lock:
            return await self.run(self.session.auth_flow())

    async def _request(self, req: HttpRequest) -> HttpResponse | TransportFailure:
        self.session.stats.requests += 1
        try:
            resp = await self.http.request(req.method, req.path, content=req.body, headers=dict(req.headers))
        except httpx.TransportError as exc:
            return transport_failure(exc, self.endpoint)
        return HttpResponse(resp.status_code, resp.content)

    async def aclose(self) -> None:
        await self.http.aclose()


class DeviceBase:
    """What every device class shares: the sans-IO session's token, lifetime and counters.
    Subclasses create `_session` and connect their driver in `_connect`."""

    _session: _Session

    def _connect(self, endpoint: str, verify: Verify, timeout: float) -> None:
        raise NotImplementedError

    @property
    def token(self) -> str | None:
        """The current token (Alibaba's `/auth` token or Huawei's ``access_token``; ``None`` before the first auth)."""
        return self._session.token

    @property
    def token_expires_in(self) -> float | None:
        """Seconds left on the current token, as far as the device knows (Alibaba: ``token_ttl_s`` after
        auth; Huawei: the server's ``expires_in``)."""
        return self._session.expires_in()

    @property
    def stats(self) -> DeviceStats:
        """Request, auth, renewal and retry counters."""
        return self._session.stats
