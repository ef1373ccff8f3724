"""DERP frames, sans-IO: encoders and an incremental decoder.

Every frame is ``type (1 byte) | length (u32be, payload only) | payload`` (protocol.md §8.3).
Nothing here touches a socket: the asyncio adapter feeds received bytes to ``FrameDecoder`` and
writes the bytes these functions return.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from meshscale.errors import ProtocolError

PROTOCOL_VERSION = 2
KEY_LEN = 32
NONCE_LEN = 24
HEADER_LEN = 5
MAGIC = b"DERP\xf0\x9f\x94\x91"  # "DERP🔑"

#: The Go client refuses frames larger than this; we refuse them too (the connection closes).
MAX_FRAME_SIZE = 1 << 20
#: Largest packet a SendPacket/RecvPacket may carry (WireGuard or disco bytes).
MAX_PACKET_SIZE = 64 << 10
#: ClientInfo is read before the client is trusted; keep JSON parsing cheap (Go: 256 KiB).
MAX_CLIENT_INFO_SIZE = 256 << 10
#: Ping payloads up to this are accepted (first 8 bytes echoed); longer ones close the conn.
MAX_PING_SIZE = 1000

#: Disco messages start with "TS💬" and are at least magic + sender key + nonce long.
DISCO_MAGIC = b"TS\xf0\x9f\x92\xac"
DISCO_MIN_LEN = len(DISCO_MAGIC) + KEY_LEN + NONCE_LEN

_HEADER = struct.Struct(">BI")


class FrameType(IntEnum):
    SERVER_KEY = 0x01
    CLIENT_INFO = 0x02
    SERVER_INFO = 0x03
    SEND_PACKET = 0x04
    RECV_PACKET = 0x05
    KEEP_ALIVE = 0x06
    NOTE_PREFERRED = 0x07
    PEER_GONE = 0x08
    PEER_PRESENT = 0x09
    FORWARD_PACKET = 0x0A
    WATCH_CONNS = 0x10
    CLOSE_PEER = 0x11
    PING = 0x12
    PONG = 0x13
    HEALTH = 0x14
    RESTARTING = 0x15


class PeerGoneReason(IntEnum):
    DISCONNECTED = 0x00
    NOT_HERE = 0x01


class PeerPresentFlags(IntFlag):
    REGULAR = 1
    MESH_PEER = 2
    PROBER = 4
    NOT_IDEAL = 8


@dataclass(frozen=True, slots=True)
class Frame:
    type: int  # an int, not FrameType: unknown types are legal on the wire and are skipped
    payload: bytes


# -- encoding ---------------------------------------------------------------------------------


def header(ftype: int, length: int) -> bytes:
    return _HEADER.pack(ftype, length)


def encode(ftype: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(ftype, len(payload)) + payload


def server_key(public_key: bytes) -> bytes:
    _check_key(public_key)
    return encode(FrameType.SERVER_KEY, MAGIC + public_key)


def send_packet(dst: bytes, packet: bytes) -> bytes:
    _check_key(dst)
    _check_packet(packet)
    return _HEADER.pack(FrameType.SEND_PACKET, KEY_LEN + len(packet)) + dst + packet


def recv_packet(src: bytes, packet: bytes) -> bytes:
    _check_key(src)
    _check_packet(packet)
    return _HEADER.pack(FrameType.RECV_PACKET, KEY_LEN + len(packet)) + src + packet


def forward_packet(src: bytes, dst: bytes, packet: bytes) -> bytes:
    _check_key(src)
    _check_key(dst)
    _check_packet(packet)
    return _HEADER.pack(FrameType.FORWARD_PACKET, 2 * KEY_LEN + len(packet)) + src + dst + packet


KEEP_ALIVE = encode(FrameType.KEEP_ALIVE)
WATCH_CONNS = encode(FrameType.WATCH_CONNS)


def note_preferred(preferred: bool) -> bytes:
    return encode(FrameType.NOTE_PREFERRED, b"\x01" if preferred else b"\x00")


def peer_gone(key: bytes, reason: PeerGoneReason = PeerGoneReason.DISCONNECTED) -> bytes:
    _check_key(key)
    return encode(FrameType.PEER_GONE, key + bytes([reason]))


def peer_present(
    key: bytes,
    ip: str | None = None,
    port: int = 0,
    flags: PeerPresentFlags = PeerPresentFlags.REGULAR,
) -> bytes:
    """PeerPresent with the 16-byte address (IPv4 mapped into IPv6), port and flags."""
    _check_key(key)
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(0)
    if ip:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:  # not an IP (a unix socket peer): send the zero address
            port = 0
    if isinstance(addr, ipaddress.IPv4Address):
        addr = ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + addr.packed)
    return encode(
        FrameType.PEER_PRESENT, key + addr.packed + struct.pack(">HB", port, int(flags))
    )


def close_peer(key: bytes) -> bytes:
    _check_key(key)
    return encode(FrameType.CLOSE_PEER, key)


def ping(data: bytes) -> bytes:
    if len(data) != 8:
        raise ValueError("a ping carries exactly 8 bytes")
    return encode(FrameType.PING, data)


def pong(data: bytes) -> bytes:
    if len(data) != 8:
        raise ValueError("a pong carries exactly 8 bytes")
    return encode(FrameType.PONG, data)


def health(problem: str) -> bytes:
    """Tell the client what is wrong with its connection; an empty text clears it."""
    return encode(FrameType.HEALTH, problem.encode("utf-8"))


def restarting(reconnect_in_ms: int, try_for_ms: int) -> bytes:
    return encode(FrameType.RESTARTING, struct.pack(">II", reconnect_in_ms, try_for_ms))


def looks_like_disco(packet: bytes) -> bool:
    return len(packet) >= DISCO_MIN_LEN and packet.startswith(DISCO_MAGIC)


def _check_key(key: bytes) -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"a key is {KEY_LEN} bytes, got {len(key)}")


def _check_packet(packet: bytes) -> None:
    if len(packet) > MAX_PACKET_SIZE:
        raise ValueError(f"packet of {len(packet)} bytes exceeds {MAX_PACKET_SIZE}")


# -- decoding ---------------------------------------------------------------------------------


class FrameDecoder:
    """Turns a byte stream into frames. Feed it whatever the socket returned.

    A header announcing more than ``max_frame`` bytes raises ProtocolError at once, before the
    payload arrives, so a hostile length never makes us buffer a megabyte.
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end_of_data = len(buf)
        unpack = _HEADER.unpack_from
        # Walk with an offset and trim once: deleting per frame would copy the buffer each time.
        while end_of_data - pos >= HEADER_LEN:
            ftype, length = unpack(buf, pos)
            if length > self.max_frame:
                raise ProtocolError(
                    f"frame type 0x{ftype:02x} announces {length} bytes (limit {self.max_frame})"
                )
            end = pos + HEADER_LEN + length
            if end > end_of_data:
                break
            frames.append(Frame(ftype, bytes(buf[pos + HEADER_LEN : end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


# -- payload parsers (raise ProtocolError: the caller closes that connection) ------------------


def parse_server_key(payload: bytes) -> bytes:
    """The server's public key from a ServerKey payload (future bytes after it are ignored)."""
    if len(payload) < len(MAGIC) + KEY_LEN or not payload.startswith(MAGIC):
        raise ProtocolError("bad ServerKey frame: wrong magic or too short")
    return payload[len(MAGIC) : len(MAGIC) + KEY_LEN]


def parse_send_packet(payload: bytes) -> tuple[bytes, bytes]:
    """(destination key, packet) of a SendPacket; also RecvPacket's (source key, packet)."""
    if len(payload) < KEY_LEN:
        raise ProtocolError(f"short packet frame ({len(payload)} bytes)")
    if len(payload) - KEY_LEN > MAX_PACKET_SIZE:
        raise ProtocolError(f"packet of {len(payload) - KEY_LEN} bytes exceeds {MAX_PACKET_SIZE}")
    return payload[:KEY_LEN], payload[KEY_LEN:]


parse_recv_packet = parse_send_packet


def parse_forward_packet(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """(source key, destination key, packet) of a ForwardPacket."""
    if len(payload) < 2 * KEY_LEN:
        raise ProtocolError(f"short ForwardPacket frame ({len(payload)} bytes)")
    if len(payload) - 2 * KEY_LEN > MAX_PACKET_SIZE:
        raise ProtocolError("forwarded packet exceeds the packet size limit")
    return payload[:KEY_LEN], payload[KEY_LEN : 2 * KEY_LEN], payload[2 * KEY_LEN :]


def parse_note_preferred(payload: bytes) -> bool:
    if len(payload) != 1:
        raise ProtocolError("NotePreferred must carry exactly one byte")
    return payload[0] != 0


def parse_ping(payload: bytes) -> bytes:
    """The 8 bytes to echo; longer pings (up to 1000 bytes) are accepted for future use."""
    if len(payload) < 8:
        raise ProtocolError(f"short ping ({len(payload)} bytes)")
    if len(payload) > MAX_PING_SIZE:
        raise ProtocolError(f"ping of {len(payload)} bytes is too large")
    return payload[:8]


def parse_key(payload: bytes, what: str) -> bytes:
    if len(payload) != KEY_LEN:
        raise ProtocolError(f"{what} must carry exactly one {KEY_LEN}-byte key")
    return payload


@dataclass(frozen=True, slots=True)
class PeerGone:
    key: bytes
    reason: int


def parse_peer_gone(payload: bytes) -> PeerGone:
    if len(payload) < KEY_LEN:
        raise ProtocolError("short PeerGone frame")
    reason = payload[KEY_LEN] if len(payload) > KEY_LEN else PeerGoneReason.DISCONNECTED
    return PeerGone(payload[:KEY_LEN], reason)


@dataclass(frozen=True, slots=True)
class PeerPresent:
    key: bytes
    ip: str | None
    port: int
    flags: int


def parse_peer_present(payload: bytes) -> PeerPresent:
    if len(payload) < KEY_LEN:
        raise ProtocolError("short PeerPresent frame")
    key = payload[:KEY_LEN]
    if len(payload) < KEY_LEN + 18:  # older servers send only the key
        return PeerPresent(key, None, 0, int(PeerPresentFlags.REGULAR))
    addr = ipaddress.IPv6Address(payload[KEY_LEN : KEY_LEN + 16])
    ip = str(addr.ipv4_mapped or addr)
    (port,) = struct.unpack_from(">H", payload, KEY_LEN + 16)
    flags = payload[KEY_LEN + 18] if len(payload) > KEY_LEN + 18 else 0
    return PeerPresent(key, ip, port, flags)


def parse_restarting(payload: bytes) -> tuple[int, int]:
    if len(payload) < 8:
        raise ProtocolError("short Restarting frame")
    a, b = struct.unpack_from(">II", payload)
    return a, b
