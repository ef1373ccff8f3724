"""meshscale-rfc2136, installed and enabled by config alone, against a real BIND (tests/bind9.py)
and an in-process meshscale server (``meshscale_server_factory``) with simulated nodes: a node's
``/machine/set-dns`` ends as a TXT record BIND serves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from bind9 import Named, named
from meshscale.errors import ConfigError
from meshscale.simclient import SimNode

from meshscale_rfc2136.settings import parse

Factory = Callable[..., Any]
ONE = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
TWO = "bWVzaHNjYWxlLXdpbGRjYXJkLWNoYWxsZW5nZS12YWw"


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[Named]:
    with named(tmp_path / "named") as server:
        yield server


def section(bind: Named, **extra: Any) -> dict[str, Any]:
    return {"server": "127.0.0.1", "port": bind.port, "zone": bind.zone,
            "tsig_key_name": bind.key_name, "tsig_secret": bind.secret, **extra}


async def laptop(factory: Factory, bind: Named, **extra: Any) -> tuple[Any, SimNode]:
    server = await factory(plugins=["sqlite", "rfc2136"], dns={"base_domain": bind.zone},
                           rfc2136=section(bind, **extra))
    user = server.state.create_user("alice")
    node = SimNode("laptop")
    await node.conn.connect("127.0.0.1", server.main_port)
    assert (await node.register(server.state.create_key(user)[1]))["MachineAuthorized"]
    return server, node


async def set_dns(node: SimNode, name: str, value: str) -> tuple[int, bytes]:
    return await node.conn.request("/machine/set-dns", {
        "Version": 130, "NodeKey": node.node_key_text, "Name": name, "Type": "TXT",
        "Value": value})


def test_the_entry_point_is_installed() -> None:
    (ep,) = [e for e in metadata.entry_points(group="meshscale") if e.name == "rfc2136"]
    assert ep.value == "meshscale_rfc2136:Rfc2136Plugin"


async def test_challenge_records_reach_bind(meshscale_server_factory: Factory,
                                            bind: Named) -> None:
    server, node = await laptop(meshscale_server_factory, bind)
    name = f"_acme-challenge.laptop.{bind.zone}"
    assert bind.txt(name) == []
    assert await set_dns(node, name + ".", ONE) == (200, b"{}")
    assert bind.txt(name) == [ONE]
    # A second value (the wildcard's) is added beside the first.
    assert await set_dns(node, name, TWO) == (200, b"{}")
    assert bind.txt(name) == sorted([ONE, TWO])
    # Values older than `keep` go with the next update.
    provider = server.plane.set_dns.providers[0]
    provider.added[name] = {v: t - 7200 for v, t in provider.added[name].items()}
    assert await set_dns(node, name, ONE) == (200, b"{}")
    assert bind.txt(name) == [ONE]
    # BIND's own log shows the updates it applied, signed with the key.
    log = bind.log.read_text()
    assert f"/key meshscale: updating zone '{bind.zone}/IN': deleting an RR at {name} TXT" in log


async def test_a_wrong_key_is_refused_by_bind(meshscale_server_factory: Factory,
                                              bind: Named) -> None:
    wrong = "c2VjcmV0LXRoYXQtYmluZC1kb2VzLW5vdC1rbm93LTEyMzQ1Njc4OTA="
    _, node = await laptop(meshscale_server_factory, bind, tsig_secret=wrong)
    name = f"_acme-challenge.laptop.{bind.zone}"
    status, body = await set_dns(node, name, ONE)
    assert status == 502 and body.startswith(b"DNS-01 provider rfc2136: the DNS server "), body
    assert bind.txt(name) == []


async def test_a_dead_server(meshscale_server_factory: Factory, bind: Named) -> None:
    from meshscale.ports import free_port

    server = await meshscale_server_factory(
        plugins=["sqlite", "rfc2136"], dns={"base_domain": bind.zone},
        rfc2136={**section(bind), "port": free_port(), "timeout": "1s"})
    user = server.state.create_user("alice")
    node = SimNode("laptop")
    await node.conn.connect("127.0.0.1", server.main_port)
    assert (await node.register(server.state.create_key(user)[1]))["MachineAuthorized"]
    status, body = await set_dns(node, f"_acme-challenge.laptop.{bind.zone}", ONE)
    assert status == 502 and b"did not take the update" in body, body


@pytest.mark.parametrize(("raw", "where"), [
    ({}, "rfc2136.server"),
    ({"server": "dns.example.com"}, "rfc2136.server"),
    ({"server": "127.0.0.1"}, "rfc2136.zone"),
    ({"server": "127.0.0.1", "zone": "x.example"}, "rfc2136.tsig_key_name"),
    ({"server": "127.0.0.1", "zone": "x.example", "tsig_key_name": "k"},
     "rfc2136.tsig_secret"),
    ({"server": "127.0.0.1", "zone": "x.example", "tsig_key_name": "k",
      "tsig_secret": "not base64!"}, "rfc2136.tsig_secret"),
    ({"server": "127.0.0.1", "zone": "x.example", "tsig_key_name": "k", "tsig_secret": "YQ==",
      "tsig_algorithm": "md5"}, "rfc2136.tsig_algorithm"),
    ({"server": "127.0.0.1", "zone": "x.example", "tsig_key_name": "k", "tsig_secret": "YQ==",
      "tsig_secret_path": "/nonexistent"}, "rfc2136.tsig_secret"),
    ({"server": "127.0.0.1", "zone": "x.example", "tsig_key_name": "k",
      "tsig_secret_path": "/nonexistent"}, "rfc2136.tsig_secret_path"),
    ({"server": "127.0.0.1", "zne": "x"}, "rfc2136.zne"),
])
def test_config_refusals(raw: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(raw, "rfc2136")
    assert err.value.path == where, err.value
