"""The DNS-01 provider: one TSIG-signed RFC 2136 UPDATE per record, sent over TCP to the primary.

Each update adds the new TXT value and, in the same message, deletes this provider's values at
that name older than ``keep``: a certificate for a name and its wildcard needs two values at
once, and old challenges should not pile up. Updates are serialised (one lock), so that record
of what was added stays in step with the zone. After the server accepts an update, the record is
asked for until the server serves it, so the ACME CA never looks before it is there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update
from meshscale.dns01 import Dns01Error, TxtRecord

from meshscale_rfc2136.settings import Rfc2136Settings


class Rfc2136Provider:
    name = "rfc2136"

    def __init__(self, settings: Rfc2136Settings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.zone = dns.name.from_text(settings.zone)
        self.key = dns.tsig.Key(settings.tsig_key_name, settings.tsig_secret,
                                settings.tsig_algorithm)
        self.clock = clock
        self.added: dict[str, dict[str, float]] = {}  # name -> value -> when added
        self._lock = asyncio.Lock()

    def serves(self, name: str) -> bool:
        zone = self.settings.zone
        return name == zone or name.endswith("." + zone)

    async def set_txt(self, record: TxtRecord) -> None:
        s = self.settings
        async with self._lock:
            now = self.clock()
            values = self.added.setdefault(record.name, {})
            stale = [v for v, t in values.items() if now - t >= s.keep and v != record.value]
            owner = dns.name.from_text(record.name).relativize(self.zone)
            update = dns.update.UpdateMessage(self.zone, keyring=self.key)
            for value in stale:
                update.delete(owner, dns.rdatatype.TXT, f'"{value}"')
            update.add(owner, s.ttl, dns.rdatatype.TXT, f'"{record.value}"')
            answer = await self._send(update)
            if answer.rcode() != dns.rcode.NOERROR:
                raise Dns01Error(f"the DNS server refused the update of {record.name}: "
                                 f"{dns.rcode.to_text(answer.rcode())}")
            for value in stale:
                del values[value]
            values[record.value] = now
        await self._until_served(record)

    async def _send(self, message: dns.message.Message) -> dns.message.Message:
        s = self.settings
        try:
            return await dns.asyncquery.tcp(message, s.server, port=s.port, timeout=s.timeout)
        except dns.exception.Timeout:
            raise Dns01Error(f"the DNS server {s.server} port {s.port} did not answer within "
                             f"{s.timeout:.0f}s") from None
        except (OSError, dns.exception.DNSException) as exc:
            raise Dns01Error(f"the DNS server {s.server} port {s.port} did not take the "
                             f"update: {exc}") from None

    async def _until_served(self, record: TxtRecord) -> None:
        deadline = self.clock() + self.settings.timeout
        while True:
            query = dns.message.make_query(record.name, dns.rdatatype.TXT)
            answer = await self._send(query)
            for rrset in answer.answer:
                if any(record.value in b"".join(r.strings).decode() for r in rrset):
                    return
            if self.clock() >= deadline:
                raise Dns01Error(f"the DNS server accepted the update but does not serve "
                                 f"{record.name} TXT")
            await asyncio.sleep(0.2)
