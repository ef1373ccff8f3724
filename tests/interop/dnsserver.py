"""A tiny DNS server for the interop tests: answers every A query with one fixed address and
remembers the names it was asked, so a test can see which resolver a client's query reached
(split DNS, global nameservers). UDP on 127.0.0.1 only, inside the test's namespace."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def question(packet: bytes) -> tuple[str, int, int]:
    """(name, qtype, end offset of the question) of a query's first question."""
    labels, pos = [], 12
    while packet[pos]:
        n = packet[pos]
        labels.append(packet[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    qtype = struct.unpack_from("!H", packet, pos + 1)[0]
    return ".".join(labels) + ".", qtype, pos + 5


def answer(packet: bytes, address: str) -> bytes:
    """The reply to ``packet``: ``address`` for an A query, no records otherwise."""
    _, qtype, end = question(packet)
    count = 1 if qtype == 1 else 0
    head = packet[:2] + struct.pack("!HHHHH", 0x8180, 1, count, 0, 0)
    body = packet[12:end]
    if count:
        body += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + ipaddress.IPv4Address(address).packed
    return head + body


class DnsServer:
    def __init__(self, address: str) -> None:
        self.address = address
        self.asked: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                packet, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            try:
                name, _, _ = question(packet)
                reply = answer(packet, self.address)
            except (IndexError, struct.error):
                continue
            self.asked.append(name)
            self.sock.sendto(reply, peer)


@contextmanager
def dns_server(address: str) -> Iterator[DnsServer]:
    srv = DnsServer(address)
    srv._thread.start()
    try:
        yield srv
    finally:
        srv._stop.set()
        srv._thread.join(2)
        srv.sock.close()
