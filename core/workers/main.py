"""``python -m meshscale.workers.main CTRL_FD ADOPT_FD LEVEL FORMAT``: one connection worker.

Started by the owner (workers/link.py) with the two socket descriptors inherited; everything
else, the Noise key included, arrives over the control socket. It exits when told (STOP) or
when the owner's end closes, so an owner that dies leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

from meshscale.logs import JsonFormatter
from meshscale.workers.worker import Worker


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python -m meshscale.workers.main CTRL_FD ADOPT_FD LEVEL FORMAT",
              file=sys.stderr)
        return 2
    # Ctrl-C reaches the whole process group; the owner stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The owner's log level and format (log.format), so the workers' lines read like its own.
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if argv[3] == "json" else logging.Formatter(
        "%(asctime)s worker %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=argv[2] if argv[2].isalpha() else "INFO", handlers=[handler])
    ctrl = socket.socket(fileno=int(argv[0]))
    adopt = socket.socket(fileno=int(argv[1]))

    async def run() -> None:
        await Worker(ctrl, adopt).run()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
