"""YAML configuration -> typed, frozen Config.

Keys follow headscale's config file for everything the two share, so a headscale user's file
mostly works. Every key is checked: an unknown or invalid one is refused with its dotted path and
the reason. ``MESHSCALE_<PATH>`` environment variables override single keys
(``MESHSCALE_LISTEN_ADDR``, ``MESHSCALE_DATABASE_SQLITE_PATH``, ...).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from meshscale import hsconfig
from meshscale.dns import model as dns_model
from meshscale.dns.model import DnsConfig
from meshscale.errors import ConfigError, ConfigErrors
from meshscale.workers.codec import MAX_REQUEST_BODY

log = logging.getLogger(__name__)

T = TypeVar("T")

CONFIG_ENV = "MESHSCALE_CONFIG"
ENV_PREFIX = "MESHSCALE_"


class Duration(float):
    """Seconds, written in YAML as ``30s``, ``5m``, ``1h``, ``180d`` or a bare number."""


class Prefix(str):
    """An IP network in CIDR form, validated."""

    __slots__ = ()


class Url(str):
    """An http(s) URL."""

    __slots__ = ()


class HostPort(str):
    """``host:port`` (``[v6]:port`` for IPv6); an empty string disables the listener."""

    __slots__ = ()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object, path: str) -> Duration:
    if isinstance(value, bool):
        raise ConfigError(path, "expected a duration such as 30s, 5m or 1h")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(path, "a duration cannot be negative")
        return Duration(value)
    if isinstance(value, str):
        # Go-style compound durations ("1h30m") as well as single units.
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", value.replace(" ", ""))
        if parts and "".join(n + u for n, u in parts) == value.replace(" ", ""):
            return Duration(sum(float(n) * _UNITS[u] for n, u in parts))
        m = _DURATION.match(value)
        if m:
            return Duration(float(m.group(1)) * _UNITS[m.group(2)])
    raise ConfigError(path, f"expected a duration such as 30s, 5m or 1h, got {value!r}")


def parse_host_port(value: str, path: str) -> HostPort:
    if value == "":
        return HostPort("")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(path, f"expected host:port, got {value!r}")
    host = host.strip("[]")
    if host not in ("", "localhost"):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
                raise ConfigError(path, f"invalid host in {value!r}") from None
    return HostPort(value)


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - empty host means all


def parse_cli_address(value: str, path: str = "cli.address") -> tuple[str, int]:
    """cli.address as headscale takes it (``host:port``; port 443 if left out), or an
    ``https://`` URL. Never plain HTTP: the API key would cross the network readable, and
    headscale's CLI, too, only speaks TLS to a remote server (cli.insecure skips the
    certificate check, it does not turn TLS off)."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "https":
            raise ConfigError(path, f"{value!r}: the remote CLI speaks HTTPS only (the API key "
                              "must not cross the network in clear text); on the server's own "
                              "machine leave cli.address empty to use the unix socket")
        text = rest.rstrip("/")
        if "/" in text:
            raise ConfigError(path, f"{value!r}: give the server's address without a path")
    if not text:
        raise ConfigError(path, "empty address")
    if text.startswith("["):
        text = text if "]:" in text else text + ":443"
    elif text.count(":") > 1:
        text = f"[{text}]:443"  # a bare IPv6 address
    elif ":" not in text:
        text += ":443"
    parse_host_port(text, path)
    host, port = split_host_port(text)
    if not host or port == 0:
        raise ConfigError(path, f"{value!r}: expected host:port, e.g. meshscale.example.com:443")
    return host, port


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


class SslMode(str):
    """libpq's sslmode; headscale's ``ssl: true/false`` means require/disable."""

    __slots__ = ()


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SSL_BOOLS = {"true": "require", "t": "require", "1": "require",
              "false": "disable", "f": "disable", "0": "disable"}


def parse_ssl_mode(value: object, path: str) -> SslMode:
    if isinstance(value, bool):
        return SslMode("require" if value else "disable")
    if isinstance(value, str):
        mode = _SSL_BOOLS.get(value.strip().lower(), value.strip().lower())
        if mode in SSL_MODES:
            return SslMode(mode)
    raise ConfigError(path, f"expected true, false or a libpq sslmode ({', '.join(SSL_MODES)}), "
                            f"got {value!r}")


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


_RENAMED = {"global": "global_", "pass": "password"}
# Config fields that are not YAML keys.
_INTERNAL = ("plugin_sections", "source", "notices")


# -- generic conversion with paths ------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, errors: list[ConfigError]) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], path, errors)
    if tp is Duration:
        return parse_duration(value, path)
    if tp is SslMode:
        return parse_ssl_mode(value, path)
    if tp is HostPort:
        if not isinstance(value, str):
            raise ConfigError(path, "expected a string host:port")
        return parse_host_port(value, path)
    if tp is Prefix:
        if not isinstance(value, str):
            raise ConfigError(path, "expected an IP prefix such as 100.64.0.0/10")
        try:
            return Prefix(str(ipaddress.ip_network(value, strict=True)))
        except ValueError as exc:
            raise ConfigError(path, f"invalid IP prefix {value!r}: {exc}") from None
    if tp is Url:
        if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
            raise ConfigError(path, f"expected an http:// or https:// URL, got {value!r}")
        return Url(value.rstrip("/"))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(path, f"expected a string, got {value!r}")
    if origin is tuple:
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(path, "expected a list")
        return tuple(_convert(v, item, f"{path}[{i}]", errors) for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is dict:
        key_t, val_t = typing.get_args(tp) or (str, Any)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(path, "expected a mapping")
        return {
            _convert(k, key_t, path, errors): _convert(v, val_t, f"{path}.{k}", errors)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, path, errors)
    raise ConfigError(path, f"unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type[T], raw: Any, path: str, errors: list[ConfigError]) -> T:
    """Build ``cls`` from ``raw``; a bad key is added to ``errors`` and keeps its default, so
    one run reports every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, "expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else str(key)
        attr = _RENAMED.get(str(key), str(key))
        if attr not in names or attr in _INTERNAL:
            errors.append(ConfigError(sub, "unknown key"))
            continue
        try:
            kwargs[attr] = _convert(value, hints[attr], sub, errors)
        except ConfigError as exc:
            errors.append(exc)
    try:
        return cls(**kwargs)
    except TypeError:
        missing = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise ConfigError(path, f"missing {', '.join(missing)}") from None


def build_section(cls: type[T], raw: Any, path: str) -> T:
    """One section (a config dataclass) from raw values, checked key by key exactly as in the
    config file; every problem at once (ConfigErrors), named by its dotted path."""
    errors: list[ConfigError] = []
    try:
        out = _build(cls, raw, path, errors)
    except ConfigError as exc:
        errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return out


# -- loading ------------------------------------------------------------------------------------


def default_locations() -> list[Path]:
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [
        Path("config.yaml"),
        Path(xdg) / "meshscale" / "config.yaml",
        Path("/etc/meshscale/config.yaml"),
    ]


def headscale_locations() -> list[Path]:
    """Where headscale keeps its config: read when meshscale's own locations have none."""
    return [Path("/etc/headscale/config.yaml"), Path.home() / ".headscale" / "config.yaml"]


def find_config_file(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    for candidate in [*default_locations(), *headscale_locations()]:
        if candidate.is_file():
            return candidate
    return None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(where, f"invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "the top level must be a mapping")
    return data


def _env_paths(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Map MESHSCALE_A_B_C names to the key path ("a", "b", "c") for every scalar key."""
    out: dict[str, tuple[str, ...]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in _INTERNAL:
            continue
        yaml_name = "global" if f.name == "global_" else f.name
        key = (*prefix, yaml_name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out.update(_env_paths(tp, key))
        else:
            out[ENV_PREFIX + "_".join(key).upper()] = key
    return out


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    paths = _env_paths(Config)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV, "MESHSCALE_DATA_DIR"):
            continue
        key = paths.get(name)
        if key is None:
            continue  # other MESHSCALE_* variables (tests, tools) are not config keys
        node = raw
        for part in key[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        node[key[-1]] = parsed
    return raw


def build_config(
    raw: Mapping[str, Any],
    sections: Sequence[Any] = (),
    source: str = "",
) -> Config:
    """Validate a raw mapping. ``sections`` are ConfigSection objects from plugins."""
    raw = dict(raw)
    owned = {s.name: s for s in sections}
    plugin_raw = {k: raw.pop(k) for k in list(raw) if k in owned}
    # headscale's own keys first: old names read as the new ones, keys for features meshscale
    # lacks taken out (a warning, or a problem when the feature is switched on).
    raw, notices, errors = hsconfig.translate(raw)
    cfg = _build(Config, raw, "", errors)
    errors += _check_semantics(cfg)
    parsed: dict[str, object] = {}
    for name, section in owned.items():
        value = plugin_raw.get(name) or {}
        if not isinstance(value, dict):
            errors.append(ConfigError(name, "expected a mapping"))
            continue
        try:
            parsed[name] = section.parse(value, name)
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return dataclasses.replace(cfg, plugin_sections=parsed, source=source,
                               notices=tuple(notices))


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
_NAMED_PORTS = {"http": "80", "https": "443"}


def letsencrypt_listen_addr(value: str) -> str:
    """headscale's ``tls_letsencrypt_listen`` (``:http``, ``0.0.0.0:80``) as ``host:port``."""
    host, _, port = value.rpartition(":")
    return f"{host}:{_NAMED_PORTS.get(port, port)}"


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


def _check_semantics(cfg: Config) -> Iterator[ConfigError]:
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


def load_raw(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> tuple[
    dict[str, Any], str
]:
    """Read the config file (if any) and apply environment overrides."""
    environ = os.environ if environ is None else environ
    path = find_config_file(explicit)
    raw: dict[str, Any] = {}
    source = ""
    if path is not None:
        if not path.is_file():
            raise ConfigError(str(path), "config file not found")
        raw = read_yaml(path)
        source = str(path)
    return apply_env(raw, environ), source


SectionsFn = Callable[[list[str]], Sequence[Any]]


def load_config(
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    sections_for: SectionsFn | None = None,
) -> Config:
    """Read, override and validate. ``sections_for(plugin_names)`` yields plugin sections."""
    raw, source = load_raw(explicit, environ)
    plugins = raw.get("plugins", list(Config.plugins))
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError("plugins", "expected a list of plugin names")
    sections = sections_for(plugins) if sections_for else ()
    config = build_config(raw, sections, source)
    if source and Path(source) in headscale_locations():
        ours = ", ".join(str(p) for p in default_locations())
        config = dataclasses.replace(config, notices=(
            f"config: none of meshscale's files ({ours}) exists; read headscale's {source}",
            *config.notices))
    return config
