"""Give the buffers of an idle TLS connection's memory BIOs back to the allocator.

`ssl.MemoryBIO` is OpenSSL's `BIO_s_mem`: its buffer (a `BUF_MEM`) grows to the most bytes it
has held at once and is never shrunk. After a handshake the outgoing BIO keeps room for the
server's first flight (certificate chain: ~2.3 KB with the default certificates) and the incoming
one for the ClientHello (~0.7 KB); later each keeps the size of the largest request or reply.
Measured: 3.1 KB of the ~20 KB an idle TLS 1.3 connection holds (docs/benchmarks.md, "Idle TLS
connections: where each KiB goes").

Python's `ssl` has no call for it. `BIO_set_mem_buf()` (`BIO_ctrl(bio, BIO_C_SET_BUF_MEM,
BIO_CLOSE, buf)`, public API) installs a new, empty `BUF_MEM` and frees the old one with its data;
it is done only while the BIO holds no bytes, so nothing is lost, and the BIO grows again on its
next write. OpenSSL is reached through ctypes on the library the `_ssl` extension is linked to (a
dlopen handle of `_ssl` resolves symbols in its own dependencies first; the version is checked; openssl_ctypes.py),
at the `BIO *` that CPython's `PySSLMemoryBIO` keeps right after its object header. That layout is
verified once per process on a probe BIO (OpenSSL reports it as a memory BIO holding exactly the
bytes Python wrote, and it still works after a release). If anything does not fit (another Python
implementation, OpenSSL linked statically into `_ssl`), `release()` does nothing: the buffers
stay as they were.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
from collections.abc import Callable
from functools import cache

from iotgate.gateway.openssl_ctypes import object_pointer, openssl

log = logging.getLogger("iotgate.gateway")

_BIO_TYPE_MEM = 1 | 0x0400  # BIO_TYPE_MEM: BIO_TYPE_SOURCE_SINK | 1
_BIO_CTRL_PENDING = 10
_BIO_C_SET_BUF_MEM = 114
_BIO_CLOSE = 1  # the BIO owns (and frees) the BUF_MEM it is given


def _load() -> ctypes.CDLL | None:
    """OpenSSL with the BIO calls used here typed."""
    lib = openssl()
    if lib is None:
        return None
    try:
        buf_mem_new, bio_ctrl, method_type = lib.BUF_MEM_new, lib.BIO_ctrl, lib.BIO_method_type
    except AttributeError:
        return None
    buf_mem_new.restype, buf_mem_new.argtypes = ctypes.c_void_p, []
    bio_ctrl.restype = ctypes.c_long
    bio_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    method_type.restype, method_type.argtypes = ctypes.c_int, [ctypes.c_void_p]
    return lib


def _releaser_of(lib: ctypes.CDLL) -> Callable[[int], bool]:
    new, ctrl = lib.BUF_MEM_new, lib.BIO_ctrl

    def release(pointer: int) -> bool:
        buf = new()
        return bool(buf) and ctrl(pointer, _BIO_C_SET_BUF_MEM, _BIO_CLOSE, buf) == 1

    return release


def _verified(lib: ctypes.CDLL, release: Callable[[int], bool]) -> bool:
    """Whether the pointer read from a MemoryBIO is its BIO, and a release keeps it working."""
    probe = ssl.MemoryBIO()
    probe.write(b"iotgate" * 100)
    pointer = object_pointer(probe)
    if not pointer or lib.BIO_method_type(pointer) != _BIO_TYPE_MEM:
        return False
    if lib.BIO_ctrl(pointer, _BIO_CTRL_PENDING, 0, None) != probe.pending:
        return False
    probe.read()
    if not release(pointer):
        return False
    probe.write(b"after")
    return probe.pending == 5 and probe.read() == b"after"


@cache
def _releaser() -> Callable[[int], bool] | None:
    """Releases the buffer of the BIO at a pointer; None where that cannot be done safely."""
    lib = _load()
    release = _releaser_of(lib) if lib is not None else None
    if lib is None or release is None or not _verified(lib, release):
        log.debug("TLS memory BIO buffers cannot be released here: they keep their largest size")
        return None
    return release


def available() -> bool:
    return _releaser() is not None


def release(bio: ssl.MemoryBIO) -> bool:
    """Free `bio`'s buffer if it holds no bytes (a new, empty one takes its place); True if done."""
    releaser = _releaser()
    if releaser is None or bio.pending or type(bio) is not ssl.MemoryBIO:
        return False
    pointer = object_pointer(bio)
    return bool(pointer) and releaser(pointer)
