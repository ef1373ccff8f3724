"""Certificates for the main listener: loaded, checked, and turned into server contexts.

Every refusal is one line naming the setting and the file: unreadable, not PEM, a key that does
not belong to the certificate, expired or not yet valid.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshscale.errors import MeshscaleError

#: Offered to clients; the front door speaks HTTP/1.1 (upgrades to Noise and DERP), never h2.
ALPN = ("http/1.1",)


class TlsError(MeshscaleError):
    """A certificate or key that cannot be served, with the setting and file at fault."""


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate ready to serve: its context and what clients will see."""

    context: ssl.SSLContext
    not_before: datetime.datetime
    not_after: datetime.datetime
    names: tuple[str, ...]
    sha256: str  # of the leaf's DER, hex: tells one certificate from the next in logs
    source: str  # where it came from, for logs

    def remaining(self, now: datetime.datetime | None = None) -> datetime.timedelta:
        return self.not_after - (now or datetime.datetime.now(datetime.UTC))


def server_context(chain_pem: bytes, key_pem: bytes,
                   alpn: tuple[str, ...] = ALPN) -> ssl.SSLContext:
    """A TLS server context for a PEM chain and key (ssl reads only files: a private temp dir)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(list(alpn))
    with tempfile.TemporaryDirectory(prefix="meshscale-tls-") as tmp:
        path = Path(tmp) / "pair.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem + b"\n" + chain_pem)
        ctx.load_cert_chain(path)
    return ctx


def from_pem(chain_pem: bytes, key_pem: bytes, *, cert_what: str, key_what: str,
             now: datetime.datetime | None = None) -> Certificate:
    """Check a chain and key and build their context. ``cert_what``/``key_what`` name them in
    errors (``tls_cert_path /etc/x.pem``)."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise TlsError(f"{cert_what} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        why = "is encrypted; give an unencrypted key" if "encrypted" in str(exc).lower() \
            or isinstance(exc, TypeError) else "holds no PEM private key"
        raise TlsError(f"{key_what} {why}") from None
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise TlsError(f"{key_what} is not the key of the certificate in {cert_what}; "
                       "give the matching pair")
    if leaf.not_valid_after_utc <= now:
        raise TlsError(f"{cert_what}: the certificate expired on "
                       f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; renew it")
    if leaf.not_valid_before_utc > now:
        raise TlsError(f"{cert_what}: the certificate is not valid before "
                       f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check the clock")
    try:
        ctx = server_context(chain_pem, key_pem)
    except ssl.SSLError as exc:
        raise TlsError(f"{cert_what} and {key_what} cannot be served: "
                       f"{exc.reason or exc}") from None
    der = leaf.public_bytes(serialization.Encoding.DER)
    return Certificate(ctx, leaf.not_valid_before_utc, leaf.not_valid_after_utc,
                       tuple(names_of(leaf)), hashlib.sha256(der).hexdigest(),
                       cert_what)


def from_files(cert_path: Path, key_path: Path, *, cert_setting: str = "tls_cert_path",
               key_setting: str = "tls_key_path",
               now: datetime.datetime | None = None) -> Certificate:
    texts = []
    for setting, path in ((cert_setting, cert_path), (key_setting, key_path)):
        try:
            texts.append(path.read_bytes())
        except OSError as exc:
            raise TlsError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    return from_pem(texts[0], texts[1], cert_what=f"{cert_setting} {cert_path}",
                    key_what=f"{key_setting} {key_path}", now=now)


def names_of(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def self_signed_pem(name: str, days: float, *,
                    critical: list[x509.ExtensionType] | None = None) -> tuple[bytes, bytes]:
    """A throwaway self-signed certificate for ``name`` (chain PEM, key PEM). Used until ACME
    has a real one, and (with the acmeIdentifier extension) to answer TLS-ALPN-01."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        alt = x509.DNSName(name)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
    )
    for ext in critical or []:
        builder = builder.add_extension(ext, critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
