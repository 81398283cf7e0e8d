"""Encryption at rest for device secrets (AES-256-GCM with the master key)."""

from __future__ import annotations

import base64
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v1:"


class SecretBox:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("master key must be 32 bytes")
        self._aead = AESGCM(master_key)

    @staticmethod
    def new_key() -> str:
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()

    @classmethod
    def from_text(cls, text: str) -> SecretBox:
        try:
            raw = base64.urlsafe_b64decode(text.strip().encode())
        except ValueError:
            raise ValueError("master key must be 32 bytes, url-safe base64") from None
        return cls(raw)

    def seal(self, plain: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plain.encode(), b"device-secret")
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # written before encryption was enabled
        raw = base64.urlsafe_b64decode(stored[len(PREFIX) :].encode())
        try:
            return self._aead.decrypt(raw[:12], raw[12:], b"device-secret").decode()
        except InvalidTag:
            raise ValueError("device secret cannot be decrypted: wrong master key") from None
