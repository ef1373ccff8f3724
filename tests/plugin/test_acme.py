"""The acme plugin against a real ACME server (pebble) on loopback.

Certificates for ``localhost`` by HTTP-01 (pebble's validator fetches from the plain-HTTP port)
and by TLS-ALPN-01 (it handshakes with the main listener asking for ``acme-tls/1``); a forced
renewal by 30-second certificates, with the connection made before it kept; an ACME server down
at start (one clear line, retries, the certificate once it is up); a failed renewal keeps the old
certificate and says so in the log and the stats.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import stat
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshscale.errors import ConfigError, MeshscaleError
from meshscale.plugins.metrics import exporter_of
from meshscale.ports import free_port
from tests.pebble import Pebble
from tests.waiting import wait_until

ServerFactory = Any


@pytest.fixture
def pebbles(tmp_path: Path) -> Iterator[Callable[..., Pebble]]:
    made: list[Pebble] = []

    def make(**kwargs: Any) -> Pebble:
        p = Pebble(tmp_path / f"pebble{len(made)}", **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def acme_config(pebble: Pebble, main: int, plain: int, challenge: str) -> dict[str, Any]:
    return {
        "port": main, "server_url": f"https://localhost:{main}",
        "acme_url": pebble.url, "acme_email": "admin@example.com",
        "tls_letsencrypt_hostname": "localhost",
        "tls_letsencrypt_challenge_type": challenge,
        "tls_letsencrypt_listen": f"127.0.0.1:{plain}",
        "acme": {"ca_file": str(pebble.ca_pem), "retry_min": "1s", "retry_max": "2s"},
    }


def scrape(exporter: Any) -> str:
    assert exporter is not None
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text: str = resp.read().decode()
    return text


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def handshake(port: int, root: bytes) -> tuple[int, Conn]:
    """A verified TLS connection to localhost:port trusting ``root``; the leaf's serial."""
    ctx = ssl.create_default_context(cadata=root.decode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="localhost")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number, (reader, writer)


async def get_health(conn: Conn) -> bytes:
    reader, writer = conn
    writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    line: bytes = await asyncio.wait_for(reader.readline(), 5)
    return line


@pytest.mark.parametrize("challenge", ["HTTP-01", "TLS-ALPN-01"])
async def test_a_certificate_is_issued_by_each_challenge_type(
        meshscale_server_factory: ServerFactory, pebbles: Callable[..., Pebble],
        challenge: str) -> None:
    main, plain = free_port(), free_port()
    pebble = pebbles(http_port=plain, tls_port=main)
    pebble.start()
    server = await meshscale_server_factory(plugins=["sqlite", "acme"],
                                            **acme_config(pebble, main, plain, challenge))
    assert server.plain_port == (plain if challenge == "HTTP-01" else 0)
    await wait_until(lambda: server.main_tls.current is not None, "the certificate", 60)
    _, conn = await handshake(main, pebble.root_pem())
    assert await get_health(conn) == b"HTTP/1.1 200 \r\n"
    conn[1].close()
    assert server.main_tls.current.names == ("localhost",)
    stats = server.stats()
    assert stats["acme_certificates_issued_total"] == 1 and stats["acme_failing"] == 0
    assert stats["tls_certificate_expiry_timestamp_seconds"] > 0
    # Account and certificate are kept in the data directory, private.
    cache = server.config.data_path / "acme"
    for name in ("account.key", "localhost.crt", "localhost.key"):
        assert stat.S_IMODE((cache / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    # The challenge answers were withdrawn once the order was done.
    assert server.main_tls.http01 == {} and server.main_tls.alpn01 == {}


async def test_short_certificates_are_renewed_without_restart_and_a_failed_renewal_keeps_the_old(
        meshscale_server_factory: ServerFactory, pebbles: Callable[..., Pebble],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    main, plain = free_port(), free_port()
    # 30-second certificates: renewal is due a third of the lifetime ahead, after ~20 s.
    pebble = pebbles(http_port=plain, tls_port=main, validity_seconds=30)
    pebble.start()
    root = pebble.root_pem()
    # The connection made before the renewal sends its request only after it (~20 s later):
    # longer than the default deadline for a request head (limits.header_timeout, 10 s).
    server = await meshscale_server_factory(plugins=["sqlite", "acme", "metrics"],
                                            metrics_listen_addr=f"127.0.0.1:{free_port()}",
                                            limits={"header_timeout": 60},
                                            **acme_config(pebble, main, plain, "HTTP-01"))
    await wait_until(lambda: server.main_tls.current is not None, "the first certificate", 60)
    first, before = await handshake(main, root)
    await wait_until(lambda: server.stats()["acme_certificates_issued_total"] >= 2,
                     "the renewal", 60)
    second, after = await handshake(main, root)
    assert second != first
    # The connection made before the renewal is still served.
    assert await get_health(before) == b"HTTP/1.1 200 \r\n"
    before[1].close()
    after[1].close()

    # The ACME server goes away: the next renewal fails, the current certificate stays.
    pebble.stop()
    await wait_until(lambda: server.stats()["acme_failing"] == 1, "a failed renewal", 60)
    assert "cannot reach the ACME server (Connection refused); keeping the current " \
           "certificate (valid until" in caplog.text
    third, conn = await handshake(main, root)
    assert third == second
    conn[1].close()
    assert server.stats()["acme_failures_total"] >= 1
    # And the metrics say so.
    metrics = await asyncio.to_thread(scrape, exporter_of(server))
    assert "meshscale_acme_failing 1.0" in metrics
    assert "meshscale_acme_certificates_issued_total 2.0" in metrics
    expiry = next(float(line.split()[1]) for line in metrics.splitlines()
                  if line.startswith("meshscale_tls_certificate_expiry_timestamp_seconds "))
    assert expiry == server.main_tls.current.not_after.timestamp()


async def test_an_acme_server_down_at_start_is_one_line_then_retried(
        meshscale_server_factory: ServerFactory, pebbles: Callable[..., Pebble],
        caplog: pytest.LogCaptureFixture) -> None:
    main, plain = free_port(), free_port()
    pebble = pebbles(http_port=plain, tls_port=main)  # made, not started yet
    server = await meshscale_server_factory(plugins=["sqlite", "acme"],
                                            **acme_config(pebble, main, plain, "HTTP-01"))
    await wait_until(lambda: server.stats()["acme_failing"] == 1, "the first failure", 20)
    line = next(r.getMessage() for r in caplog.records if "could not get a certificate" in
                r.getMessage())
    assert line == (f"acme: could not get a certificate for localhost from {pebble.url}: cannot "
                    "reach the ACME server (Connection refused); serving a temporary "
                    "self-signed certificate; retrying in 1s")
    assert server.main_tls.current is None
    pebble.start()
    await wait_until(lambda: server.main_tls.current is not None, "the certificate", 60)
    assert server.stats()["acme_failing"] == 0
    _, conn = await handshake(main, pebble.root_pem())
    conn[1].close()


async def test_a_cached_certificate_is_served_at_once_after_a_restart(
        meshscale_server_factory: ServerFactory, pebbles: Callable[..., Pebble],
        tmp_path: Path) -> None:
    main, plain = free_port(), free_port()
    pebble = pebbles(http_port=plain, tls_port=main)
    pebble.start()
    cfg = acme_config(pebble, main, plain, "HTTP-01")
    server = await meshscale_server_factory(plugins=["sqlite", "acme"], **cfg)
    await wait_until(lambda: server.main_tls.current is not None, "the certificate", 60)
    issued = server.main_tls.current.sha256
    await server.stop()
    pebble.stop()  # no ACME server now: the cache alone must do
    # The next server (the factory's data directory "server1") gets the first one's cache.
    shutil.copytree(server.config.data_path / "acme", tmp_path / "server1" / "acme")
    again = await meshscale_server_factory(plugins=["sqlite", "acme"], **cfg)
    assert again.main_tls.current is not None and again.main_tls.current.sha256 == issued


async def test_acme_settings_that_cannot_work_are_refused(
        meshscale_server_factory: ServerFactory) -> None:
    with pytest.raises(MeshscaleError) as exc:
        await meshscale_server_factory(plugins=["sqlite"], tls_letsencrypt_hostname="localhost")
    assert str(exc.value) == ("tls_letsencrypt_hostname: ACME needs the acme plugin: add acme "
                              "to plugins and pip install 'meshscale[acme]'")
    with pytest.raises(ConfigError, match="use either tls_cert_path/tls_key_path"):
        await meshscale_server_factory(plugins=["sqlite", "acme"], tls_cert_path="a.pem",
                                       tls_key_path="a.key", tls_letsencrypt_hostname="localhost")
    with pytest.raises(ConfigError, match="must be HTTP-01 or TLS-ALPN-01"):
        await meshscale_server_factory(plugins=["sqlite", "acme"],
                                       tls_letsencrypt_hostname="localhost",
                                       tls_letsencrypt_challenge_type="DNS-01")
    with pytest.raises(MeshscaleError, match=r"acme.ca_file: cannot read .*missing.pem"):
        await meshscale_server_factory(plugins=["sqlite", "acme"],
                                       tls_letsencrypt_hostname="localhost",
                                       acme={"ca_file": "missing.pem"})
