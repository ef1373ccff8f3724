"""The ClientHello reader on real ClientHellos (made by OpenSSL through Python's ssl module)."""

from __future__ import annotations

import contextlib
import functools
import ssl

from hypothesis import given
from hypothesis import strategies as st

from meshscale.tls import clienthello
from meshscale.tls.clienthello import NEED_MORE, ClientHello


@functools.cache
def real_hello(name: str | None, alpn: tuple[str, ...] | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_server_name_and_alpn_are_read() -> None:
    hello = real_hello("ctl.example.net", ("acme-tls/1",))
    assert clienthello.parse(hello) == ClientHello("ctl.example.net", ("acme-tls/1",))
    assert clienthello.parse(real_hello("a.b", ("h2", "http/1.1"))) == \
        ClientHello("a.b", ("h2", "http/1.1"))
    assert clienthello.parse(real_hello(None, None)) == ClientHello(None, ())


def test_every_prefix_needs_more_and_split_records_are_joined() -> None:
    hello = real_hello("ctl.example.net", ("acme-tls/1",))
    for cut in range(len(hello)):
        assert clienthello.parse(hello[:cut]) is NEED_MORE
    # The same handshake message sent as two records (allowed, and done by some clients).
    body = hello[5:]
    first, second = body[:40], body[40:]
    split = (b"\x16\x03\x01" + len(first).to_bytes(2, "big") + first
             + b"\x16\x03\x01" + len(second).to_bytes(2, "big") + second)
    assert clienthello.parse(split) == ClientHello("ctl.example.net", ("acme-tls/1",))


def test_not_tls_is_none() -> None:
    assert clienthello.parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None
    assert clienthello.parse(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") is None  # ServerHello


@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    clienthello.parse(b"\x16\x03\x01" + data)
    clienthello.parse(data)


@given(st.integers(min_value=5, max_value=200), st.binary(min_size=1, max_size=50))
def test_corrupted_hellos_never_raise(at: int, junk: bytes) -> None:
    hello = bytearray(real_hello("x.example", ("acme-tls/1",)))
    hello[at:at + len(junk)] = junk
    result = clienthello.parse(bytes(hello))
    assert result is None or result is NEED_MORE or isinstance(result, ClientHello)
