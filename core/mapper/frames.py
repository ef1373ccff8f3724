"""Map-stream framing: ``u32 LITTLE-endian length | zstd frame of JSON`` (protocol.md §5.2).

A Message is built once per change and shared by every stream that receives it; the zstd frame is
made on first use and cached, so a fan-out to N streams compresses once.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import orjson
import zstandard

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if c is None:
        # Level 1: map deltas are small and latency matters more than ratio.
        c = zstandard.ZstdCompressor(level=1)
        _local.zstd = c
    return c


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


class Message:
    __slots__ = ("_raw_frame", "_zstd_frame", "body")

    def __init__(self, body: bytes) -> None:
        self.body = body  # JSON
        self._zstd_frame: bytes | None = None
        self._raw_frame: bytes | None = None

    @classmethod
    def of(cls, obj: Any) -> Message:
        return cls(dumps(obj))

    def frame(self, compress: bool) -> bytes:
        if compress:
            if self._zstd_frame is None:
                data = _compressor().compress(self.body)
                self._zstd_frame = struct.pack("<I", len(data)) + data
            return self._zstd_frame
        if self._raw_frame is None:
            self._raw_frame = struct.pack("<I", len(self.body)) + self.body
        return self._raw_frame


KEEPALIVE = Message.of({"KeepAlive": True})
