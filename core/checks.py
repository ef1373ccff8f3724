"""What must hold before the server listens, as one-line problems a person can act on.

``meshscale serve`` refuses to start on the first of these; ``meshscale configtest`` runs all of
them and reports every problem at once. Each check takes the loaded config (and the PluginHost
for what plugins provide) and changes nothing on disk.
"""

from __future__ import annotations

import errno
import importlib
import re
import socket
import tempfile
from collections.abc import Callable
from importlib import metadata

from meshscale import PROJECT
from meshscale.config import Config
from meshscale.configvalues import split_host_port
from meshscale.errors import MeshscaleError, PluginError, PolicyError
from meshscale.pluginhost import PluginHost


def check_tls(config: Config, host: PluginHost) -> None:
    """The own certificate and key are readable, matching and in date; ACME has its plugin."""
    if config.tls_cert_path:
        from meshscale.tls import certs  # noqa: PLC0415

        certs.from_files(config.resolve(config.tls_cert_path),
                         config.resolve(config.tls_key_path))
    if config.tls_letsencrypt_hostname and "acme" not in host.names():
        raise MeshscaleError(
            "tls_letsencrypt_hostname: ACME needs the acme plugin: add acme to plugins and "
            f"pip install '{PROJECT}[acme]'")


def check_data_dir(config: Config, host: PluginHost) -> None:
    """The data directory exists and is writable, or can be created."""
    path = config.data_path
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise MeshscaleError(f"data_dir: {existing} is not a directory")
    try:
        # A real write: permission bits say nothing to root or on a read-only mount.
        with tempfile.TemporaryFile(dir=existing, prefix=".meshscale-check-"):
            pass
    except OSError as exc:
        what = f"{path}" if existing == path else f"{existing} (to create {path})"
        raise MeshscaleError(
            f"data_dir: {what} is not writable ({exc.strerror or exc}); fix its permissions "
            "or set data_dir to a writable directory"
        ) from None


def check_storage(config: Config, host: PluginHost) -> None:
    """The configured backend is provided by a loaded plugin, and its database is ours."""
    wanted = config.database.type
    names = [b.name for b in host.hooks.storage_backends()]
    if wanted not in names:
        offered = ", ".join(sorted(names)) or "none (is the sqlite plugin in plugins:?)"
        raise MeshscaleError(f"database.type: no storage backend {wanted!r} is loaded; "
                             f"available: {offered}")
    if wanted in ("sqlite", "sqlite3"):
        from meshscale.storage import versioning  # noqa: PLC0415

        path = config.resolve(config.database.sqlite.path)
        refused = versioning.refusal(versioning.inspect_sqlite_file(path), f"database {path}")
        if refused is not None:
            raise MeshscaleError(refused)


def check_policy(config: Config, host: PluginHost) -> None:
    """The policy is valid for the configured engine: the file (policy.mode file), or the one
    stored in the database (policy.mode database) when it can be read without opening the
    storage (see meshscale.storage.peek)."""
    cfg = config.policy
    if cfg.mode == "database":
        backend = next((b for b in host.hooks.storage_backends()
                        if b.name == config.database.type), None)
        if backend is None or backend.stored_policy is None:
            return  # check_storage reports a missing backend
        text = backend.stored_policy(config)
        if text is None:
            return
        what = "policy.mode database: the policy stored in the database"
        fix = "; replace it with 'meshscale policy set'"
    elif cfg.mode == "file" and cfg.path:
        path = config.resolve(cfg.path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MeshscaleError(f"policy.path: cannot read {path}: {exc.strerror or exc}") \
                from None
        except UnicodeDecodeError:
            raise MeshscaleError(f"policy.path: {path} is not UTF-8 text") from None
        what, fix = f"policy.path: {path}", ""
    else:
        return
    specs = {s.name: s for s in host.hooks.policy_engines()}
    spec = specs.get(cfg.engine)
    if spec is None:
        offered = ", ".join(sorted(specs)) or "none (is the policy plugin in plugins:?)"
        raise MeshscaleError(f"policy.engine: no engine {cfg.engine!r} is loaded to apply "
                             f"{what.partition(': ')[2]}; available: {offered}")
    try:
        spec.create(config).check(text, [], [])
    except PolicyError as exc:
        raise MeshscaleError(f"{what} is invalid: {exc}{fix}") from None


def check_derp(config: Config, host: PluginHost) -> None:
    """Clients need at least one DERP region: embedded, from a file, or from a URL."""
    from meshscale.derpmap import DerpMapError, parse_document  # noqa: PLC0415

    sources = len(config.derp.urls)
    for entry in config.derp.paths:
        path = config.resolve(entry)
        try:
            regions, _ = parse_document(path.read_bytes(), str(path))
        except OSError as exc:
            raise MeshscaleError(f"derp.paths: cannot read {path}: {exc.strerror or exc}") \
                from None
        except DerpMapError as exc:
            raise MeshscaleError(f"derp.paths: {exc}") from None
        sources += bool(regions)
    srv = config.derp.server
    if "derp" in host.names() and srv.enabled and srv.automatically_add_embedded_derp_region:
        sources += 1
    if not sources:
        raise MeshscaleError(
            "derp: the DERP map would be empty and clients could not connect; enable the "
            "embedded DERP (plugin derp, derp.server.enabled: true) or list derp.paths or "
            "derp.urls"
        )


def listen_refusal(addr: str, exc: OSError, key: str = "listen_addr") -> str:
    """One line for a listener that cannot bind."""
    if exc.errno == errno.EADDRINUSE:
        return (f"refusing to start: {key} {addr} is already in use by another program; "
                f"stop it or choose another port with {key}")
    if exc.errno == errno.EACCES:
        return (f"refusing to start: {key} {addr}: permission denied (ports below 1024 "
                "need privileges; see docs/production.md)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"refusing to start: {key} {addr} is not an address of this machine"
    return f"refusing to start: cannot listen on {addr}: {exc.strerror or exc}"


def check_derp_ports(config: Config, host: PluginHost) -> None:
    """The embedded DERP's own ports are free: STUN (UDP) and, when the main listener is plain
    HTTP, DERP's TLS port. Checked by ``serve`` with the main port, before keys, database and
    DERP files are touched, so a port in use is refused in one line leaving the data directory
    as it was. A probe bind released at once (the plugins bind for real at startup); port 0
    is always free. Not a configtest check: it would fail next to the running server."""
    srv = config.derp.server
    if not srv.enabled:
        return
    wanted: list[tuple[str, str, socket.SocketKind]] = []
    if "stun" in host.names() and srv.stun_listen_addr:
        wanted.append(("derp.server.stun_listen_addr", srv.stun_listen_addr, socket.SOCK_DGRAM))
    if "derp" in host.names() and srv.tls_listen_addr and not config.tls_enabled:
        wanted.append(("derp.server.tls_listen_addr", srv.tls_listen_addr, socket.SOCK_STREAM))
    for key, addr, kind in wanted:
        name, port = split_host_port(addr)
        if port == 0:
            continue
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(name, port, type=kind)[0]
            with socket.socket(family, kind) as probe:
                if kind == socket.SOCK_STREAM:  # as asyncio.start_server binds
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
        except OSError as exc:
            raise MeshscaleError(listen_refusal(addr, exc, key)) from None


def check_dns_records(config: Config, host: PluginHost) -> None:
    """dns.extra_records_path is a readable JSON file of valid records."""
    from meshscale.dns.records import read_records  # noqa: PLC0415

    if config.dns.extra_records_path:
        read_records(config.resolve(config.dns.extra_records_path))


def check_plugin_extras(config: Config, host: PluginHost) -> None:
    """A built-in plugin with an extra of its name (metrics -> ``meshscale[metrics]``) has that
    extra's distributions installed; plugins import them only at start-up, too late to refuse
    cleanly. A storage plugin (postgres) needs its extra only when database.type names it."""
    try:
        requires = metadata.requires(PROJECT) or []
    except metadata.PackageNotFoundError:
        return
    problems = []
    for name in config.plugins:
        if "meshscale_storage_backends" in host.hooks_of(name) and \
                config.database.type != name:
            continue  # a storage plugin's driver is needed only when it is the one in use
        missing = []
        for req in requires:
            match = _REQUIREMENT.match(req)
            if match is not None and match.group(2) == name and not _usable(match.group(1)):
                missing.append(match.group(1))
        if missing:
            problems.append(f"plugin {name!r} needs {', '.join(missing)}, which is not "
                            f"installed: pip install '{PROJECT}[{name}]'")
    if problems:
        raise MeshscaleError("; ".join(problems))


def _usable(dist: str) -> bool:
    """Installed, and its modules import (an install can be broken, or a module shadowed)."""
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    modules = [m for m, dists in metadata.packages_distributions().items()
               if _norm(dist) in {_norm(d) for d in dists}]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            return False
    return True


CHECKS: list[Callable[[Config, PluginHost], None]] = [
    check_plugin_extras, check_data_dir, check_tls, check_storage, check_policy, check_derp,
    check_dns_records,
]


def run_checks(config: Config, host: PluginHost) -> list[str]:
    """Every problem, one line each, in a stable order."""
    problems = []
    for check in CHECKS:
        try:
            check(config, host)
        except MeshscaleError as exc:
            problems.append(explain(exc))
    return problems


# -- optional dependencies ----------------------------------------------------------------------

# Distributions whose name is not their module's (the module is missing, so it cannot be asked).
_DISTS_OF_MODULE: dict[str, tuple[str, ...]] = {"psycopg2": ("psycopg2-binary",)}
_REQUIREMENT = re.compile(
    r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)[^;]*(?:;\s*extra\s*==\s*['\"]([^'\"]+))?"
)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_for(module: str) -> str | None:
    """The meshscale extra that installs the importable ``module`` (from the installed
    distribution's own metadata), or None."""
    try:
        requires = metadata.requires(PROJECT) or []
    except metadata.PackageNotFoundError:
        return None
    wanted = {_norm(module), *map(_norm, _DISTS_OF_MODULE.get(module, ()))}
    for req in requires:
        match = _REQUIREMENT.match(req)
        if match and match.group(2) and match.group(2) != "all" \
                and _norm(match.group(1)) in wanted:
            return match.group(2)
    return None


def explain(exc: BaseException) -> str:
    """One line for a person. A plugin whose optional dependency is missing gets the install
    command that fixes it."""
    cause = exc.__cause__
    if isinstance(exc, PluginError) and isinstance(cause, ModuleNotFoundError) and cause.name:
        module = cause.name.split(".")[0]
        extra = extra_for(module)
        fix = (f"pip install '{PROJECT}[{extra}]'" if extra
               else f"install the distribution that provides {module!r}")
        return (f"plugin {exc.plugin!r} needs the Python module {module!r}, which is not "
                f"installed: {fix}")
    return str(exc)
