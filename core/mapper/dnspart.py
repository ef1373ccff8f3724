"""The DNSConfig of maps: the DNS settings in force, rendered once and shared by every map; per
node only when it carries the node's own name as CertDomains (``tailscale cert``, offered when
a DNS-01 provider is loaded: control/setdns.py). And what a change of the settings means for
the streams: a DNSConfig message, or full maps when every node's name changed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from meshscale.config import Config
from meshscale.dns import render
from meshscale.dns.model import DnsConfig
from meshscale.mapper import wire
from meshscale.mapper.frames import Message
from meshscale.state.models import Node


class DnsPart:
    def __init__(self, config: Config, source: Callable[[], DnsConfig]) -> None:
        self.source = source  # the settings in force (meshscale.dns.settings)
        self.config = dataclasses.replace(config, dns=source())
        self.cert_domains = False  # the server sets it
        self._render()

    def _render(self) -> None:
        prefixes = self.config.prefixes
        self.shared: dict[str, Any] = render.dns_config(self.config.dns, prefixes.v4,
                                                        prefixes.v6)
        self._message: Message | None = None

    def for_node(self, node: Node) -> dict[str, Any]:
        """tailcfg.DNSConfig for ``node``: the shared one, plus its own name as CertDomains
        when certificates are on offer."""
        if not (self.cert_domains and self.config.dns.base_domain):
            return self.shared
        return {**self.shared, "CertDomains": [wire.fqdn(node, self.config).rstrip(".")]}

    def message(self, node: Node) -> Message:
        """``{"DNSConfig": ...}`` for ``node``'s stream; one shared message when it can be."""
        if self.cert_domains and self.config.dns.base_domain:
            return Message.of({"DNSConfig": self.for_node(node)})
        if self._message is None:
            self._message = Message.of({"DNSConfig": self.shared})
        return self._message

    def refresh(self) -> bool | None:
        """Take the settings in force now. True: the base domain changed, so did every node's
        name (streams need full maps); False: only DNSConfig changed; None: nothing did."""
        new = self.source()
        renamed = new.base_domain != self.config.dns.base_domain
        self.config = dataclasses.replace(self.config, dns=new)
        before = self.shared
        self._render()
        if renamed:
            return True
        return False if self.shared != before else None
