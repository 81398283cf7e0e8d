"""OpenSSL through ctypes, for what Python's `ssl` module has no call for: one set of session-ticket
keys for all device workers (tls_tickets.py) and giving back idle memory-BIO buffers
(tls_buffers.py). Both reach the OpenSSL that `_ssl` itself uses, and the C pointer CPython keeps
in an `_ssl` object; each caller verifies that pointer before use and falls back to doing nothing.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
from functools import cache


@cache
def openssl() -> ctypes.CDLL | None:
    """The OpenSSL `_ssl` is linked to: a dlopen handle of `_ssl` resolves symbols in `_ssl`'s own
    dependencies (its libssl and libcrypto) first. None if that is not the version `ssl` reports
    (another Python implementation, an OpenSSL linked statically into `_ssl`)."""
    import _ssl

    if sys.implementation.name != "cpython":
        return None
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        version = lib.OpenSSL_version_num
    except (OSError, AttributeError):
        return None
    version.restype, version.argtypes = ctypes.c_ulong, []
    return lib if version() == ssl.OPENSSL_VERSION_NUMBER else None


def object_pointer(obj: ssl.SSLContext | ssl.MemoryBIO) -> int:
    """The pointer CPython keeps right after an `_ssl` object's header (PySSLContext: `SSL_CTX *`,
    PySSLMemoryBIO: `BIO *`); 0 if none. Unverified: callers check it is what they expect."""
    return ctypes.c_void_p.from_address(id(obj) + object.__basicsize__).value or 0
