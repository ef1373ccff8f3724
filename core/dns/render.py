"""The DNS settings as tailcfg.DNSConfig, the JSON a Tailscale client reads from its map.

Field names, omissions and shapes are tailcfg's (tailscale.com/tailcfg DNSConfig, DNSRecord,
dnstype.Resolver): ``Resolvers`` are the global nameservers when the client's own DNS settings
are overridden, else the same list goes to ``FallbackResolvers``; ``Routes`` maps a domain to
its resolvers (split DNS; an empty list means "answered by 100.100.100.100 itself");
``Domains`` are the search domains, MagicDNS's base domain first; ``Proxied`` switches MagicDNS
on; ``ExtraRecords`` are A/AAAA records 100.100.100.100 answers. Empty fields are left out, as
Go's ``omitempty``/``omitzero`` leave them out. The result is what headscale's
``dnsToTailcfgDNS`` builds from the same ``dns:`` section.

Pure: settings in, a dict out (tests/unit/test_dns_render.py pins it byte for byte).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from meshscale.dns.model import DnsConfig, ExtraRecord

# The reverse zones the Go client serves for MagicDNS by itself (ipnlocal.magicDNSRootDomains):
# Tailscale's own 100.64.0.0/10 and fd7a:115c:a1e0::/48.
_CLIENT_V4 = ipaddress.ip_network("100.64.0.0/10")
_CLIENT_V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")


def resolvers(addrs: Iterable[str]) -> list[dict[str, str]]:
    return [{"Addr": a} for a in addrs]


def record(rec: ExtraRecord) -> dict[str, str]:
    out = {"Name": rec.name}
    if rec.type:  # Type is omitzero in tailcfg.DNSRecord
        out["Type"] = rec.type
    out["Value"] = rec.value
    return out


def reverse_zones(prefix: str) -> list[str]:
    """The in-addr.arpa / ip6.arpa zones covering ``prefix`` (whole octets or nibbles)."""
    net = ipaddress.ip_network(prefix, strict=False)
    step = 8 if net.version == 4 else 4
    whole = -(-net.prefixlen // step)  # labels the zone names fix: the prefix rounded up
    zones = []
    for sub in net.subnets(new_prefix=min(whole * step, net.max_prefixlen)):
        labels = sub.reverse_pointer.split(".")
        # reverse_pointer names one address: keep the zone's labels and "in-addr.arpa".
        zones.append(".".join(labels[len(labels) - whole - 2:]))
    return zones


def magic_dns_zones(v4: str, v6: str) -> list[str]:
    """Reverse zones for MagicDNS the client does not already serve: those of address
    prefixes outside Tailscale's own (headscale sends them for its prefixes too)."""
    zones: list[str] = []
    for prefix, own in ((v4, _CLIENT_V4), (v6, _CLIENT_V6)):
        if not prefix:
            continue
        net = ipaddress.ip_network(prefix, strict=False)
        if net.version == own.version and net.subnet_of(own):  # type: ignore[arg-type]
            continue
        zones.extend(reverse_zones(prefix))
    return zones


def dns_config(dns: DnsConfig, v4: str = "", v6: str = "") -> dict[str, Any]:
    """tailcfg.DNSConfig for ``dns`` (its extra_records already holding any file's records);
    ``v4``/``v6`` are the tailnet's address prefixes."""
    # Keys in tailcfg.DNSConfig's field order, Routes sorted: what Go's encoder writes.
    out: dict[str, Any] = {}
    global_ = resolvers(dns.nameservers.global_)
    if global_ and dns.override_local_dns:
        out["Resolvers"] = global_
    routes: dict[str, list[dict[str, str]]] = {
        domain.rstrip("."): resolvers(addrs) for domain, addrs in dns.nameservers.split.items()
    }
    if dns.magic_dns:
        for zone in magic_dns_zones(v4, v6):
            routes.setdefault(zone, [])
    if routes:
        out["Routes"] = dict(sorted(routes.items()))
    if global_ and not dns.override_local_dns:
        out["FallbackResolvers"] = global_
    domains = [dns.base_domain] if dns.magic_dns and dns.base_domain else []
    domains += [d for d in dns.search_domains if d not in domains]
    if domains:
        out["Domains"] = domains
    if dns.magic_dns:
        out["Proxied"] = True
    if dns.extra_records:
        out["ExtraRecords"] = [record(r) for r in dns.extra_records]
    return out
