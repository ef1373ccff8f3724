"""Property-based fuzzing of every parser a stranger reaches before or without registering.

Noise records and handshake initiations, the HTTP/1.1 request head and the ts2021 upgrade (the
real front door on a socket pair), the HTTP/2 frame guard, DERP frames and ClientInfo, STUN.
The property everywhere: any input gives a result or the parser's own refusal (ProtocolError,
None, a 4xx answer), never another exception; and what our encoders produce parses back to
what went in, however the bytes are split. Budget: tests/conftest.py (HYPOTHESIS_PROFILE).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from meshscale.control.h2guard import PREFACE, FrameGuard, FrameSizeError
from meshscale.errors import ProtocolError
from meshscale.httphead import read_head
from meshscale.noise import handshake
from meshscale.noise.records import MAX_PLAINTEXT, RecordDecoder, RecordEncoder
from meshscale.plugins.derp import frames
from meshscale.plugins.derp import handshake as derp_handshake
from meshscale.plugins.stun import codec
from meshscale.transport import FrontDoor
from tests.frontdoor_stubs import no_control, not_found_app
from tests.noiseclient import Initiator

KEY = bytes(range(32))
SERVER = X25519PrivateKey.generate()


def chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` split at the given positions (as a socket might deliver it)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    start = 0
    for p in [*points, len(data)]:
        yield data[start:p]
        start = p


cut_lists = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=8)


# -- Noise --------------------------------------------------------------------------------------


@given(st.binary(max_size=6000), cut_lists)
def test_noise_records_any_bytes(data: bytes, cuts: list[int]) -> None:
    dec = RecordDecoder(KEY)
    try:
        for part in chunks(data, cuts):
            dec.feed(part)
    except ProtocolError:
        pass


@given(st.lists(st.binary(max_size=2 * MAX_PLAINTEXT), max_size=4), cut_lists)
def test_noise_records_round_trip(messages: list[bytes], cuts: list[int]) -> None:
    enc, dec = RecordEncoder(KEY), RecordDecoder(KEY)
    wire = b"".join(enc.encode(m) for m in messages)
    out = b"".join(dec.feed(part) for part in chunks(wire, cuts))
    assert out == b"".join(messages) and dec.pending == 0


@given(st.binary(max_size=300))
def test_noise_initiation_any_bytes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        handshake.respond(SERVER, data)


@given(st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=255))
def test_noise_initiation_any_single_byte_change_is_refused(pos: int, xor: int) -> None:
    assume(xor != 0)
    init = bytearray(Initiator(X25519PrivateKey.generate(),
                               handshake.public_bytes(SERVER)).initiation())
    init[pos] ^= xor  # the version (bytes 0-1) is in the prologue: changing it fails too
    with pytest.raises(ProtocolError):
        handshake.respond(SERVER, bytes(init))


# -- HTTP/1.1 head and the ts2021 upgrade --------------------------------------------------------


def _head_of(data: bytes) -> Any:
    async def run() -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_head(reader)

    return asyncio.run(run())


@given(st.binary(max_size=3000))
def test_request_head_any_bytes(data: bytes) -> None:
    try:
        head = _head_of(data)
    except ValueError:
        return
    assert head is None or head.raw.startswith(data[: len(head.raw)])


def _front_door_answer(request: bytes) -> bytes:
    """``request`` through the real front door over a socket pair; what the client reads."""

    async def run() -> bytes:
        front = FrontDoor(SERVER, no_control, not_found_app)
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=a)
        c_reader, c_writer = await asyncio.open_connection(sock=b)
        c_writer.write(request)
        c_writer.write_eof()
        serving = asyncio.create_task(front(reader, writer))
        answer = bytearray()
        async with asyncio.timeout(10):
            while chunk := await c_reader.read(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    # One answer head is all we judge: after a 101 come Noise records, and
                    # hypercorn keeps a connection open for its keep-alive time.
                    break
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
        c_writer.close()
        return bytes(answer)

    return asyncio.run(run())


@pytest.mark.parametrize("request_bytes", [
    b"PRI * HTTP/2.0\n\n",  # found by test_front_door_any_bytes
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the full HTTP/2 prior-knowledge preface
    b"GET /key HTTP/2.0\r\nHost: x\r\n\r\n",
])
def test_http2_prior_knowledge_is_refused_in_http1(request_bytes: bytes) -> None:
    # The front door speaks HTTP/1.x only; before, hypercorn answered these with HTTP/2 frames.
    answer = _front_door_answer(request_bytes)
    assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer[:80]
    assert b"use HTTP/1.1" in answer


header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
    st.binary(max_size=120).map(lambda b: base64.b64encode(b).decode()),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["POST", "GET", "PUT", "PRI", "post"]),
    path=st.sampled_from(["/ts2021", "/ts2021?x=1", "/derp", "/key", "/"]),
    upgrade=st.one_of(st.none(), st.just("tailscale-control-protocol"), header_values),
    handshake_value=st.one_of(st.none(), header_values, st.builds(lambda: base64.b64encode(
        Initiator(X25519PrivateKey.generate(), handshake.public_bytes(SERVER)).initiation(),
    ).decode())),
    extra=st.lists(st.tuples(st.from_regex(r"\A[A-Za-z-]{1,20}\Z"), header_values),
                   max_size=4),
)
def test_ts2021_upgrade_request(method: str, path: str, upgrade: str | None,
                                handshake_value: str | None,
                                extra: list[tuple[str, str]],
                                caplog: pytest.LogCaptureFixture) -> None:
    lines = [f"{method} {path} HTTP/1.1", "Host: x"]
    if upgrade is not None:
        lines += [f"Upgrade: {upgrade}", "Connection: upgrade"]
    if handshake_value is not None:
        lines.append(f"X-Tailscale-Handshake: {handshake_value}")
    lines += [f"{k}: {v}" for k, v in extra]
    caplog.set_level(logging.WARNING)
    answer = _front_door_answer(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert answer == b"" or answer[:9] == b"HTTP/1.1 ", answer[:80]
    status = int(answer[9:12]) if answer else 0
    assert status != 101 or handshake_value is not None
    assert status < 500, answer[:200]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000))
def test_front_door_any_bytes(data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    answer = _front_door_answer(data)
    assert answer == b"" or answer[:9] == b"HTTP/1.1 ", answer[:80]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


# -- HTTP/2 frame guard -----------------------------------------------------------------------


@given(st.binary(max_size=4000), cut_lists)
def test_h2_frame_guard_any_bytes(data: bytes, cuts: list[int]) -> None:
    guard = FrameGuard(16384)
    try:
        for part in chunks(PREFACE + data, cuts):
            guard.feed(part)
    except FrameSizeError:
        pass


# -- DERP -------------------------------------------------------------------------------------


@given(st.binary(max_size=4000), cut_lists)
def test_derp_decoder_any_bytes(data: bytes, cuts: list[int]) -> None:
    dec = frames.FrameDecoder()
    try:
        for part in chunks(data, cuts):
            for f in dec.feed(part):
                assert len(f.payload) <= dec.max_frame
    except ProtocolError:
        pass


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=255),
                          st.binary(max_size=2000)), max_size=6), cut_lists)
def test_derp_frames_round_trip(items: list[tuple[int, bytes]], cuts: list[int]) -> None:
    dec = frames.FrameDecoder()
    wire = b"".join(frames.encode(t, p) for t, p in items)
    got = [(f.type, f.payload) for part in chunks(wire, cuts) for f in dec.feed(part)]
    assert got == items


PAYLOAD_PARSERS = [
    frames.parse_server_key, frames.parse_send_packet, frames.parse_forward_packet,
    frames.parse_note_preferred, frames.parse_ping, frames.parse_peer_gone,
    frames.parse_peer_present, frames.parse_restarting,
    lambda p: frames.parse_key(p, "key"),
]


@given(st.sampled_from(PAYLOAD_PARSERS), st.binary(max_size=300))
def test_derp_payload_parsers_any_bytes(parse: Any, payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                               max_size=4),
    max_leaves=20,
)


@given(st.one_of(st.binary(max_size=500),
                 json_values.map(lambda v: __import__("json").dumps(v).encode()),
                 st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n)))
def test_derp_client_info_any_json(data: bytes) -> None:
    try:
        info = derp_handshake.ClientInfo.from_json(data)
    except ProtocolError:
        return
    assert isinstance(info.version, int) and isinstance(info.mesh_key, str)


DERP_SERVER = PrivateKey.generate()


@given(st.binary(max_size=600))
def test_derp_client_info_frame_any_bytes(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        derp_handshake.open_client_info(DERP_SERVER, payload)


# -- STUN -------------------------------------------------------------------------------------


@given(st.binary(max_size=600))
def test_stun_any_bytes(data: bytes) -> None:
    req = codec.parse_binding_request(data)
    assert req is None or len(req.txid) == 12
    codec.parse_binding_response(data)


@given(st.binary(min_size=12, max_size=12), st.binary(max_size=300))
def test_stun_request_round_trip(txid: bytes, software: bytes) -> None:
    req = codec.parse_binding_request(codec.binding_request(txid, software))
    assert req == codec.BindingRequest(txid, software, True)


@given(st.binary(min_size=12, max_size=12), st.ip_addresses(),
       st.integers(min_value=0, max_value=65535))
def test_stun_response_round_trip(txid: bytes, ip: Any, port: int) -> None:
    resp = codec.parse_binding_response(codec.binding_response(txid, str(ip), port))
    assert resp is not None and (resp.txid, resp.port) == (txid, port)
    want = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip
    assert resp.ip == str(want)


@given(st.binary(min_size=20, max_size=200), st.integers(min_value=0, max_value=199),
       st.integers(min_value=1, max_value=255))
def test_stun_damaged_request_is_dropped_or_still_a_request(
        tail: bytes, pos: int, xor: int) -> None:
    good = bytearray(codec.binding_request(tail[:12], tail[12:]))
    pos %= len(good)
    good[pos] ^= xor
    req = codec.parse_binding_request(bytes(good))
    # The FINGERPRINT covers every byte before it, so damage is dropped; unless it hit the
    # FINGERPRINT attribute's own type, which makes it an unknown attribute (ignored, RFC 5389
    # §15): then the request stands, but never as fingerprinted.
    assert req is None or not req.fingerprint
