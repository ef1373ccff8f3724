"""meshscale plugin: acme — certificates for the main listener from an ACME server.

Turned on by headscale's ``tls_letsencrypt_hostname`` (with ``acme_url``, ``acme_email``,
``tls_letsencrypt_cache_dir``, ``tls_letsencrypt_challenge_type``, ``tls_letsencrypt_listen``);
needs ``pip install 'meshscale[acme]'`` (certbot's ``acme`` library). At start-up a cached
certificate that is still good is served at once; otherwise one is ordered in the background
(clients see a temporary self-signed certificate meanwhile). A background task renews well before
expiry, without a restart; when an order fails the old certificate stays in force, the log says
why, the ``acme_*`` stats say so, and it retries with backoff. See docs/tls.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from meshscale import hookimpl
from meshscale.configvalues import Duration, parse_duration
from meshscale.contributions import ConfigSection
from meshscale.errors import ConfigError

if TYPE_CHECKING:
    from meshscale.context import ServerContext
    from meshscale.plugins.acme.issuer import Issuer
    from meshscale.tls import Certificate, MainTls

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class AcmeSettings:
    """meshscale's own knobs (section ``acme:``); the ACME keys themselves are headscale's."""

    ca_file: str = ""  # a private ACME server's CA (PEM); empty: the system's trust store
    renew_before: Duration = Duration(30 * 86400)  # or a third of the lifetime, if less
    retry_min: Duration = Duration(10)
    retry_max: Duration = Duration(3600)


def parse_settings(raw: Mapping[str, Any], path: str) -> AcmeSettings:
    unknown = set(raw) - {"ca_file", "renew_before", "retry_min", "retry_max"}
    if unknown:
        raise ConfigError(f"{path}.{sorted(unknown)[0]}", "unknown key")
    ca_file = raw.get("ca_file", "")
    if not isinstance(ca_file, str):
        raise ConfigError(f"{path}.ca_file", "expected a file path")
    durations = {k: parse_duration(raw[k], f"{path}.{k}")
                 for k in ("renew_before", "retry_min", "retry_max") if k in raw}
    settings = AcmeSettings(ca_file, **durations)
    if settings.retry_min <= 0 or settings.retry_max < settings.retry_min:
        raise ConfigError(f"{path}.retry_min", "must be more than 0 and at most retry_max")
    return settings


async def in_daemon_thread(work: Callable[[], T]) -> T:
    """``work()`` in a daemon thread: an order blocked on a slow ACME server (requests waits up
    to 45 s per call) never holds up the process's exit, as the default executor would."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return  # cancelled meanwhile (shutdown)
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(cast(T, result))

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="acme-order", daemon=True).start()
    return await done


def renewal_due(cert: Certificate, renew_before: float) -> datetime.datetime:
    """When to renew: ``renew_before`` ahead of expiry, or a third of the lifetime if that is
    less (a 90-day certificate at 60 days, a 6-day one at 4)."""
    lifetime = cert.not_after - cert.not_before
    ahead = min(datetime.timedelta(seconds=renew_before), lifetime / 3)
    return cert.not_after - ahead


class AcmePlugin:
    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self.issued_total = 0
        self.failures_total = 0
        self.failing = False
        self.next_attempt = 0.0  # unix time
        self._task: asyncio.Task[None] | None = None

    @hookimpl
    def meshscale_config_sections(self) -> Sequence[ConfigSection]:
        return [ConfigSection("acme", parse_settings)]

    def settings(self) -> AcmeSettings:
        found = self.server.config.section("acme")
        return found if isinstance(found, AcmeSettings) else AcmeSettings()

    @hookimpl
    async def meshscale_startup(self) -> None:
        cfg = self.server.config
        tls = self.server.tls()
        if not cfg.tls_letsencrypt_hostname or tls is None:
            return
        from meshscale.plugins.acme.issuer import Issuer  # noqa: PLC0415 - the acme extra

        settings = self.settings()
        ca_file = cfg.resolve(settings.ca_file) if settings.ca_file else None
        if ca_file is not None and not os.access(ca_file, os.R_OK):
            raise ConfigError("acme.ca_file", f"cannot read {ca_file}")
        url_host = urlsplit(cfg.server_url).hostname or ""
        if url_host.lower() != cfg.tls_letsencrypt_hostname.lower():
            log.warning("acme: the certificate will name %s but server_url names %s: clients "
                        "will refuse it; make them the same", cfg.tls_letsencrypt_hostname,
                        url_host)
        cache = cfg.resolve(cfg.tls_letsencrypt_cache_dir)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            os.chmod(cache, 0o700)
        except OSError as exc:
            raise ConfigError("tls_letsencrypt_cache_dir",
                              f"cannot use {cache}: {exc.strerror or exc}") from None
        issuer = Issuer(directory=cfg.acme_url, email=cfg.acme_email,
                        hostname=cfg.tls_letsencrypt_hostname,
                        challenge=cfg.tls_letsencrypt_challenge_type, cache=cache,
                        ca_file=str(ca_file or ""), tls=tls)
        cached = self._load_cached(issuer)
        if cached is not None:
            tls.install(cached)
            log.info("acme: serving the cached certificate for %s (valid until %s UTC)",
                     issuer.hostname, f"{cached.not_after:%Y-%m-%d %H:%M}")
        else:
            log.info("acme: no certificate for %s yet; ordering one from %s (a temporary "
                     "self-signed certificate is served meanwhile)", issuer.hostname,
                     cfg.acme_url)
        self._task = self.server.spawn(self._run(issuer, tls, settings), "acme-renewal")

    @hookimpl
    async def meshscale_shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    @hookimpl
    def meshscale_stats(self) -> Mapping[str, float]:
        return {
            "acme_certificates_issued_total": float(self.issued_total),
            "acme_failures_total": float(self.failures_total),
            "acme_failing": 1.0 if self.failing else 0.0,
            "acme_next_attempt_timestamp_seconds": self.next_attempt,
        }

    # -- the work --------------------------------------------------------------------------------

    def paths(self, issuer: Issuer) -> tuple[Path, Path]:
        name = issuer.hostname.lower()
        return issuer.cache / f"{name}.crt", issuer.cache / f"{name}.key"

    def _load_cached(self, issuer: Issuer) -> Certificate | None:
        from meshscale.tls import TlsError, certs  # noqa: PLC0415

        crt, key = self.paths(issuer)
        if not crt.exists():
            return None
        try:
            cert = certs.from_files(crt, key, cert_setting="acme cache", key_setting="acme cache")
        except TlsError as exc:
            log.warning("acme: the cached certificate is not usable, ordering a new one: %s", exc)
            return None
        if issuer.hostname.lower() not in (n.lower() for n in cert.names):
            return None
        return cert

    async def _run(self, issuer: Issuer, tls: MainTls, settings: AcmeSettings) -> None:
        from meshscale.plugins.acme.issuer import AcmeFailure, write_private  # noqa: PLC0415
        from meshscale.tls import TlsError, certs  # noqa: PLC0415

        delay = float(settings.retry_min)
        while True:
            ours = tls.current
            due = renewal_due(ours, settings.renew_before) if ours is not None else None
            now = datetime.datetime.now(datetime.UTC)
            if due is not None and due > now:
                self.next_attempt = due.timestamp()
                # Sleep in bounded steps: a suspended machine's clock jumps.
                await asyncio.sleep(min((due - now).total_seconds(), 3600.0))
                continue
            self.next_attempt = time.time()
            try:
                issued = await in_daemon_thread(issuer.obtain)
                cert = certs.from_pem(issued.chain_pem, issued.key_pem,
                                      cert_what="ACME certificate", key_what="its key")
            except (AcmeFailure, TlsError) as exc:
                self.failures_total += 1
                self.failing = True
                self.next_attempt = time.time() + delay
                keeping = ("keeping the current certificate (valid until "
                           f"{ours.not_after:%Y-%m-%d %H:%M} UTC)" if ours is not None
                           else "serving a temporary self-signed certificate")
                log.error("acme: could not get a certificate for %s from %s: %s; %s; "
                          "retrying in %.0fs", issuer.hostname, issuer.directory, exc, keeping,
                          delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, float(settings.retry_max))
                continue
            crt, key = self.paths(issuer)
            await asyncio.to_thread(write_private, key, issued.key_pem)
            await asyncio.to_thread(write_private, crt, issued.chain_pem)
            tls.install(cert)
            self.issued_total += 1
            self.failing = False
            delay = float(settings.retry_min)
            log.info("acme: new certificate for %s in force (sha256 %s, valid until %s UTC)",
                     issuer.hostname, cert.sha256[:16], f"{cert.not_after:%Y-%m-%d %H:%M}")
