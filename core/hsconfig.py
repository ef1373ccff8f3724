"""headscale's config keys that meshscale reads differently or not at all.

A headscale user points meshscale at their ``config.yaml`` and it loads (releases 0.23 to 0.29
and headscale's main branch, docs/migrating-from-headscale.md). This module works on the raw
mapping before the typed config is built from it:

- old key names headscale still understands (``dns_config``, ``acl_policy_path``, ``db_*``, ...)
  are read as today's names;
- keys of features meshscale does not have are taken out: a notice (shown once, by ``serve`` and
  ``configtest``) while the feature is off or only tuned, a problem when it is switched on, so
  nobody believes a feature works that does not.

Keys owned by a plugin (its config section, such as ``oidc`` once an OIDC plugin claims it) never
reach this module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshscale.errors import ConfigError

# headscale's old name -> today's name (hscontrol/types/config.go, its deprecator).
LEGACY: dict[str, str] = {
    "acl_policy_path": "policy.path",
    "dns_config.magic_dns": "dns.magic_dns",
    "dns_config.base_domain": "dns.base_domain",
    "dns_config.override_local_dns": "dns.override_local_dns",
    "dns_config.nameservers": "dns.nameservers.global",
    "dns_config.restricted_nameservers": "dns.nameservers.split",
    "dns_config.domains": "dns.search_domains",
    "dns_config.extra_records": "dns.extra_records",
    "ephemeral_node_inactivity_timeout": "node.ephemeral.inactivity_timeout",
    "log_level": "log.level",
    "db_type": "database.type",
    "db_path": "database.sqlite.path",
    "db_host": "database.postgres.host",
    "db_port": "database.postgres.port",
    "db_name": "database.postgres.name",
    "db_user": "database.postgres.user",
    "db_pass": "database.postgres.pass",
    "db_ssl": "database.postgres.ssl",
}


def _on_if_set(value: Any) -> bool:
    return value not in (None, "", [], {}, False)


def _oidc_on(value: Any) -> bool:
    # headscale turns OIDC on by oidc.issuer, not by an "enabled" key.
    return isinstance(value, dict) and bool(value.get("issuer"))


@dataclass(frozen=True)
class Lacking:
    """A headscale feature meshscale does not have, and the keys that configure it."""

    keys: tuple[str, ...]  # dotted; a section name stands for every key under it
    what: str  # what the feature is, and what meshscale does instead
    on: Callable[[Any], bool] | None = None  # value switches the feature on: refused
    off: str = "remove it"  # how to switch it off, for the refusal


LACKING: tuple[Lacking, ...] = (
    Lacking(("grpc_listen_addr", "grpc_allow_insecure"),
            "headscale's gRPC API; meshscale's CLI talks to the server over unix_socket, or to "
            "cli.address over HTTPS"),
    Lacking(("disable_check_updates",), "update checks; meshscale never checks for updates"),
    Lacking(("database.gorm",), "GORM tuning; meshscale does not use GORM"),
    Lacking(("tuning",), "headscale's internal tuning"),
    Lacking(("node.routes.ha",),
            "health probes of HA subnet routers; meshscale moves a route to another router "
            "when its primary goes offline"),
    Lacking(("preauth_keys.revoked_retention",),
            "clean-up of expired pre-auth keys; meshscale keeps them until deleted"),
    Lacking(("derp.server.stun",), "a switch for STUN; meshscale's STUN is the stun plugin"),
    Lacking(("trusted_proxies",), "client addresses from proxy headers (X-Forwarded-For)",
            on=_on_if_set, off="leave trusted_proxies empty"),
    Lacking(("dns.use_username_in_magic_dns", "dns_config.use_username_in_magic_dns"),
            "user names in MagicDNS names (headscale removed it too)", on=_on_if_set),
    # Only when the oidc plugin is not loaded: a loaded plugin owns its section.
    Lacking(("oidc",), "OIDC login without the oidc plugin", on=_oidc_on,
            off="add oidc to plugins (pip install 'meshscale[oidc]'), or remove the oidc "
                "section's issuer"),
)


# headscale switches meshscale accepts (they are off here whatever the file says): a notice only
# when the file turns one on, since headscale's example config carries them, off.
OFF_HERE: dict[str, str] = {
    "database.debug": "headscale's SQL query log; meshscale logs no SQL statements",
}


def _get(raw: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _pop(raw: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = raw
    chain = []
    for part in parents:
        chain.append((node, part))
        node = node[part]
    del node[last]
    for parent, part in reversed(chain):  # drop sections the key leaves empty
        if parent[part] == {}:
            del parent[part]


def _set(raw: dict[str, Any], dotted: str, value: Any) -> bool:
    *parents, last = dotted.split(".")
    node: Any = raw
    for part in parents:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            return False
        node = nxt
    node[last] = value
    return True


def _copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def _ip_prefixes(raw: dict[str, Any], notices: list[str], errors: list[ConfigError]) -> None:
    """headscale <0.23's ``ip_prefixes`` list -> ``prefixes.v4`` / ``prefixes.v6``."""
    found, value = _get(raw, "ip_prefixes")
    if not found:
        return
    _pop(raw, "ip_prefixes")
    if _get(raw, "prefixes")[0]:
        notices.append("ip_prefixes: headscale's old key, ignored because prefixes is set")
        return
    if not isinstance(value, list):
        errors.append(ConfigError("ip_prefixes", "expected a list of IP prefixes"))
        return
    for i, item in enumerate(value):
        try:
            net = ipaddress.ip_network(str(item), strict=True)
        except ValueError as exc:
            errors.append(ConfigError(f"ip_prefixes[{i}]", f"invalid IP prefix: {exc}"))
            continue
        _set(raw, f"prefixes.v{net.version}", str(net))
    notices.append("ip_prefixes: headscale's old key, read as prefixes.v4 and prefixes.v6")


def translate(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[ConfigError]]:
    """The mapping with headscale's keys settled, the notices, and the problems."""
    raw = _copy(raw)
    notices: list[str] = []
    errors: list[ConfigError] = []
    for old, new in LEGACY.items():
        found, value = _get(raw, old)
        if not found:
            continue
        _pop(raw, old)
        if _get(raw, new)[0]:
            notices.append(f"{old}: headscale's old name for {new}, ignored because {new} "
                           "is set")
        elif _set(raw, new, value):
            notices.append(f"{old}: headscale's old name for {new}; read as {new}")
    _ip_prefixes(raw, notices, errors)
    for key, what in OFF_HERE.items():
        if _get(raw, key)[1] is True:
            notices.append(f"{key}: ignored ({what})")
    for feature in LACKING:
        present = [(k, v) for k in feature.keys for found, v in [_get(raw, k)] if found]
        if not present:
            continue
        for key, _ in present:
            _pop(raw, key)
        switched_on = [k for k, v in present if feature.on is not None and feature.on(v)]
        if switched_on:
            errors.extend(ConfigError(k, f"{feature.what} is not available in meshscale; "
                                         f"{feature.off}") for k in switched_on)
        else:
            keys = ", ".join(k for k, _ in present)
            notices.append(f"{keys}: ignored ({feature.what})")
    return raw, notices, errors
