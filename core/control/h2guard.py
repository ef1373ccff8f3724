"""Sans-IO guards for the HTTP/2 server inside a Noise session.

The ``h2`` library parses frames correctly but trusts its caller with resources: it buffers a
whole frame before it checks the frame's declared length against SETTINGS_MAX_FRAME_SIZE (so a
header declaring 16 MiB of DATA makes it wait for, and hold, 16 MiB), and it lets a client open
and reset streams without limit. These guards sit in front of and beside it.
"""

from __future__ import annotations

from meshscale.errors import ProtocolError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
FRAME_DATA = 0x0
FRAME_RST_STREAM = 0x3
INITIAL_WINDOW = 65535  # RFC 9113 §6.9.2: every connection starts with this much credit


class FrameSizeError(ProtocolError):
    """A frame header declared more than the maximum frame size we announced."""


class FrameGuard:
    """Watches the client's HTTP/2 byte stream for frame headers, before ``h2`` buffers them.

    Feed it exactly what is given to ``h2``; it raises FrameSizeError as soon as the 9-byte
    header of an oversized frame is complete, whatever follows.
    """

    __slots__ = ("_header", "_max", "_preface", "_skip", "data_bytes", "resets")

    def __init__(self, max_frame_size: int) -> None:
        self._max = max_frame_size
        self._preface = len(PREFACE)  # bytes of the client preface still to pass
        self._skip = 0  # payload bytes of the current frame still to pass
        self._header = bytearray()
        # Counted from frame headers, so frames ``h2`` drops silently (DATA on a stream it has
        # reset still uses connection credit) are counted too.
        self.data_bytes = 0  # flow-controlled bytes of every DATA frame
        self.resets = 0  # RST_STREAM frames

    @property
    def preface_done(self) -> bool:
        return self._preface == 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._preface:
                n = min(self._preface, len(view))
                self._preface -= n
                view = view[n:]
                continue
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            need = FRAME_HEADER - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) < FRAME_HEADER:
                return
            length = int.from_bytes(self._header[:3], "big")
            kind = self._header[3]
            self._header.clear()
            if length > self._max:
                raise FrameSizeError(
                    f"frame of type {kind} declares {length} bytes, over the "
                    f"{self._max}-byte maximum frame size")
            if kind == FRAME_DATA:
                self.data_bytes += length
            elif kind == FRAME_RST_STREAM:
                self.resets += 1
            self._skip = length


class WindowCounter:
    """Counts events in fixed windows of ``window`` seconds; ``add`` says if over ``limit``."""

    __slots__ = ("_count", "_limit", "_start", "_window")

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._start = -1e18
        self._count = 0

    def add(self, now: float, n: int = 1) -> bool:
        if now - self._start >= self._window:
            self._start, self._count = now, 0
        self._count += n
        return self._count > self._limit


class InboundBudget:
    """Connection-level flow control that bounds the request-body bytes a connection holds.

    ``h2`` would have us re-open the window for every byte received, which lets a client keep
    64 streams of unfinished bodies in memory. Here the window we grant plus the bytes held never
    exceed ``budget`` (or the 65,535 bytes every connection starts with, if that is larger): a
    client that fills it stalls until its requests complete or time out.
    """

    __slots__ = ("budget", "held", "window")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0  # body bytes buffered in unfinished requests
        self.window = INITIAL_WINDOW  # credit the client still has

    def received(self, flow_controlled: int) -> None:
        """DATA frames of ``flow_controlled`` bytes (padding included) arrived."""
        self.window -= flow_controlled

    def kept(self, n: int) -> None:
        """``n`` body bytes are now held in an unfinished request."""
        self.held += n

    def released(self, n: int) -> None:
        self.held -= n

    def grant(self, batch: int = 16384) -> int:
        """How much credit to give back now (0: none). Granted in batches, not per frame."""
        room = self.budget - self.held - self.window
        if room < batch and not (room > 0 and self.window <= 0):
            return 0
        self.window += room
        return room
