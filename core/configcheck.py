"""The config's checks across keys: what the keys make together, each problem reported.

The loader (``configload.py``) checks each key's type and form as it converts it; what only
shows with the whole ``Config`` built (a database type's own keys, ACME against an own
certificate, limits against each other, workers against the body size) is here, so the schema
stays a list of keys and the loader stays generic.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from meshscale.config import Config, DatabaseConfig, LimitsConfig
from meshscale.configvalues import letsencrypt_listen_addr, parse_cli_address, parse_host_port
from meshscale.dns import model as dns_model
from meshscale.errors import ConfigError
from meshscale.workers.codec import MAX_REQUEST_BODY


def _check_postgres(db: DatabaseConfig) -> Iterator[ConfigError]:
    pg = db.postgres
    if db.type != "postgres":
        return
    for key in ("host", "name", "user"):
        if not getattr(pg, key):
            yield ConfigError(f"database.postgres.{key}", "must not be empty")
    if pg.port is not None and not 0 <= pg.port <= 65535:
        yield ConfigError("database.postgres.port", "must be a port number (or empty)")
    for key in ("max_open_conns", "max_idle_conns", "conn_max_idle_time_secs"):
        if getattr(pg, key) < 0:
            yield ConfigError(f"database.postgres.{key}", "cannot be negative")


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _check_acme(cfg: Config) -> Iterator[ConfigError]:
    if not cfg.tls_letsencrypt_hostname:
        return
    if cfg.tls_cert_path:
        yield ConfigError("tls_letsencrypt_hostname", "use either tls_cert_path/tls_key_path "
                          "(own certificate) or tls_letsencrypt_hostname (ACME), not both")
    if not _HOSTNAME.fullmatch(cfg.tls_letsencrypt_hostname):
        yield ConfigError("tls_letsencrypt_hostname",
                          f"not a DNS name: {cfg.tls_letsencrypt_hostname!r}")
    if cfg.tls_letsencrypt_challenge_type not in ("HTTP-01", "TLS-ALPN-01"):
        yield ConfigError("tls_letsencrypt_challenge_type", "must be HTTP-01 or TLS-ALPN-01")
    if not cfg.acme_url.startswith("https://"):
        yield ConfigError("acme_url", "an ACME directory is served over https://")
    try:
        parse_host_port(letsencrypt_listen_addr(cfg.tls_letsencrypt_listen),
                        "tls_letsencrypt_listen")
    except ConfigError as exc:
        yield exc


def check_config(cfg: Config) -> Iterator[ConfigError]:
    """Every problem the keys make together, not only the first."""
    if cfg.prefixes.allocation not in ("sequential", "random"):
        yield ConfigError("prefixes.allocation", "must be sequential or random")
    if cfg.node.approval not in ("auto", "manual"):
        yield ConfigError("node.approval", "must be auto or manual")
    if ipaddress.ip_network(cfg.prefixes.v4).version != 4:
        yield ConfigError("prefixes.v4", "must be an IPv4 prefix")
    if ipaddress.ip_network(cfg.prefixes.v6).version != 6:
        yield ConfigError("prefixes.v6", "must be an IPv6 prefix")
    if cfg.database.type not in ("sqlite", "sqlite3", "postgres"):
        yield ConfigError("database.type", "must be sqlite or postgres")
    yield from _check_postgres(cfg.database)
    if cfg.policy.mode not in ("file", "database"):
        yield ConfigError("policy.mode", "must be file or database")
    if cfg.cli.timeout <= 0:
        yield ConfigError("cli.timeout", "must be greater than zero")
    if cfg.cli.address:
        try:
            parse_cli_address(cfg.cli.address)
        except ConfigError as exc:
            yield exc
    if cfg.log.level.lower() not in ("trace", "debug", "info", "warn", "warning", "error",
                                     "fatal"):
        yield ConfigError("log.level", "must be debug, info, warn or error")
    if cfg.log.format not in ("text", "json"):
        yield ConfigError("log.format", "must be text or json")
    if not re.fullmatch(r"(0o?)?[0-7]{3,4}", cfg.unix_socket_permission):
        yield ConfigError("unix_socket_permission",
                          f"expected octal permissions such as 0770, got "
                          f"{cfg.unix_socket_permission!r}")
    if not cfg.listen_addr:
        yield ConfigError("listen_addr", "must not be empty")
    if bool(cfg.tls_cert_path) != bool(cfg.tls_key_path):
        yield ConfigError("tls_cert_path", "tls_cert_path and tls_key_path go together")
    yield from _check_acme(cfg)
    yield from dns_model.check(cfg.dns, urlsplit(cfg.server_url).hostname or "")
    yield from _check_limits(cfg.limits)
    if not 0 <= cfg.workers <= 256:
        yield ConfigError("workers", "must be between 0 (none: one process) and 256")
    if cfg.workers and cfg.limits.max_body_bytes > MAX_REQUEST_BODY:
        # Else a body over it would reach the worker and fail there with a 500.
        yield ConfigError("limits.max_body_bytes",
                          f"must be at most {MAX_REQUEST_BODY} with workers (a request "
                          "travels to the owner as one message); lower it or set workers: 0")
    limits = cfg.client_limits
    if limits.hostinfo_max_bytes < 1024:
        yield ConfigError("client_limits.hostinfo_max_bytes", "must be at least 1024")
    if limits.endpoints_max < 1 or limits.update_burst < 1:
        yield ConfigError("client_limits", "endpoints_max and update_burst must be at least 1")
    if limits.updates_per_second <= 0:
        yield ConfigError("client_limits.updates_per_second", "must be more than 0")


def _check_limits(lim: LimitsConfig) -> Iterator[ConfigError]:
    for name in ("max_connections", "max_connections_per_ip", "max_streams", "reset_limit",
                 "max_body_bytes", "header_timeout", "handshake_timeout", "idle_timeout",
                 "body_timeout", "reset_window", "log_interval"):
        if getattr(lim, name) <= 0:
            yield ConfigError(f"limits.{name}", "must be greater than zero")
    if not 16384 <= lim.max_frame_size <= 16777215:
        yield ConfigError("limits.max_frame_size", "must be between 16384 and 16777215")
    if lim.max_websocket_message < 4096:
        yield ConfigError("limits.max_websocket_message",
                          "must be at least 4096 (one Noise record)")
    if lim.max_connection_body_bytes < lim.max_body_bytes:
        yield ConfigError("limits.max_connection_body_bytes",
                          "must be at least limits.max_body_bytes")
