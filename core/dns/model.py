"""The ``dns:`` settings as values, and every check they must pass.

The same dataclasses hold the config file's section and what the admin API stores; the same
``check`` refuses bad values from either, naming the key
(``dns.nameservers.split.corp.example[1]``).
No I/O here: the config's checks (configcheck.py) and the API both call it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from meshscale.errors import ConfigError

# Bounds on what the settings may hold: they go into every node's map, and the Go client reads
# a map response of at most a few megabytes.
MAX_RESOLVERS = 32  # per list (global, or one split domain)
MAX_SPLIT_DOMAINS = 1000
MAX_SEARCH_DOMAINS = 100
MAX_EXTRA_RECORDS = 10000


@dataclass(frozen=True)
class NameserversConfig:
    # Named "global" in YAML; "global_" here because it is a Python keyword.
    global_: tuple[str, ...] = ()
    split: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExtraRecord:
    name: str
    # "A" or "AAAA"; empty means "as the value is", which is tailcfg.DNSRecord's own rule.
    type: str = ""
    value: str = ""


@dataclass(frozen=True)
class DnsConfig:
    magic_dns: bool = True
    base_domain: str = "meshscale.net"
    override_local_dns: bool = False
    nameservers: NameserversConfig = field(default_factory=NameserversConfig)
    search_domains: tuple[str, ...] = ()
    extra_records: tuple[ExtraRecord, ...] = ()
    # A JSON file of more records ([{"name":..,"type":..,"value":..}], tailcfg.DNSRecord's
    # fields in any letter case), watched and re-read when it changes; config file only.
    extra_records_path: str = ""


_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}", re.IGNORECASE)


def dns_name(value: str, trailing_dot: bool = True) -> bool:
    """A DNS name (labels of letters, digits, hyphens; underscores as in _acme-challenge)."""
    if trailing_dot and value.endswith("."):
        value = value[:-1]
    return bool(_DNS_NAME.fullmatch(value))


def resolver_problem(addr: str) -> str | None:
    """Why ``addr`` is no resolver address a Tailscale client takes (dnstype.Resolver.Addr):
    an IP, an IP:port, or a DNS-over-HTTPS URL. None if it is one."""
    if not isinstance(addr, str) or not addr:
        return "expected an IP address or an https:// URL"
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        pass
    else:
        return None
    if addr.startswith(("https://", "http://")):
        parts = urlsplit(addr)
        if parts.hostname and not any(c.isspace() for c in addr):
            return None
        return f"not a DNS-over-HTTPS URL: {addr!r}"
    host, sep, port = addr.rpartition(":")
    if sep and port.isdigit() and 0 < int(port) < 65536:
        try:
            ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
        except ValueError:
            pass
        else:
            if ":" not in host or host.startswith("["):
                return None
    return f"expected an IP address, IP:port or an https:// URL, got {addr!r}"


def _check_resolvers(values: tuple[str, ...], path: str) -> Iterator[ConfigError]:
    if len(values) > MAX_RESOLVERS:
        yield ConfigError(path, f"at most {MAX_RESOLVERS} resolvers")
    for i, addr in enumerate(values):
        problem = resolver_problem(addr)
        if problem:
            yield ConfigError(f"{path}[{i}]", problem)


def record_problem(rec: ExtraRecord) -> tuple[str, str] | None:
    """(field, reason) for a record the client would drop or misread; None if it is good."""
    if not dns_name(rec.name):
        return "name", f"not a DNS name: {rec.name!r}"
    if rec.type not in ("", "A", "AAAA"):
        return "type", f"must be A or AAAA, got {rec.type!r}"
    try:
        ip = ipaddress.ip_address(rec.value)
    except ValueError:
        return "value", f"not an IP address: {rec.value!r}"
    if rec.type == "A" and ip.version != 4:
        return "value", f"an A record needs an IPv4 address, got {rec.value!r}"
    if rec.type == "AAAA" and ip.version != 6:
        return "value", f"an AAAA record needs an IPv6 address, got {rec.value!r}"
    return None


def check_records(records: tuple[ExtraRecord, ...], path: str) -> Iterator[ConfigError]:
    if len(records) > MAX_EXTRA_RECORDS:
        yield ConfigError(path, f"at most {MAX_EXTRA_RECORDS} records")
    for i, rec in enumerate(records):
        problem = record_problem(rec)
        if problem:
            yield ConfigError(f"{path}[{i}].{problem[0]}", problem[1])


def check(dns: DnsConfig, server_host: str = "", path: str = "dns") -> Iterator[ConfigError]:
    """Every problem of ``dns``; ``server_host`` is server_url's host (it must stay outside
    base_domain, or clients would look the control server up through MagicDNS)."""
    if dns.magic_dns and not dns.base_domain:
        yield ConfigError(f"{path}.base_domain", "required when dns.magic_dns is true")
    base = dns.base_domain
    if base and (base.endswith(".") or not dns_name(base, trailing_dot=False)
                 or base != base.lower()):
        yield ConfigError(f"{path}.base_domain",
                          f"not a valid DNS name (lower case, no trailing dot): {base!r}")
    elif base and server_host and (server_host.lower() == base
                                   or server_host.lower().endswith("." + base)):
        yield ConfigError(f"{path}.base_domain",
                          f"server_url's host {server_host} is inside {base}: clients would "
                          "look the control server up through MagicDNS; use another domain")
    ns = dns.nameservers
    if dns.override_local_dns and not ns.global_:
        yield ConfigError(f"{path}.nameservers.global",
                          "must not be empty when dns.override_local_dns is true")
    yield from _check_resolvers(ns.global_, f"{path}.nameservers.global")
    if len(ns.split) > MAX_SPLIT_DOMAINS:
        yield ConfigError(f"{path}.nameservers.split", f"at most {MAX_SPLIT_DOMAINS} domains")
    for domain, resolvers in ns.split.items():
        where = f"{path}.nameservers.split.{domain}"
        if not dns_name(domain) or domain.startswith("."):
            yield ConfigError(where, f"not a DNS name: {domain!r}")
        yield from _check_resolvers(resolvers, where)
    if len(dns.search_domains) > MAX_SEARCH_DOMAINS:
        yield ConfigError(f"{path}.search_domains", f"at most {MAX_SEARCH_DOMAINS} domains")
    for i, domain in enumerate(dns.search_domains):
        if not dns_name(domain, trailing_dot=False):
            yield ConfigError(f"{path}.search_domains[{i}]",
                              f"not a DNS name (no trailing dot): {domain!r}")
    yield from check_records(dns.extra_records, f"{path}.extra_records")
