"""TLS for the device listener: the self-signed default certificates and the cipher profiles.

Alibaba's Link SDK C, built as shipped, speaks TLS 1.2 with static-RSA key exchange, RSA
certificates and AES-CBC only (protocols.md §1.5b). The `compat` profile therefore serves an
RSA-2048 certificate and, after the ECDHE+AEAD suites every modern client picks (the server's
order wins), the four TLS_RSA_WITH_AES_*_CBC_SHA* suites. `modern` drops those (no forward
secrecy without them).

An ECDSA P-256 certificate is loaded beside the RSA one: OpenSSL picks it for clients that offer
ECDSA, which makes their handshakes about 10x cheaper (perfstack.md §3.3). The generated ECDSA
certificate is *issued by* the self-signed RSA certificate (`device-cert.pem`) and served with it
as its chain, so that one file is the trust anchor for every client: the C SDK (RSA only) and
modern clients (which get the ECDSA leaf) both verify against `device-cert.pem`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
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


def _subject(names: list[str], suffix: str = "") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names[0] if names else "iotgate") + suffix)])


def _san() -> x509.SubjectAlternativeName:
    names, addresses = host_names()
    return x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    )


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_rsa(cert_path: Path, key_path: Path) -> None:
    """Self-signed RSA-2048: the certificate the C SDK gets, and the issuer of the ECDSA one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = _subject(host_names()[0])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(_san(), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_ecdsa(cert_path: Path, key_path: Path, issuer_cert: x509.Certificate, issuer_key: rsa.RSAPrivateKey) -> None:
    """ECDSA P-256 leaf signed by the RSA certificate; the file holds the leaf, then the issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_subject(host_names()[0], " ECDSA"))  # not its issuer's name: it is not self-issued
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(min(now + dt.timedelta(days=3650), issuer_cert.not_valid_after_utc))
        .add_extension(_san(), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + issuer_cert.public_bytes(serialization.Encoding.PEM)
    )


def _issued_by(cert_path: Path, issuer: x509.Certificate) -> bool:
    """Whether the first certificate in cert_path is signed by `issuer` (older data dirs had a
    separately self-signed ECDSA certificate, which clients trusting device-cert.pem reject)."""
    try:
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, IndexError, InvalidSignature):
        return False
    return True


def ensure_self_signed(data_dir: Path) -> tuple[Path, Path, Path, Path]:
    """Create the default RSA and ECDSA certificates on first start; return their paths."""
    rsa_cert, rsa_key = data_dir / RSA_CERT, data_dir / RSA_KEY
    ec_cert, ec_key = data_dir / EC_CERT, data_dir / EC_KEY
    if not rsa_cert.exists() or not rsa_key.exists():
        _write_rsa(rsa_cert, rsa_key)
    issuer = x509.load_pem_x509_certificate(rsa_cert.read_bytes())
    issuer_key = serialization.load_pem_private_key(rsa_key.read_bytes(), None)
    if not isinstance(issuer_key, rsa.RSAPrivateKey):
        raise ValueError(f"{rsa_key} does not hold an RSA key")
    if not ec_cert.exists() or not ec_key.exists() or not _issued_by(ec_cert, issuer):
        _write_ecdsa(ec_cert, ec_key, issuer, issuer_key)
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
