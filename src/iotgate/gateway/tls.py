"""TLS for the device listener: the self-signed default certificates and the cipher profiles.

Alibaba's Link SDK C, built as shipped, speaks TLS 1.2 with static-RSA key exchange, RSA
certificates and AES-CBC only (protocols.md §1.5b). The `compat` profile therefore serves an
RSA-2048 certificate and, after the ECDHE+AEAD suites every modern client picks, the four
TLS_RSA_WITH_AES_*_CBC_SHA* suites. `modern` drops those (no forward secrecy without them).
An ECDSA P-256 certificate is loaded beside the RSA one: OpenSSL picks it for clients that
offer ECDSA, which makes their handshakes about 10x cheaper.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# Static-RSA suites for the Alibaba C SDK (TLS_RSA_WITH_AES_{128,256}_CBC_SHA{256,}).
COMPAT_EXTRA = "AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA"
RSA_CERT, RSA_KEY = "device-cert.pem", "device-key.pem"
EC_CERT, EC_KEY = "device-cert-ecdsa.pem", "device-key-ecdsa.pem"


def host_names() -> tuple[list[str], list[str]]:
    """DNS names and IP addresses this host answers to, for the subjectAltName."""
    names = {"localhost", socket.gethostname()}
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn())
    addresses = {"127.0.0.1", "::1"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addresses.add(str(info[4][0]).split("%")[0])
    except OSError:
        pass
    return sorted(n for n in names if n), sorted(addresses)


def _write_pair(cert_path: Path, key_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    names, addresses = host_names()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "iotgate")])
    now = dt.datetime.now(dt.UTC)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_self_signed(data_dir: Path) -> tuple[Path, Path, Path, Path]:
    """Create the default RSA and ECDSA certificates on first start; return their paths."""
    rsa_cert, rsa_key = data_dir / RSA_CERT, data_dir / RSA_KEY
    ec_cert, ec_key = data_dir / EC_CERT, data_dir / EC_KEY
    if not rsa_cert.exists() or not rsa_key.exists():
        _write_pair(rsa_cert, rsa_key, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if not ec_cert.exists() or not ec_key.exists():
        _write_pair(ec_cert, ec_key, ec.generate_private_key(ec.SECP256R1()))
    return rsa_cert, rsa_key, ec_cert, ec_key


def server_context(
    profile: str, cert: Path, key: Path, extra_cert: Path | None = None, extra_key: Path | None = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ciphers = MODERN_CIPHERS if profile == "modern" else f"{MODERN_CIPHERS}:{COMPAT_EXTRA}"
    ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(str(cert), str(key))
    if extra_cert and extra_key and extra_cert.exists():
        ctx.load_cert_chain(str(extra_cert), str(extra_key))
    return ctx
