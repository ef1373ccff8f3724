"""The embedded DERP region as clients see it (tailcfg.DERPRegion, wire spelling). Pure."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from meshscale.config import Config


def server_url_host(config: Config) -> str:
    return urlsplit(config.server_url).hostname or "127.0.0.1"


def server_url_port(config: Config) -> int:
    parts = urlsplit(config.server_url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def advertised_hosts(config: Config) -> list[str]:
    """Every name or address the embedded DERP's certificate must carry."""
    srv = config.derp.server
    hosts = ["127.0.0.1", server_url_host(config), srv.ipv4, srv.ipv6]
    return [h for h in dict.fromkeys(hosts) if h and h != "none"]


def _ip_version(host: str) -> int:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


def embedded_region(
    config: Config, *, derp_port: int, cert_name: str | None, stun_port: int
) -> dict[str, Any]:
    """One region, one node: where clients dial the embedded DERP and its STUN responder.

    ``cert_name`` is the ``sha256-raw:`` pin of our self-signed certificate, or None when the
    port speaks TLS with a certificate clients verify normally (the main listener's).
    """
    srv = config.derp.server
    url_host = server_url_host(config)
    # HostName is what the client verifies the certificate against (and its SNI), so it is the
    # server_url host even when IPv4/IPv6 tell the client which address to dial.
    host = url_host
    ipv4 = srv.ipv4 or (url_host if _ip_version(url_host) == 4 else "")
    ipv6 = srv.ipv6 or (url_host if _ip_version(url_host) == 6 else "none")
    node: dict[str, Any] = {
        "Name": f"{srv.region_id}a",
        "RegionID": srv.region_id,
        "HostName": host,
        "IPv4": ipv4,
        "IPv6": ipv6,
        "STUNPort": stun_port,
        "DERPPort": derp_port,
    }
    if not ipv4:
        del node["IPv4"]  # empty: resolve HostName with DNS
    if cert_name:
        node["CertName"] = cert_name
    return {
        "RegionID": srv.region_id,
        "RegionCode": srv.region_code,
        "RegionName": srv.region_name,
        "Nodes": [node],
    }
