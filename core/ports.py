"""``free_port()``: a loopback port nothing listens on right now, for tests and benchmarks.

The one home of this helper. It lives here, not in meshscale.testing (the pytest plugin, which
imports pytest), because the benchmarks and their throw-away servers run without pytest.
"""

from __future__ import annotations

import socket


def free_port(*, udp: bool = False) -> int:
    """A port on 127.0.0.1 the kernel just handed out (TCP, or UDP with ``udp=True``).

    Free when returned, not reserved: bind it soon (another process could take it first).
    """
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
