"""The embedded DERP's self-signed TLS certificate, made once and kept in the data directory.

Clients accept it because the DERP map pins it: ``CertName: "sha256-raw:<hex sha256 of the DER
leaf>"`` (real-clients.md). The Go client still checks that the certificate names the node's
HostName (an IP SAN for an IP) and is within its validity period, so the certificate carries
every host we advertise, and is made again when that set changes or it nears expiry.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshscale import files

log = logging.getLogger(__name__)

CERT_FILE = "derp_tls_cert.pem"
KEY_FILE = "derp_tls_key.pem"
VALIDITY = datetime.timedelta(days=5 * 365)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert_path: Path
    key_path: Path
    der_sha256: str  # hex

    @property
    def cert_name(self) -> str:
        """The DERPNode ``CertName`` that pins exactly this certificate."""
        return f"sha256-raw:{self.der_sha256}"


def ensure_self_signed(
    directory: Path, hosts: Iterable[str], now: datetime.datetime | None = None
) -> CertFiles:
    """Reuse the certificate in ``directory`` if it covers ``hosts`` and is fresh; else make one."""
    now = now or datetime.datetime.now(datetime.UTC)
    wanted = sorted({h for h in hosts if h})
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    existing = _load(cert_path, key_path)
    if existing is not None:
        cert, der = existing
        if _covers(cert, wanted) and cert.not_valid_after_utc - RENEW_BEFORE > now:
            return CertFiles(cert_path, key_path, hashlib.sha256(der).hexdigest())
        log.info("derp: TLS certificate in %s is stale or misses a host; making a new one",
                 directory)
    der = _generate(cert_path, key_path, wanted, now)
    log.info("derp: made a self-signed TLS certificate for %s", ", ".join(wanted))
    return CertFiles(cert_path, key_path, hashlib.sha256(der).hexdigest())


def server_context(files: CertFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert_path, files.key_path)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, bytes] | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return cert, cert.public_bytes(serialization.Encoding.DER)


def _covers(cert: x509.Certificate, hosts: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    return all((h in ips) if _is_ip(h) else (h.lower() in names) for h in hosts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _generate(cert_path: Path, key_path: Path, hosts: list[str], now: datetime.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshscale embedded DERP")])
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # tolerate clients' clock skew
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # macOS wants BasicConstraints on a certificate whose subject is its issuer.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files.write_private(key_path, key_pem)
    files.write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER)


