"""``tailscale cert`` end to end inside the netns: real tailscaled v1.102.5, meshscale with the
contrib RFC 2136 DNS-01 plugin, a real BIND serving the tailnet's base domain, and pebble (Let's
Encrypt's test ACME server) validating the DNS-01 challenge against that BIND.

The client asks pebble for a certificate of its own name, sends ``/machine/set-dns`` for
``_acme-challenge.<name>``; meshscale checks the name and has the plugin update BIND; pebble
looks the TXT record up in BIND and issues the certificate, which the client writes out.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509

from meshscale.ports import free_port
from tests.interop.realclients import MeshscaleProcess
from tests.interop.tailscaled import Tailscaled
from tests.pebble import Pebble

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

ROOT = Path(__file__).resolve().parents[2]


def bind9_helper() -> ModuleType:
    """The contrib plugin's BIND helper (one home for starting named in tests)."""
    path = ROOT / "contrib_plugins" / "meshscale-rfc2136" / "tests" / "bind9.py"
    spec = importlib.util.spec_from_file_location("rfc2136_bind9", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being made
    spec.loader.exec_module(module)
    return module


def test_tailscale_cert_through_dns01(tmp_path: Path,
                                      tailscaled: Callable[..., Tailscaled]) -> None:
    zone = "ts.example.com"
    with bind9_helper().named(tmp_path / "named", zone) as bind:
        pebble = Pebble(tmp_path / "pebble", http_port=free_port(), tls_port=free_port(),
                        dns_server=f"127.0.0.1:{bind.port}")
        pebble.start()
        server = MeshscaleProcess(
            tmp_path, ["sqlite", "derp", "stun", "rfc2136"],
            extra=(f"dns:\n  base_domain: {zone}\n"
                   f"rfc2136:\n  server: 127.0.0.1\n  port: {bind.port}\n  zone: {zone}\n"
                   f"  tsig_key_name: {bind.key_name}\n  tsig_secret: {bind.secret}\n"))
        server.start()
        try:
            server.cli("users", "create", "alice")
            key = server.cli("preauthkeys", "create", "-u", "alice", "-o", "json")["key"]
            web = tailscaled("web", env={"TS_DEBUG_ACME_DIRECTORY_URL": pebble.url,
                                         "SSL_CERT_FILE": str(pebble.ca_pem)})
            web.start()
            web.up(server.url, key)
            name = f"web.{zone}"
            assert web.status()["CertDomains"] == [name]
            crt, keyfile = tmp_path / "web.crt", tmp_path / "web.key"
            out = web.cli("cert", f"--cert-file={crt}", f"--key-file={keyfile}", name,
                          timeout=120)
            assert out.returncode == 0, out.stderr
            leaf = x509.load_pem_x509_certificate(crt.read_bytes())
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert sans.value.get_values_for_type(x509.DNSName) == [name]
            # It chains to pebble's root, and BIND served the challenge meshscale asked for.
            chain = x509.load_pem_x509_certificates(crt.read_bytes())
            root = x509.load_pem_x509_certificate(pebble.root_pem())
            assert len(chain) >= 2 and chain[-1].issuer == root.subject
            assert bind.txt(f"_acme-challenge.{name}"), "the TXT record is in BIND"
            log = server.log.read_text(errors="replace")
            assert f"DNS-01: rfc2136 set _acme-challenge.{name} TXT" in log
            # Another node's name is refused before any DNS update.
            other = web.cli("cert", f"--cert-file={tmp_path / 'x.crt'}",
                            f"--key-file={tmp_path / 'x.key'}", f"other.{zone}",
                            check=False, timeout=60)
            assert other.returncode != 0
            assert json.dumps(web.status()["CertDomains"]) == json.dumps([name])
        finally:
            server.stop()
            pebble.stop()
