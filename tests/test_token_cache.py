"""Verified tokens are remembered; the cache never lets a forged, foreign or expired token through."""

from __future__ import annotations

import base64
import time

import pytest

from iotgate.auth import tokens
from iotgate.auth.tokens import DIALECT_ALINK, DIALECT_IOTDA, TokenError, TokenSigner


def test_cached_token_still_checks_dialect_and_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = TokenSigner(b"k" * 32)
    token, claims = signer.issue(5, 2, DIALECT_ALINK, ttl_s=60)
    assert signer.verify(token, DIALECT_ALINK) == claims
    assert signer.verify(token, DIALECT_ALINK) == claims  # from the cache
    with pytest.raises(TokenError) as foreign:
        signer.verify(token, DIALECT_IOTDA)
    assert not foreign.value.expired
    later = time.time() + 61
    monkeypatch.setattr(tokens.time, "time", lambda: later)
    with pytest.raises(TokenError) as expired:
        signer.verify(token, DIALECT_ALINK)
    assert expired.value.expired


def test_forged_and_other_keys_tokens_are_refused_after_a_good_one_is_cached() -> None:
    signer = TokenSigner(b"k" * 32)
    token, _ = signer.issue(5, 2, DIALECT_ALINK, ttl_s=60)
    signer.verify(token, DIALECT_ALINK)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[0] ^= 1  # another device id, same MAC
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature"):
        signer.verify(forged, DIALECT_ALINK)
    other, _ = TokenSigner(b"x" * 32).issue(5, 2, DIALECT_ALINK, ttl_s=60)
    with pytest.raises(TokenError, match="signature"):
        signer.verify(other, DIALECT_ALINK)
    assert forged not in signer._verified and other not in signer._verified


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "VERIFIED_CACHE", 4)
    signer = TokenSigner(b"k" * 32)
    issued = [signer.issue(i, 1, DIALECT_ALINK, ttl_s=60)[0] for i in range(10)]
    for token in issued:
        signer.verify(token, DIALECT_ALINK)
    assert len(signer._verified) == 4 and issued[-1] in signer._verified
    assert signer.verify(issued[0], DIALECT_ALINK).device_id == 0  # evicted tokens verify again
