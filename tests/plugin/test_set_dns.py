"""``/machine/set-dns`` (``tailscale cert``'s DNS-01) on an in-process server with simulated
nodes: a node may set only its own ``_acme-challenge`` name, identified by its Noise session;
the record goes to the first DNS-01 provider (``meshscale_dns01_providers``) that serves it,
with a deadline and a per-node limit. The provider here keeps records in a dict, a plugin as a
third party would write it; contrib_plugins/meshscale-rfc2136 is tested against a real BIND."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from meshscale import hookimpl
from meshscale.config import Config
from meshscale.context import ServerContext
from meshscale.control import setdns
from meshscale.dns01 import Dns01Error, Dns01Provider, TxtRecord
from meshscale.server import Server
from meshscale.simclient import SimNode

pytestmark = pytest.mark.asyncio

Factory = Callable[..., Any]
DIGEST = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"  # RFC 8555 §8.4's shape: 43 base64url


class TableDNS:
    """A DNS-01 provider plugin serving one zone from a dict; ``fail`` makes it refuse."""

    name = "table"

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self.records: dict[str, list[str]] = {}
        self.fail = ""
        self.delay = 0.0

    @hookimpl
    def meshscale_dns01_providers(self, config: Config) -> Sequence[Dns01Provider]:
        return [self]

    def serves(self, name: str) -> bool:
        return name.endswith(".ts.example.com")

    async def set_txt(self, record: TxtRecord) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise Dns01Error(self.fail)
        self.records.setdefault(record.name, []).append(record.value)


async def setup(factory: Factory, base: str = "ts.example.com",
                provider: type[TableDNS] | None = TableDNS
                ) -> tuple[Server, TableDNS | None, dict[str, SimNode]]:
    plugins: list[Any] = ["sqlite"]
    table: TableDNS | None = None
    if provider:
        plugins.append(("table", provider))
    server: Server = await factory(plugins=plugins, dns={"base_domain": base})
    if provider:
        table = server.plugin("table")  # type: ignore[assignment]
    assert server.state is not None
    alice = server.state.create_user("alice")
    nodes = {}
    for name in ("laptop", "phone"):
        node = SimNode(name)
        await node.conn.connect("127.0.0.1", server.main_port)
        assert (await node.register(server.state.create_key(alice)[1]))["MachineAuthorized"]
        nodes[name] = node
    return server, table, nodes


async def set_dns(node: SimNode, name: str, value: str = DIGEST, rtype: str = "TXT",
                  key: str | None = None) -> tuple[int, bytes]:
    body = {"Version": 130, "NodeKey": key or node.node_key_text, "Name": name, "Type": rtype,
            "Value": value}
    return await node.conn.request("/machine/set-dns", body)


async def test_a_node_sets_its_own_challenge(meshscale_server_factory: Factory) -> None:
    _server, table, nodes = await setup(meshscale_server_factory, provider=TableDNS)
    assert table is not None
    laptop = nodes["laptop"]
    # With a provider, the node is told it may get a certificate for its own name.
    first = await laptop.open_stream().next()
    assert first is not None
    assert first["DNSConfig"]["CertDomains"] == ["laptop.ts.example.com"]
    assert await set_dns(laptop, "_acme-challenge.laptop.ts.example.com") == (200, b"{}")
    # The trailing dot and case do not matter; a second value (a wildcard) goes too.
    assert await set_dns(laptop, "_ACME-challenge.Laptop.ts.example.com.", "x" * 43) == \
        (200, b"{}")
    assert table.records == {"_acme-challenge.laptop.ts.example.com": [DIGEST, "x" * 43]}


async def test_only_its_own_name(meshscale_server_factory: Factory) -> None:
    _server, table, nodes = await setup(meshscale_server_factory)
    assert table is not None
    laptop, phone = nodes["laptop"], nodes["phone"]
    for name in ("_acme-challenge.phone.ts.example.com", "laptop.ts.example.com",
                 "_acme-challenge.ts.example.com", "_acme-challenge.x.laptop.ts.example.com",
                 "_acme-challenge.laptop.other.example"):
        status, body = await set_dns(laptop, name)
        assert status == 403 and b"only set its own ACME challenge" in body, (name, body)
    # Another machine's node key, even a real one, is not this session's.
    status, body = await set_dns(laptop, "_acme-challenge.phone.ts.example.com",
                                 key=phone.node_key_text)
    assert (status, body) == (403, b"NodeKey is not a node of this machine\n")
    assert table.records == {}


async def test_bad_requests(meshscale_server_factory: Factory) -> None:
    _server, table, nodes = await setup(meshscale_server_factory)
    laptop = nodes["laptop"]
    name = "_acme-challenge.laptop.ts.example.com"
    status, body = await set_dns(laptop, name, rtype="A")
    assert (status, body) == (400, b"record type 'A' is not supported; only TXT\n")
    for value in ("", "has space", 'quo"te', "a\nb", "x" * 256):
        status, body = await set_dns(laptop, name, value)
        assert status == 400 and b"not an ACME DNS-01 digest" in body, (value, body)
    status, body = await laptop.conn.request("/machine/set-dns", {"Name": 5})
    assert status == 400 and b"Name: expected a string" in body
    status, body = await laptop.conn.request("/machine/set-dns", b"[1")
    assert status == 400 and body.startswith(b"invalid JSON")
    assert table is not None and table.records == {}


async def test_provider_failures_reach_the_node(meshscale_server_factory: Factory,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _server, table, nodes = await setup(meshscale_server_factory)
    assert table is not None
    laptop = nodes["laptop"]
    name = "_acme-challenge.laptop.ts.example.com"
    table.fail = "the zone is frozen"
    assert await set_dns(laptop, name) == (502, b"DNS-01 provider table: the zone is frozen\n")
    table.fail, table.delay = "", 5.0
    monkeypatch.setattr(setdns, "PROVIDER_TIMEOUT", 0.2)
    assert await set_dns(laptop, name) == (504, b"DNS-01 provider table did not answer in "
                                                b"time\n")


async def test_rate_limited_per_node(meshscale_server_factory: Factory) -> None:
    _server, _table, nodes = await setup(meshscale_server_factory)
    name = "_acme-challenge.laptop.ts.example.com"
    statuses = [(await set_dns(nodes["laptop"], name))[0] for _ in range(setdns.BURST + 1)]
    assert statuses == [200] * setdns.BURST + [429]
    # Another node has its own allowance.
    assert (await set_dns(nodes["phone"], "_acme-challenge.phone.ts.example.com"))[0] == 200


async def test_without_a_provider_or_zone(meshscale_server_factory: Factory) -> None:
    _, _, nodes = await setup(meshscale_server_factory, provider=None)
    first = await nodes["laptop"].open_stream().next()
    assert first is not None and "CertDomains" not in first["DNSConfig"]
    status, body = await set_dns(nodes["laptop"], "_acme-challenge.laptop.ts.example.com")
    assert status == 501 and b"no DNS-01 provider on this server serves" in body
    # A provider that does not serve the base domain passes it on (here: to nobody).
    _, _, nodes = await setup(meshscale_server_factory, base="elsewhere.example")
    status, body = await set_dns(nodes["laptop"], "_acme-challenge.laptop.elsewhere.example")
    assert status == 501
