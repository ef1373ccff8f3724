"""DNS-01 providers: how ``tailscale cert`` gets its ACME challenge into DNS.

``tailscale cert`` asks an ACME CA (Let's Encrypt) for a certificate of the node's DNS name and
proves control of that name with a DNS-01 challenge: it sends ``/machine/set-dns`` (a
tailcfg.SetDNSRequest) over its Noise session, asking the control server to publish a TXT
record ``_acme-challenge.<node>.<base_domain>``. meshscale checks that the name is the asking
node's own (control/setdns.py) and hands the record to the first DNS-01 provider that serves it;
providers come from plugins (``meshscale_dns01_providers``). meshscale has no DNS server of its
own for the public internet: a provider updates the authoritative DNS of ``base_domain``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from meshscale.errors import MeshscaleError

ACME_PREFIX = "_acme-challenge."
# What an ACME CA asks for: base64url(SHA-256(key authorization)), 43 characters (RFC 8555
# §8.4). Nothing else is accepted, so no provider ever writes quotes, spaces or newlines.
TXT_VALUE = re.compile(r"[A-Za-z0-9_-]{1,255}")


class Dns01Error(MeshscaleError):
    """A provider could not publish the record; the node's ``tailscale cert`` shows this
    message, so it says what failed in one line (no secrets)."""


@dataclass(frozen=True, slots=True)
class TxtRecord:
    """One TXT value a node asked for. ``name`` is lower case without the trailing dot
    (``_acme-challenge.laptop.example.com``); ``node_name`` is the node's own name under it."""

    name: str
    value: str
    node_id: int
    node_name: str


class Dns01Provider(Protocol):
    """A way to publish ACME DNS-01 TXT records, offered by ``meshscale_dns01_providers``."""

    @property
    def name(self) -> str: ...

    def serves(self, name: str) -> bool:
        """Is ``name`` (``_acme-challenge.<node>.<base_domain>``) in a zone this provider
        updates? The first provider that says yes gets the record."""

    async def set_txt(self, record: TxtRecord) -> None:
        """Publish ``record.value`` as a TXT record at ``record.name`` and return once the zone
        serves it. Keep other values at the same name for a while (a certificate for a
        name and its wildcard needs two at once) and drop old ones eventually. Raise
        Dns01Error saying what failed; a call that takes over 30 seconds is given up."""
