"""HTTPS on the main listener with an own certificate: served, reloaded without dropping anyone,
bad pairs refused with one line, the plain-HTTP redirect port, TLS-ALPN-01 routing.

Real TLS over 127.0.0.1 against an in-process server; clients are Python's ssl module trusting a
throwaway CA (tests/tlsca.py).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshscale.errors import MeshscaleError
from meshscale.ports import free_port
from meshscale.tls import certs, manager
from tests.tlsca import Issued, TestCA

ServerFactory = Any


def client_context(ca: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class Conn:
    """One HTTPS connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext, name: str = "localhost") -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname=name)
        return cls(reader, writer)

    @property
    def serial(self) -> int:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    async def get(self, path: str = "/health") -> str:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await self.reader.readexactly(length)
        return head.split(b"\r\n")[0].decode()

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


def tls_config(issued: Issued, port: int, **extra: Any) -> dict[str, Any]:
    return {"port": port, "server_url": f"https://localhost:{port}",
            "tls_cert_path": str(issued.cert), "tls_key_path": str(issued.key), **extra}


async def test_https_serves_and_a_new_pair_applies_to_new_handshakes_only(
        meshscale_server_factory: ServerFactory, ca: TestCA) -> None:
    first = ca.issue("first", "localhost", "127.0.0.1")
    port = free_port()
    server = await meshscale_server_factory(plugins=["sqlite"], **tls_config(first, port))
    ctx = client_context(ca.pem)
    # Established before the reload, used only after it (the front door serves one request per
    # plain-HTTP connection; a long-lived /ts2021 or /derp connection is in the same position).
    old = await Conn.open(port, ctx)
    assert old.serial == first.serial

    # A renewal lands in the same files (as certbot does); SIGHUP's handler runs.
    second = ca.issue("second", "localhost", stem="next")
    shutil.copy(second.cert, first.cert)
    shutil.copy(second.key, first.key)
    server.reload()
    new = await Conn.open(port, ctx)
    assert await new.get() == "HTTP/1.1 200 "
    assert new.serial == second.serial
    # The connection made before the reload is still served, on its old certificate.
    assert await old.get() == "HTTP/1.1 200 "
    assert old.serial == first.serial
    assert server.stats()["tls_reloads_total"] == 1
    old.close()
    new.close()


async def test_a_changed_file_is_picked_up_without_a_signal(
        meshscale_server_factory: ServerFactory, ca: TestCA,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager, "WATCH_INTERVAL", 0.1)
    first = ca.issue("first", "localhost")
    port = free_port()
    await meshscale_server_factory(plugins=["sqlite"], **tls_config(first, port))
    second = ca.issue("second", "localhost", stem="next")
    shutil.copy(second.key, first.key)
    shutil.copy(second.cert, first.cert)
    ctx = client_context(ca.pem)

    async def serial() -> int:
        conn = await Conn.open(port, ctx)
        conn.close()
        return conn.serial

    for _ in range(50):
        if await serial() == second.serial:
            break
        await asyncio.sleep(0.1)
    assert await serial() == second.serial


async def test_a_bad_new_pair_is_refused_and_the_old_one_kept(
        meshscale_server_factory: ServerFactory, ca: TestCA,
        caplog: pytest.LogCaptureFixture) -> None:
    first = ca.issue("first", "localhost")
    port = free_port()
    server = await meshscale_server_factory(plugins=["sqlite"], **tls_config(first, port))
    other = ca.issue("other", "localhost", stem="other")
    shutil.copy(other.key, first.key)  # the key of another certificate
    server.reload()
    assert "TLS certificate reload refused, still serving the old one" in caplog.text
    assert "is not the key of the certificate" in caplog.text
    conn = await Conn.open(port, client_context(ca.pem))
    assert conn.serial == first.serial
    conn.close()
    assert server.stats()["tls_reload_failures_total"] == 1


async def test_a_certificate_near_expiry_is_served_with_a_warning(
        meshscale_server_factory: ServerFactory, ca: TestCA,
        caplog: pytest.LogCaptureFixture) -> None:
    soon = ca.issue("soon", "localhost", days=3)
    await meshscale_server_factory(plugins=["sqlite"], **tls_config(soon, free_port()))
    assert f"TLS certificate tls_cert_path {soon.cert} expires in 2 days" in caplog.text


def test_refusals_are_one_line(ca: TestCA, tmp_path: Path) -> None:
    good = ca.issue("good", "localhost")
    other = ca.issue("other", "localhost", stem="other")
    expired = ca.issue("old", "localhost", days=-1, start_days=-5, stem="expired")
    with pytest.raises(certs.TlsError) as exc:
        certs.from_files(good.cert, other.key)
    assert str(exc.value) == (f"tls_key_path {other.key} is not the key of the certificate in "
                              f"tls_cert_path {good.cert}; give the matching pair")
    with pytest.raises(certs.TlsError, match=r"the certificate expired on .* UTC; renew it"):
        certs.from_files(expired.cert, expired.key)
    missing = tmp_path / "nope.pem"
    with pytest.raises(certs.TlsError) as exc:
        certs.from_files(good.cert, missing)
    assert str(exc.value) == f"tls_key_path: cannot read {missing}: No such file or directory"
    with pytest.raises(certs.TlsError, match="holds no PEM certificate"):
        certs.from_files(good.key, good.key)


async def test_start_is_refused_on_an_expired_certificate(
        meshscale_server_factory: ServerFactory, ca: TestCA) -> None:
    expired = ca.issue("old", "localhost", days=-1, start_days=-5, stem="expired")
    with pytest.raises(MeshscaleError, match="expired"):
        await meshscale_server_factory(plugins=["sqlite"], **tls_config(expired, free_port()))


async def test_plain_port_redirects_to_server_url_and_answers_http01(
        meshscale_server_factory: ServerFactory, ca: TestCA) -> None:
    cert = ca.issue("good", "localhost")
    port, plain = free_port(), free_port()
    server = await meshscale_server_factory(
        plugins=["sqlite"], **tls_config(cert, port, tls_redirect_listen_addr=f"127.0.0.1:{plain}"))
    assert server.plain_port == plain

    async def ask(path: str, host: str = "evil.example") -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", plain)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data

    reply = await ask("/register/abc?x=1")
    assert reply.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n")
    # To server_url, never to the Host a stranger sent.
    assert f"Location: https://localhost:{port}/register/abc?x=1\r\n".encode() in reply
    server.main_tls.http01["/.well-known/acme-challenge/tok"] = b"tok.thumb"
    reply = await ask("/.well-known/acme-challenge/tok")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\ntok.thumb")
    assert (await ask("/.well-known/acme-challenge/other")).startswith(b"HTTP/1.1 404")


async def test_tls_alpn01_validator_gets_the_challenge_certificate_others_the_real_one(
        meshscale_server_factory: ServerFactory, ca: TestCA) -> None:
    cert = ca.issue("good", "localhost")
    port = free_port()
    server = await meshscale_server_factory(plugins=["sqlite"], **tls_config(cert, port))
    chain, key = certs.self_signed_pem("localhost", days=1)
    server.main_tls.alpn01["localhost"] = certs.server_context(chain, key, ("acme-tls/1",))
    want = x509.load_pem_x509_certificate(chain).serial_number

    validator = ssl.create_default_context()
    validator.check_hostname = False
    validator.verify_mode = ssl.CERT_NONE
    validator.set_alpn_protocols(["acme-tls/1"])
    conn = await Conn.open(port, validator)
    assert conn.serial == want
    assert conn.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "acme-tls/1"
    conn.close()
    # A client on the same name at the same time gets the real certificate.
    normal = await Conn.open(port, client_context(ca.pem, ["http/1.1"]))
    assert normal.serial == cert.serial
    assert await normal.get() == "HTTP/1.1 200 "
    normal.close()
