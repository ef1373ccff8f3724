"""``POST /machine/set-dns``: a node asks for its ACME DNS-01 TXT record (``tailscale cert``).

The body is tailcfg.SetDNSRequest; the client (control/controlclient/direct.go ``SetDNS``)
expects ``200 {}`` (tailcfg.SetDNSResponse) once the record is published, and shows any other
answer's status and body. The node is the Noise session's: the NodeKey in the body must be a
node of this machine, and the name must be ``_acme-challenge.<that node's name>.<base_domain>``
(403 otherwise), so a node can only ever prove control of its own name. The record then goes to
the first DNS-01 provider that serves it (meshscale.dns01), with a deadline, and a node may ask
only so often (a token bucket: a certificate needs one or two records).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from meshscale.clientinput import Limits, parse_set_dns
from meshscale.control.body import typed_body
from meshscale.control.ratelimit import UpdateLimiter
from meshscale.control.request import ControlRequest, ResponseWriter
from meshscale.dns01 import ACME_PREFIX, TXT_VALUE, Dns01Error, Dns01Provider, TxtRecord
from meshscale.state.store import State

log = logging.getLogger(__name__)

PROVIDER_TIMEOUT = 30.0
BURST, PER_SECOND = 10, 0.1  # ten records at once, then one every ten seconds
TEXT = "text/plain"


class SetDNS:
    def __init__(self, state: State, base_domain: Callable[[], str],
                 providers: Sequence[Dns01Provider], limits: Limits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.base_domain = base_domain
        self.providers = list(providers)
        self.limits = limits
        self.limiter = UpdateLimiter(PER_SECOND, BURST)
        self.clock = clock

    async def handle(self, req: ControlRequest, resp: ResponseWriter) -> None:
        parsed = await typed_body(req, resp, parse_set_dns, self.limits)
        if parsed is None:
            return
        node = self.state.by_node_key(parsed.node_key) if parsed.node_key else None
        if node is None or node.machine_key != req.machine_key:
            await _say(resp, 403, "NodeKey is not a node of this machine")
            return
        if node.expired():
            await _say(resp, 403, "this node's key has expired; log in again")
            return
        if parsed.type.upper() != "TXT":
            await _say(resp, 400, f"record type {parsed.type[:16]!r} is not supported; only TXT")
            return
        base = self.base_domain().strip(".").lower()
        if not base:
            await _say(resp, 403, "this server has no dns.base_domain, so nodes have no DNS "
                                  "names to get certificates for")
            return
        node_name = f"{node.given_name}.{base}".lower()
        name = parsed.name.rstrip(".").lower()
        if name != ACME_PREFIX + node_name:
            await _say(resp, 403, f"{parsed.name[:300]!r} is not {ACME_PREFIX}{node_name}: a "
                                  "node may only set its own ACME challenge")
            return
        if not TXT_VALUE.fullmatch(parsed.value):
            await _say(resp, 400, "Value is not an ACME DNS-01 digest (1-255 characters of "
                                  "A-Z a-z 0-9 _ -)")
            return
        provider = next((p for p in self.providers if p.serves(name)), None)
        if provider is None:
            await _say(resp, 501, f"no DNS-01 provider on this server serves {name}; see "
                                  "docs/tls.md")
            return
        wait = self.limiter.take(node.id, self.clock())
        if wait > 0:
            await _say(resp, 429, f"too many set-dns requests from this node; try again in "
                                  f"{wait:.0f}s")
            return
        record = TxtRecord(name, parsed.value, node.id, node_name)
        try:
            await asyncio.wait_for(provider.set_txt(record), PROVIDER_TIMEOUT)
        except Dns01Error as exc:
            log.warning("DNS-01 provider %s refused %s for node %d: %s", provider.name, name,
                        node.id, exc)
            await _say(resp, 502, f"DNS-01 provider {provider.name}: {exc}")
            return
        except TimeoutError:
            log.warning("DNS-01 provider %s took over %.0fs for %s", provider.name,
                        PROVIDER_TIMEOUT, name)
            await _say(resp, 504, f"DNS-01 provider {provider.name} did not answer in time")
            return
        except Exception:
            log.exception("DNS-01 provider %s failed for %s", provider.name, name)
            await _say(resp, 502, f"DNS-01 provider {provider.name} failed; see the server log")
            return
        log.info("DNS-01: %s set %s TXT for node %d", provider.name, name, node.id)
        await resp.send(200, b"{}", "application/json")


async def _say(resp: ResponseWriter, status: int, message: str) -> None:
    await resp.send(status, f"{message}\n".encode(), TEXT)
