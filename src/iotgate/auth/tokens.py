"""Device tokens: verified with a MAC and an in-memory device view, no database round trip.

A token carries (device row id, device generation, dialect, issue time, expiry) and a
truncated HMAC-SHA256 under a server key kept in the database, so every node sharing the
database accepts every node's tokens. Disabling a device, deleting it or resetting its secret
bumps its generation, which kills its outstanding tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import time

import msgspec

_LAYOUT = struct.Struct(">QIBQQ")  # device id, generation, dialect, issued ms, expires ms
_MAC_LEN = 16
DIALECT_ALINK = 1
DIALECT_IOTDA = 2
VERIFIED_CACHE = 65_536  # tokens whose MAC was checked, remembered (oldest forgotten first)


class TokenClaims(msgspec.Struct, frozen=True):
    device_id: int
    generation: int
    dialect: int
    issued_ms: int
    expires_ms: int


class TokenError(Exception):
    def __init__(self, expired: bool, message: str) -> None:
        super().__init__(message)
        self.expired = expired


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key
        # token -> claims, only for tokens whose MAC matched: a device sends the same token on every
        # report, so the base64 decode and HMAC run once per token instead of once per request
        self._verified: dict[str, TokenClaims] = {}

    def issue(self, device_id: int, generation: int, dialect: int, ttl_s: int) -> tuple[str, TokenClaims]:
        now = int(time.time() * 1000)
        claims = TokenClaims(device_id, generation, dialect, now, now + ttl_s * 1000)
        body = _LAYOUT.pack(device_id, generation, dialect, now, claims.expires_ms)
        mac = hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_LEN]
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode(), claims

    def verify(self, token: str, dialect: int) -> TokenClaims:
        """Check the MAC, dialect and expiry. The caller checks generation against the device."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._check_mac(token)
            if len(self._verified) >= VERIFIED_CACHE:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = claims
        if claims.dialect != dialect:
            raise TokenError(False, "token was issued for the other protocol")
        if claims.expires_ms <= time.time() * 1000:
            raise TokenError(True, "token is expired")
        return claims

    def _check_mac(self, token: str) -> TokenClaims:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise TokenError(False, "token is malformed") from None
        if len(raw) != _LAYOUT.size + _MAC_LEN:
            raise TokenError(False, "token is malformed")
        body, mac = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
        if not hmac.compare_digest(hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_LEN], mac):
            raise TokenError(False, "token signature does not match")
        return TokenClaims(*_LAYOUT.unpack(body))
