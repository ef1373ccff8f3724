"""The main listener's TLS state: the certificate in force and the ACME challenges being answered.

The listener asks :meth:`MainTls.context_for` once per connection, so a new certificate applies
to the next handshake while established connections keep theirs (nobody is dropped). With an own
certificate (``tls_cert_path``) the files are read again on SIGHUP and when they change on disk;
a pair that fails its checks is refused, logged, counted, and the old one stays in force. With
ACME the acme plugin installs certificates through :meth:`install`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from pathlib import Path

from meshscale.config import Config
from meshscale.tls import certs
from meshscale.tls.clienthello import ClientHello

log = logging.getLogger(__name__)

ACME_TLS_ALPN = "acme-tls/1"
#: How often the certificate files are checked for changes (their size and mtime).
WATCH_INTERVAL = 5.0
#: An own certificate this close to expiry is logged as a warning when it is loaded.
EXPIRY_WARNING = datetime.timedelta(days=14)


class MainTls:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.current: certs.Certificate | None = None
        #: HTTP-01: request path -> key authorization, served on the plain-HTTP port.
        self.http01: dict[str, bytes] = {}
        #: TLS-ALPN-01: hostname -> context with the RFC 8737 certificate.
        self.alpn01: dict[str, ssl.SSLContext] = {}
        self.reloads = 0
        self.reload_failures = 0
        self._placeholder: ssl.SSLContext | None = None
        self._stamp: tuple[tuple[int, int], ...] = ()

    # -- own certificate files ------------------------------------------------------------------

    @property
    def files(self) -> tuple[Path, Path] | None:
        cfg = self.config
        if not cfg.tls_cert_path:
            return None
        return cfg.resolve(cfg.tls_cert_path), cfg.resolve(cfg.tls_key_path)

    def load_files(self) -> certs.Certificate:
        """Read and check the configured pair, and put it in force (TlsError: unchanged)."""
        files = self.files
        assert files is not None
        stamp = self._file_stamp()
        cert = certs.from_files(*files)
        self._stamp = stamp
        self.install(cert)
        left = cert.remaining()
        if left < EXPIRY_WARNING:
            log.warning("TLS certificate %s expires in %d days (%s UTC); renew it (meshscale "
                        "picks up the new files by itself)", cert.source, left.days,
                        f"{cert.not_after:%Y-%m-%d %H:%M}")
        return cert

    def reload(self) -> bool:
        """SIGHUP or a change on disk: the new pair, or the old one kept and the reason logged."""
        if self.files is None:
            return False
        try:
            cert = self.load_files()
        except certs.TlsError as exc:
            self.reload_failures += 1
            log.error("TLS certificate reload refused, still serving the old one: %s", exc)
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s (sha256 %s, valid until %s)",
                 cert.source, cert.sha256[:16], f"{cert.not_after:%Y-%m-%d %H:%M} UTC")
        return True

    def _file_stamp(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in self.files or ():
            try:
                st = path.stat()
            except OSError:
                out.append((-1, -1))
            else:
                out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    async def watch(self, interval: float | None = None) -> None:
        """Reload when either file changes (a renewal by certbot, a new pair copied in)."""
        interval = WATCH_INTERVAL if interval is None else interval
        while True:
            await asyncio.sleep(interval)
            stamp = self._file_stamp()
            if stamp != self._stamp:
                # Give a writer that replaces the two files one after the other time to finish.
                await asyncio.sleep(min(interval, 1.0))
                self._stamp = self._file_stamp()
                self.reload()

    # -- what the listener serves ----------------------------------------------------------------

    def install(self, cert: certs.Certificate) -> None:
        self.current = cert

    def context_for(self, hello: ClientHello | None) -> ssl.SSLContext:
        """The context for one new connection, from what its ClientHello asks for."""
        if hello is not None and hello.alpn == (ACME_TLS_ALPN,):
            challenge = self.alpn01.get((hello.server_name or "").lower())
            if challenge is not None:
                return challenge
        if self.current is not None:
            return self.current.context
        return self._placeholder_context()

    def _placeholder_context(self) -> ssl.SSLContext:
        """Until ACME has a certificate: a self-signed one clients refuse, rather than none."""
        if self._placeholder is None:
            name = self.config.tls_letsencrypt_hostname or "localhost"
            chain, key = certs.self_signed_pem(name, days=7)
            self._placeholder = certs.server_context(chain, key)
        return self._placeholder

    def stats(self) -> dict[str, float]:
        out = {"tls_reloads_total": float(self.reloads),
               "tls_reload_failures_total": float(self.reload_failures)}
        if self.current is not None:
            out["tls_certificate_expiry_timestamp_seconds"] = self.current.not_after.timestamp()
        return out

