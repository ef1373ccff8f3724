"""meshscale plugin: rfc2136 — publish ``tailscale cert``'s ACME DNS-01 records in your DNS by
RFC 2136 dynamic update, signed with a TSIG key (BIND, Knot, PowerDNS, Windows DNS...).

    plugins: [sqlite, derp, stun, policy, rfc2136]
    rfc2136:
      server: 192.0.2.53          # the zone's primary server (an IP address)
      zone: example.com           # dns.base_domain or a zone above it
      tsig_key_name: meshscale
      tsig_secret_path: /etc/meshscale/tsig.secret   # base64, as in the server's key statement
      tsig_algorithm: hmac-sha256

meshscale checks each request (only a node's own ``_acme-challenge.<node>.<base_domain>``) and
hands it here through ``meshscale_dns01_providers``; update.py sends it. See README.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshscale import hookimpl
from meshscale.config import Config
from meshscale.context import ServerContext
from meshscale.contributions import ConfigSection
from meshscale.dns01 import Dns01Provider

from meshscale_rfc2136.settings import SECTION, Rfc2136Settings, parse
from meshscale_rfc2136.update import Rfc2136Provider

__all__ = ["Rfc2136Plugin", "Rfc2136Provider", "Rfc2136Settings"]


class Rfc2136Plugin:
    """One object per server (the entry point names this class)."""

    def __init__(self, server: ServerContext) -> None:
        self.server = server

    @hookimpl
    def meshscale_config_sections(self) -> Sequence[ConfigSection]:
        return [ConfigSection(SECTION, parse)]

    @hookimpl
    def meshscale_dns01_providers(self, config: Config) -> Sequence[Dns01Provider]:
        settings = config.section(SECTION)
        if not isinstance(settings, Rfc2136Settings) or not settings.enabled:
            return []
        return [Rfc2136Provider(settings)]
