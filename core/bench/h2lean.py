"""The load generator's receive side of HTTP/2 for map streams (sans-IO).

A streaming member receives thousands of small DATA frames per second; h2 builds objects, runs
two state machines and formats a log line per frame, which made the generator, not the server,
the bottleneck of ``meshscale bench``. ``LeanFrames`` splits the decrypted byte stream into
frames and routes them:

- DATA frames of a *claimed* stream (the member's map stream, once its response HEADERS went
  by) are handed to the claim's sink as bytes (padding removed), and their flow control is
  ours;
- every other frame (SETTINGS, PING, GOAWAY, WINDOW_UPDATE, RST_STREAM, all HEADERS and
  CONTINUATION, DATA of other streams, and the DATA frame that ends a claimed stream) is
  handed, unchanged and in order, to ``on_frames`` for h2, which answers what must be
  answered (SETTINGS and PING ACKs), keeps HPACK's state and the streams' states.

Flow control. h2 never sees the claimed streams' DATA, so it neither counts nor replenishes
it. For a claimed stream we keep the window the server sees (the initial window we announced
plus our updates, minus what it sent), refuse a frame larger than that (as h2 would), and send
a WINDOW_UPDATE once the data consumed since the last one passes half of the initial window.
The connection window is shared: h2 granted it and replenishes the data it saw; we replenish
the data we took, in steps of the same half window. The server's connection window is then
h2's own view minus what we have not yet replenished, so the server can never send h2 more
than h2 allows, and it always has h2's window less at most one step.
"""

from __future__ import annotations

from collections.abc import Callable

from meshscale.errors import ProtocolError

HEADER = 9
DATA, HEADERS, RST_STREAM, PUSH_PROMISE, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x5, 0x8
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8


def window_update(stream_id: int, increment: int) -> bytes:
    return (b"\x00\x00\x04\x08\x00" + stream_id.to_bytes(4, "big")
            + increment.to_bytes(4, "big"))


class _Claim:
    __slots__ = ("open", "sink", "unacked", "window")

    def __init__(self, window: int, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        self.open = False  # response HEADERS seen: DATA may follow
        self.window = window  # what the server may still send on this stream
        self.unacked = 0  # consumed since our last WINDOW_UPDATE for it


class LeanFrames:
    """Frames in, routed out; ``data_to_send()`` holds the WINDOW_UPDATEs we owe."""

    def __init__(self, stream_window: int, on_frames: Callable[[bytes], None],
                 max_frame_size: int = 16384) -> None:
        self.stream_window = stream_window
        self.step = stream_window // 2
        self.on_frames = on_frames
        self.max_frame_size = max_frame_size
        self.claims: dict[int, _Claim] = {}
        self.connection_unacked = 0
        self._buf = bytearray()
        self._out = bytearray()
        self._in_header_block = False

    def claim(self, stream_id: int, sink: Callable[[bytes], None]) -> None:
        """This stream's DATA payloads go to ``sink`` from its response HEADERS on (the
        request was sent)."""
        self.claims[stream_id] = _Claim(self.stream_window, sink)

    def release(self, stream_id: int) -> None:
        """Its DATA goes to h2 again (which has seen none of it: its window is larger than
        the server's, so nothing the server may send trips it)."""
        self.claims.pop(stream_id, None)

    @property
    def owed(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def feed(self, data: bytes) -> None:
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        size = len(data)
        pos = 0
        passed = 0  # start of the frames not yet handed to h2
        claims = self.claims
        while size - pos >= HEADER:
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            if length > self.max_frame_size:
                raise ProtocolError(f"HTTP/2 frame of {length} bytes exceeds "
                                    f"{self.max_frame_size} (FRAME_SIZE_ERROR)")
            end = pos + HEADER + length
            if end > size:
                break
            ftype = data[pos + 3]
            flags = data[pos + 4]
            sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            claim = claims.get(sid) if sid else None
            if self._in_header_block or ftype in (HEADERS, PUSH_PROMISE):
                # A header block is HPACK state: all of it goes to h2, and so does every frame
                # until it ends (h2 then rejects anything but its CONTINUATION frames).
                self._in_header_block = not flags & END_HEADERS
                if claim is not None and ftype == HEADERS:
                    self._headers(sid, claim, flags)
            elif claim is not None:
                if ftype == DATA and claim.open and not flags & END_STREAM:
                    if passed < pos:
                        self.on_frames(data[passed:pos])
                    self._data(sid, claim, data, pos + HEADER, end, flags, length)
                    passed = pos = end
                    continue
                if ftype in (DATA, RST_STREAM):
                    # The stream's last DATA, its reset, or DATA before its HEADERS (a
                    # protocol error h2 reports): h2 sees it and closes the stream.
                    self.release(sid)
            pos = end
        if passed < pos:
            self.on_frames(data[passed:pos])
        if pos < size:
            self._buf += data[pos:]

    def _headers(self, sid: int, claim: _Claim, flags: int) -> None:
        if flags & END_STREAM or claim.open:
            # A response without a body, or trailers: the stream ends there.
            self.release(sid)
        else:
            claim.open = True

    def _data(self, sid: int, claim: _Claim, data: bytes, start: int, end: int, flags: int,
              length: int) -> None:
        # Padding counts against flow control: the whole frame payload does.
        if length > claim.window:
            raise ProtocolError(f"DATA of {length} bytes on stream {sid} exceeds its window "
                                f"of {claim.window} (FLOW_CONTROL_ERROR)")
        claim.window -= length
        if flags & PADDED:
            if length < 1 or data[start] >= length:
                raise ProtocolError(f"DATA on stream {sid}: padding longer than the frame "
                                    "(PROTOCOL_ERROR)")
            end -= data[start]
            start += 1
        claim.unacked += length
        if claim.unacked >= self.step:
            self._out += window_update(sid, claim.unacked)
            claim.window += claim.unacked
            claim.unacked = 0
        self.connection_unacked += length
        if self.connection_unacked >= self.step:
            self._out += window_update(0, self.connection_unacked)
            self.connection_unacked = 0
        if end > start:
            claim.sink(data[start:end])
