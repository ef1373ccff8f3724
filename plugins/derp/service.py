"""One embedded DERP server: its key, relay, TLS listener and region, for one running meshscale.

Where it is reached:

* ``/derp`` on the main listener (core hands over the upgraded socket), always;
* its own TLS port (``derp.server.tls_listen_addr``) with a pinned self-signed certificate, when
  the main listener is plain HTTP, because the Go client speaks DERP over TLS only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacl.public import PrivateKey

from meshscale import files
from meshscale.configvalues import split_host_port
from meshscale.contributions import UpgradeRequest
from meshscale.plugins.derp import http, listener, region, tls
from meshscale.plugins.derp.connection import ConnectionSettings, serve_connection
from meshscale.plugins.derp.handshake import ClientInfo
from meshscale.plugins.derp.keys import load_or_create_private_key, parse_mesh_key
from meshscale.plugins.derp.relay import Relay
from meshscale.plugins.derp.streams import ByteStream, RawStream, WebSocketStream

if TYPE_CHECKING:
    from collections.abc import Sequence

    from meshscale.config import Config
    from meshscale.context import ServerContext

log = logging.getLogger(__name__)

#: Where a port picked for ``tls_listen_addr: host:0`` is remembered, so restarts keep it.
TLS_PORT_FILE = "derp_tls_port"


class DerpService:
    def __init__(self, config: Config, settings: ConnectionSettings | None = None) -> None:
        self.config = config
        self.settings = settings or ConnectionSettings()
        self.server: ServerContext | None = None
        self.private_key: PrivateKey | None = None
        self.relay: Relay | None = None
        self.cert: tls.CertFiles | None = None
        self.tls_port: int | None = None
        self._tls_server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    @property
    def main_listener_is_tls(self) -> bool:
        return self.config.tls_enabled

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, server: ServerContext) -> None:
        self.server = server
        config = self.config
        srv = config.derp.server
        if not srv.enabled:
            return
        self.private_key = load_or_create_private_key(config.resolve(srv.private_key_path))
        self.relay = Relay(
            bytes(self.private_key.public_key), mesh_key=parse_mesh_key(srv.mesh_key)
        )
        if not self.main_listener_is_tls and srv.tls_listen_addr:
            await self._start_tls(server.data_dir)
        server.refresh_derp_map()

    async def stop(self) -> None:
        if self._tls_server is not None:
            self._tls_server.close()
        if self.relay is not None:
            self.relay.close_all()
        # Aborting the sockets ends every connection task, also those still logging in;
        # cancelling them instead would make asyncio's stream callback log the cancellation.
        for writer in list(self._conns.values()):
            writer.transport.abort()
        if self._conns:
            _done, pending = await asyncio.wait(list(self._conns), timeout=5)
            for task in pending:
                task.cancel()
        if self._tls_server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tls_server.wait_closed(), 5)
            self._tls_server = None
        self.server = None

    async def _start_tls(self, data_dir: Path) -> None:
        config = self.config
        self.cert = await asyncio.to_thread(
            tls.ensure_self_signed, data_dir, region.advertised_hosts(config)
        )
        ctx = tls.server_context(self.cert)
        host, port = split_host_port(config.derp.server.tls_listen_addr)
        port_file = data_dir / TLS_PORT_FILE
        remembered = _read_port(port_file) if port == 0 else None
        server: asyncio.Server | None = None
        if remembered:
            try:
                server = await asyncio.start_server(self._accept, host, remembered, ssl=ctx)
            except OSError:
                log.info("derp: remembered TLS port %d is taken; picking another", remembered)
        if server is None:
            server = await asyncio.start_server(self._accept, host, port, ssl=ctx)
        self._tls_server = server
        self.tls_port = int(server.sockets[0].getsockname()[1])
        if port == 0 and self.tls_port != remembered:
            files.write_private(port_file, f"{self.tls_port}\n".encode("ascii"))
        log.info("derp: TLS listener on %s:%d (%s)", host, self.tls_port, self.cert.cert_name)

    # -- admission ----------------------------------------------------------------------------

    def admit(self, key: bytes, info: ClientInfo, remote: tuple[str, int]) -> bool:
        if not self.config.derp.server.verify_clients:
            return True
        if self.server is None:
            return False
        try:
            return bool(self.server.node_key_known(key))
        except Exception:
            log.exception("derp: node_key_known failed; refusing the client")
            return False

    def node_key_known(self, key: bytes) -> bool:
        """For ``POST /verify``: asks core whether the node exists, whatever verify_clients says."""
        return self.server is not None and bool(self.server.node_key_known(key))

    # -- connections --------------------------------------------------------------------------

    async def handle_upgrade(self, req: UpgradeRequest) -> None:
        """The main listener's ``/derp`` upgrade (core has parsed the head)."""
        writer = req.writer
        kind = http.upgrade_kind(req.headers)
        if kind is None or self.relay is None:
            reply = http.upgrade_required() if kind is None else http.Reply(503)
            try:
                writer.write(http.render(reply))
                await writer.drain()
            except (ConnectionError, OSError):
                pass
            writer.close()
            return
        await self._serve(kind, req.headers, req.reader, writer, peer=req.peer, prefix=b"")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns[task] = writer
        try:
            await listener.handle_client(reader, writer, self._serve)
        finally:
            if task is not None:
                self._conns.pop(task, None)

    async def _serve(
        self,
        kind: str,
        headers: Sequence[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: tuple[str, int],
        prefix: bytes,
    ) -> None:
        relay, key = self.relay, self.private_key
        if relay is None or key is None:
            writer.close()
            return
        reply = http.switching_protocols(kind, headers, relay.server_public)
        if reply is not None:
            writer.write(reply)
        stream: ByteStream = (
            WebSocketStream(reader, writer, prefix)
            if kind == "websocket"
            else RawStream(reader, writer, prefix)
        )
        await serve_connection(stream, relay, key, self.admit, peer, settings=self.settings)

    # -- the DERP map -------------------------------------------------------------------------

    def region(self, stun_port: int) -> dict[str, Any] | None:
        """The embedded region for ``meshscale_derp_regions``; None until started."""
        config = self.config
        srv = config.derp.server
        if not srv.enabled or not srv.automatically_add_embedded_derp_region:
            return None
        if self.relay is None:
            return None
        if self.tls_port is not None and self.cert is not None:
            return region.embedded_region(
                config, derp_port=self.tls_port, cert_name=self.cert.cert_name,
                stun_port=stun_port,
            )
        # The main listener: HTTPS with a real certificate, or plain HTTP (then clients need
        # TS_DEBUG_USE_DERP_HTTP=1; see docs/derp.md).
        return region.embedded_region(
            config, derp_port=region.server_url_port(config), cert_name=None,
            stun_port=stun_port,
        )


def _read_port(path: Path) -> int | None:
    try:
        value = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    return value if 0 < value < 65536 else None
