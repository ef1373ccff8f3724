"""The self-signed certificate: made once, pinned by hash, renewed when hosts change."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshscale.plugins.derp import tls


def _cert(files: tls.CertFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files.cert_path.read_bytes())


def test_made_once_and_reused(tmp_path: Path) -> None:
    first = tls.ensure_self_signed(tmp_path, ["127.0.0.1", "derp.example.com"])
    cert = _cert(first)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert first.der_sha256 == hashlib.sha256(der).hexdigest()
    assert first.cert_name == "sha256-raw:" + first.der_sha256
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["derp.example.com"]
    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    # Same hosts (any order, duplicates): the same certificate.
    again = tls.ensure_self_signed(tmp_path, ["derp.example.com", "127.0.0.1", "127.0.0.1"])
    assert again.der_sha256 == first.der_sha256
    # A subset is covered too.
    assert tls.ensure_self_signed(tmp_path, ["127.0.0.1"]).der_sha256 == first.der_sha256
    assert tls.server_context(again) is not None


def test_new_host_or_near_expiry_makes_a_new_one(tmp_path: Path) -> None:
    first = tls.ensure_self_signed(tmp_path, ["127.0.0.1"])
    second = tls.ensure_self_signed(tmp_path, ["127.0.0.1", "10.99.0.1"])
    assert second.der_sha256 != first.der_sha256
    later = datetime.datetime.now(datetime.UTC) + tls.VALIDITY - datetime.timedelta(days=1)
    third = tls.ensure_self_signed(tmp_path, ["127.0.0.1", "10.99.0.1"], now=later)
    assert third.der_sha256 != second.der_sha256


def test_garbage_files_are_replaced(tmp_path: Path) -> None:
    (tmp_path / tls.CERT_FILE).write_text("nope")
    (tmp_path / tls.KEY_FILE).write_text("nope")
    files = tls.ensure_self_signed(tmp_path, ["127.0.0.1"])
    assert _cert(files).not_valid_after_utc > datetime.datetime.now(datetime.UTC)
