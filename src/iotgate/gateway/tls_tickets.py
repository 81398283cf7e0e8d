"""One set of TLS session-ticket keys for all device workers, so a ticket resumes on any of them.

OpenSSL gives every `SSL_CTX` random ticket keys of its own. With `--workers N` each worker
process loads its own context and the kernel spreads connections over the workers (SO_REUSEPORT),
so a client's ticket from one worker was refused by the others: with two workers about half of the
reconnections fell back to a full handshake (certificate chain, ECDSA signature, and on the client
the certificate parsing and signature check). nginx shares one key set between its workers.

The main process makes the keys (random, in memory only, for its lifetime, as OpenSSL's own
are for a context's) and hands them to each worker it spawns, which installs them with
`SSL_CTX_set_tlsext_ticket_keys`. Python's `ssl` module has no call for it, so it is reached
through ctypes on the OpenSSL that `_ssl` itself is linked to (openssl_ctypes.py), after checking that the pointer
taken from the `SSLContext` object is that context's `SSL_CTX` (its options and verify mode read
back through libssl match what Python reports). If anything does not fit (another Python
implementation, a statically linked OpenSSL), the keys are not installed and each worker keeps
its own, as before: resumption then works only on the same worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
from functools import cache

from iotgate.gateway.openssl_ctypes import object_pointer, openssl

log = logging.getLogger("iotgate.gateway")

# key name 16 + HMAC secret 32 + AES-256 key 32 (OpenSSL 1.1.0 and later)
TICKET_KEYS_BYTES = 80
_SET_TICKET_KEYS = 59  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS
_GET_TICKET_KEYS = 58  # SSL_CTRL_GET_TLSEXT_TICKET_KEYS


def new_ticket_keys() -> bytes:
    return os.urandom(TICKET_KEYS_BYTES)


@cache
def _libssl() -> ctypes.CDLL | None:
    """OpenSSL with the SSL_CTX calls used here typed."""
    lib = openssl()
    if lib is None:
        return None
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    return lib


def _ssl_ctx(context: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The `SSL_CTX *` of `context`: CPython's PySSLContext holds it right after the object header."""
    pointer = object_pointer(context)
    if not pointer:
        return None
    if lib.SSL_CTX_get_options(pointer) != context.options:
        return None
    if lib.SSL_CTX_get_verify_mode(pointer) != int(context.verify_mode):
        return None
    return int(pointer)


def set_ticket_keys(context: ssl.SSLContext, keys: bytes) -> bool:
    """Make `context` encrypt and accept session tickets with `keys`; False if it cannot be done."""
    if len(keys) != TICKET_KEYS_BYTES:
        raise ValueError(f"TLS ticket keys are {TICKET_KEYS_BYTES} bytes, not {len(keys)}")
    lib = _libssl()
    pointer = _ssl_ctx(context, lib) if lib is not None else None
    if lib is None or pointer is None:
        log.warning("cannot share TLS session-ticket keys between device workers: tickets resume on one worker only")
        return False
    buffer = ctypes.create_string_buffer(keys, len(keys))
    return lib.SSL_CTX_ctrl(pointer, _SET_TICKET_KEYS, len(keys), buffer) == 1


def ticket_keys(context: ssl.SSLContext) -> bytes | None:
    """The keys `context` uses now (for tests); None if they cannot be read."""
    lib = _libssl()
    pointer = _ssl_ctx(context, lib) if lib is not None else None
    if lib is None or pointer is None:
        return None
    buffer = ctypes.create_string_buffer(TICKET_KEYS_BYTES)
    if lib.SSL_CTX_ctrl(pointer, _GET_TICKET_KEYS, TICKET_KEYS_BYTES, buffer) != 1:
        return None
    return buffer.raw
