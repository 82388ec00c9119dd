"""STARTTLS: the listener's TLS context, from the configured certificate or a self-signed one made once."""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings

from delivery.listener.config import Config


def tls_context(config: Config) -> ssl.SSLContext:
    """The STARTTLS context: the configured certificate, else a self-signed one made once in the data directory."""
    if config.tls_cert:
        cert, key = Path(config.tls_cert), Path(config.tls_key or config.tls_cert)
    else:
        cert, key = ensure_self_signed(settings.DATA_DIR / "tls", config.hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate and key for `hostname` (10 years), generated on first use, key mode 0600."""

    cert_path, key_path = directory / "smtpd-cert.pem", directory / "smtpd-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    # Several listener processes (and machines sharing the data directory) may start at once: one makes the
    # pair, under a lock, and the others use it (two makers gave a key that did not match the certificate).
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        _make_self_signed(cert_path, key_path, hostname)
    return cert_path, key_path


def self_signed(
    hostname: str, *, addresses: Sequence[str] = (), days: int = 3650, ca: bool = False
) -> tuple[bytes, bytes]:
    """A self-signed certificate for `hostname` (and the IP `addresses`), valid for `days`, and its key: PEM
    (cert, key). `ca` marks it a CA, so that a client may trust it as its own root (the test peers do)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    sans: list[x509.GeneralName] = [x509.DNSName(hostname or "localhost")]
    sans += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _make_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    cert, key = self_signed(hostname)
    tmp = key_path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_bytes(key)
    tmp.replace(key_path)
    tmp_cert = cert_path.with_suffix(".tmp")
    tmp_cert.write_bytes(cert)
    tmp_cert.replace(cert_path)
