"""The config schema: typed, frozen ``Config`` and one dataclass per section.

Keys follow headscale's config file for everything the two share, so a headscale user's file
mostly works; this module is the one place a reader finds every key, its type and its default.
Reading a file, environment overrides and checking every key are ``configload.py``; the checks
of keys against each other are ``configcheck.py``; the value types (``Duration``, ``HostPort``,
...) and their parsers are ``configvalues.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshscale.configvalues import (
    Duration,
    HostPort,
    Prefix,
    SslMode,
    Url,
    letsencrypt_listen_addr,
)

# Plugins written before the value parsers moved to configvalues.py imported them from here:
# still importable, the same functions (docs/plugins.md §3 names configvalues as their home).
# The ``as`` spelling is what marks a re-export for type checkers (mypy --strict).
from meshscale.configvalues import parse_duration as parse_duration  # noqa: PLC0414
from meshscale.configvalues import parse_host_port as parse_host_port  # noqa: PLC0414
from meshscale.configvalues import split_host_port as split_host_port  # noqa: PLC0414
from meshscale.dns.model import DnsConfig

# -- the schema ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseConfig:
    private_key_path: str = "noise_private.key"  # relative paths are under data_dir


@dataclass(frozen=True)
class PrefixesConfig:
    v4: Prefix = Prefix("100.64.0.0/10")
    v6: Prefix = Prefix("fd7a:115c:a1e0::/48")
    allocation: str = "sequential"  # or "random"


@dataclass(frozen=True)
class SqliteConfig:
    path: str = "db.sqlite"
    write_ahead_log: bool = True
    wal_autocheckpoint: int = 1000


@dataclass(frozen=True)
class PostgresConfig:
    # host is a name, an address, or the directory of a unix socket (starts with "/"); port
    # may be left empty (then libpq's 5432). The YAML key for password is headscale's "pass".
    host: str = "localhost"
    port: int | None = 5432
    name: str = "meshscale"
    user: str = "meshscale"
    password: str = ""
    ssl: SslMode = SslMode("disable")
    max_open_conns: int = 10
    max_idle_conns: int = 10
    conn_max_idle_time_secs: int = 3600

    def describe(self) -> str:
        """Where the database is, for messages: never the password."""
        where = self.host if self.host.startswith("/") else f"{self.host}:{self.port or 5432}"
        return f"PostgreSQL database {self.name!r} at {where} (user {self.user!r})"


@dataclass(frozen=True)
class DatabaseConfig:
    type: str = "sqlite"
    debug: bool = False
    sqlite: SqliteConfig = field(default_factory=SqliteConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)


@dataclass(frozen=True)
class DerpServerConfig:
    enabled: bool = True
    region_id: int = 999
    region_code: str = "meshscale"
    region_name: str = "meshscale embedded DERP"
    # The embedded DERP's own TLS port when the main listener is plain HTTP (0: pick a free one
    # at start-up and remember it in data_dir).
    tls_listen_addr: HostPort = HostPort("127.0.0.1:0")
    stun_listen_addr: HostPort = HostPort("127.0.0.1:3478")
    private_key_path: str = "derp_server_private.key"
    verify_clients: bool = True
    automatically_add_embedded_derp_region: bool = True
    ipv4: str = ""
    ipv6: str = ""
    # 64 hex digits shared by the DERP servers of one region (replicas); empty: no meshing.
    mesh_key: str = ""


@dataclass(frozen=True)
class DerpConfig:
    server: DerpServerConfig = field(default_factory=DerpServerConfig)
    urls: tuple[Url, ...] = ()
    paths: tuple[str, ...] = ()
    auto_update_enabled: bool = True
    update_frequency: Duration = Duration(86400)


@dataclass(frozen=True)
class PolicyConfig:
    mode: str = "file"  # or "database"
    path: str = ""  # empty: no policy file, everyone may reach everyone
    engine: str = "tailscale"  # falls back to allow-all when no engine plugin provides it


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"  # or "json"


@dataclass(frozen=True)
class EphemeralConfig:
    inactivity_timeout: Duration = Duration(1800)


@dataclass(frozen=True)
class NodeConfig:
    expiry: Duration = Duration(0)  # 0: node keys never expire
    ephemeral: EphemeralConfig = field(default_factory=EphemeralConfig)
    # How long an interactive login's auth id (the AuthURL) stays usable; headscale's
    # tuning.register_cache_expiration, 15 minutes.
    auth_id_expiry: Duration = Duration(900)
    # Device approval (not in headscale; Tailscale's "manually approve new devices"): "auto"
    # lets a node in as soon as it authenticates; "manual" holds every new node, however it
    # authenticated, until ``meshscale nodes approve``.
    approval: str = "auto"


@dataclass(frozen=True)
class CliConfig:
    """headscale's ``cli`` section: where the admin commands go. Empty ``address``: this
    machine's unix_socket. Otherwise ``host:port`` (or ``https://host:port``) of a server,
    reached over HTTPS with ``api_key``; ``insecure`` skips the certificate check (headscale's
    meaning: still TLS, never plain HTTP). docs/api.md, "Remote CLI"."""

    address: str = ""
    api_key: str = ""
    timeout: Duration = Duration(5)  # headscale's default
    insecure: bool = False


@dataclass(frozen=True)
class ClientLimitsConfig:
    """Bounds on what one client may send (docs/security.md, "Client input")."""

    hostinfo_max_bytes: int = 64 * 1024  # a node's Hostinfo, serialized
    endpoints_max: int = 256  # MapRequest.Endpoints
    updates_per_second: float = 1.0  # Hostinfo/endpoint updates a node may push ...
    update_burst: int = 10  # ... after a burst of this many; later ones are coalesced


@dataclass(frozen=True)
class LimitsConfig:
    """What one stranger may hold on the main listener, and for how long (docs/security.md)."""

    # Connections: a ceiling for all (further capped by the open-file limit) and one per source.
    max_connections: int = 10000
    max_connections_per_ip: int = 512
    # Sources the per-source cap does not apply to: a reverse proxy in front of meshscale makes
    # every client connect from its address (the global ceiling still applies).
    uncapped_sources: tuple[Prefix, ...] = (Prefix("127.0.0.1/32"), Prefix("::1/128"))
    # Deadlines. header_timeout covers the whole first request head (not each read), and with it
    # the ts2021 upgrade that carries the Noise initiation; handshake_timeout the HTTP/2 preface
    # after it; idle_timeout a Noise session with no open request; body_timeout one request body.
    header_timeout: Duration = Duration(10)
    handshake_timeout: Duration = Duration(10)
    idle_timeout: Duration = Duration(300)
    body_timeout: Duration = Duration(30)
    # HTTP/2 inside the Noise session.
    max_body_bytes: int = 1 << 20  # one request body (what the Go client accepts as a reply)
    max_connection_body_bytes: int = 2 << 20  # all unfinished bodies of one connection
    max_streams: int = 64
    max_frame_size: int = 16384  # SETTINGS_MAX_FRAME_SIZE we announce and enforce
    reset_limit: int = 200  # streams a client may reset per reset_window (rapid reset)
    reset_window: Duration = Duration(10)
    # One WebSocket message on /ts2021 over WebSocket (JS/WASM clients send one Noise record,
    # at most 4096 bytes, per message; 32 KiB is the read limit of Tailscale's own server).
    max_websocket_message: int = 32768
    # Interactive logins waiting for an admin (or a login provider) at once.
    max_pending_logins: int = 1000
    # Refused connections and accept() failures are logged as one summary line per interval.
    log_interval: Duration = Duration(60)


@dataclass(frozen=True)
class Switch:
    """A headscale section holding only ``enabled`` (taildrop, logtail, auto_update)."""

    enabled: bool = False


@dataclass(frozen=True)
class Config:
    server_url: Url = Url("http://127.0.0.1:8080")
    listen_addr: HostPort = HostPort("127.0.0.1:8080")
    metrics_listen_addr: HostPort = HostPort("127.0.0.1:9090")
    # The /debug/ pages on the metrics listener answer only with "Authorization: Bearer <this>";
    # empty (the default) turns them off. Loopback is no protection from other local users.
    metrics_debug_token: str = ""
    data_dir: str = ""  # default: $MESHSCALE_DATA_DIR, else ~/.local/share/meshscale
    unix_socket: str = "meshscale.sock"
    unix_socket_permission: str = "0770"
    tls_cert_path: str = ""
    tls_key_path: str = ""
    # A plain-HTTP port that redirects to HTTPS (meshscale's key; empty: none). With ACME
    # HTTP-01 the plain port is tls_letsencrypt_listen and answers the challenges too.
    tls_redirect_listen_addr: HostPort = HostPort("")
    # ACME (Let's Encrypt), headscale's keys; tls_letsencrypt_hostname set turns it on (the
    # acme plugin does the work; docs/tls.md).
    acme_url: Url = Url("https://acme-v02.api.letsencrypt.org/directory")
    acme_email: str = ""
    tls_letsencrypt_hostname: str = ""
    tls_letsencrypt_cache_dir: str = "acme"  # relative: under data_dir
    tls_letsencrypt_challenge_type: str = "HTTP-01"  # or TLS-ALPN-01
    tls_letsencrypt_listen: str = ":http"
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    prefixes: PrefixesConfig = field(default_factory=PrefixesConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    derp: DerpConfig = field(default_factory=DerpConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    cli: CliConfig = field(default_factory=CliConfig)
    client_limits: ClientLimitsConfig = field(default_factory=ClientLimitsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    randomize_client_port: bool = False
    # Connection worker processes (meshscale's key; docs/architecture.md, "Connection
    # workers"): 0, the default, serves every client connection in this one process.
    workers: int = 0
    # As headscale: Taildrop file sharing is offered to nodes; clients send no logs to
    # Tailscale's log service; clients are not told to update themselves by default.
    taildrop: Switch = field(default_factory=lambda: Switch(enabled=True))
    logtail: Switch = field(default_factory=Switch)
    auto_update: Switch = field(default_factory=Switch)
    plugins: tuple[str, ...] = ("sqlite", "postgres", "derp", "stun", "policy")
    # Sections owned by plugins (``meshscale_config_sections``), parsed by them.
    plugin_sections: Mapping[str, object] = field(default_factory=dict)
    # Where the config came from, for messages ("" = built-in defaults).
    source: str = ""
    # Warnings about the file (headscale keys meshscale ignores, old key names), shown once by
    # ``serve`` and ``configtest``, not by every admin command.
    notices: tuple[str, ...] = ()

    # -- derived paths -------------------------------------------------------------------------

    @property
    def data_path(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        env = os.environ.get("MESHSCALE_DATA_DIR")
        if env:
            return Path(env).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "meshscale"

    def resolve(self, path: str) -> Path:
        """A path from the config: relative ones live in the data directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.data_path / p

    @property
    def tls_enabled(self) -> bool:
        """The main listener speaks HTTPS: an own certificate, or one from ACME."""
        return bool(self.tls_cert_path or self.tls_letsencrypt_hostname)

    @property
    def plain_http_addr(self) -> str:
        """The plain-HTTP port (redirects, ACME HTTP-01), or "" for none."""
        if self.tls_redirect_listen_addr:
            return str(self.tls_redirect_listen_addr)
        if self.tls_letsencrypt_hostname and self.tls_letsencrypt_challenge_type == "HTTP-01":
            return letsencrypt_listen_addr(self.tls_letsencrypt_listen)
        return ""

    def section(self, name: str) -> object:
        return self.plugin_sections.get(name)
