"""DNS settings change while clients stream: the extra records file, the admin API's stored
settings, SIGHUP; every open stream gets them, and holds what a fresh server sends."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshscale.configload import load_config
from meshscale.errors import ConfigError
from meshscale.pluginhost import PluginHost
from meshscale.server import Server
from meshscale.testing import make_config
from tests.plugin.oracle import Fleet

pytestmark = pytest.mark.asyncio


def write_records(path: Path, records: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path.write_text(text)


def key(server: Server) -> str:
    assert server.state is not None
    user = server.state.create_user("alice", email="alice@example.com")
    return server.state.create_key(user, reusable=True)[1]


@pytest.fixture
async def records(tmp_path: Path) -> Path:
    path = tmp_path / "records.json"
    write_records(path, [{"Name": "grafana.ts.example.com", "Type": "A", "Value": "100.64.0.3"}])
    return path


@pytest.fixture
async def server(meshscale_server_factory: Callable[..., Any], records: Path) -> Server:
    srv: Server = await meshscale_server_factory(
        plugins=["sqlite"],
        dns={"base_domain": "ts.example.com", "extra_records_path": str(records),
             "extra_records": [{"name": "static.ts.example.com", "type": "A",
                                "value": "100.64.0.9"}],
             "nameservers": {"global": ["9.9.9.9"]}})
    return srv


@pytest.fixture
async def fleet(server: Server) -> AsyncIterator[Fleet]:
    f = Fleet(server)
    yield f
    await f.close()


def names(fleet: Fleet, node_id: int) -> set[str]:
    m = fleet.maps[node_id]
    assert m.node is not None
    return {m.node["Name"], *(p["Name"] for p in m.peers.values())}


async def test_the_records_file_reaches_open_streams(server: Server, fleet: Fleet,
                                                     records: Path) -> None:
    k = key(server)
    a, b = await fleet.join(k, "alpha"), await fleet.join(k, "bravo")
    dns = fleet.maps[a].dns
    assert dns["FallbackResolvers"] == [{"Addr": "9.9.9.9"}]
    assert dns["ExtraRecords"] == [
        {"Name": "static.ts.example.com", "Type": "A", "Value": "100.64.0.9"},
        {"Name": "grafana.ts.example.com", "Type": "A", "Value": "100.64.0.3"}]

    write_records(records, [{"name": "grafana.ts.example.com", "type": "A",
                             "value": "100.64.0.4"}])
    assert server.dns is not None and server.dns.records_file is not None
    server.dns.records_file.poll()  # what the watch does every second
    await fleet.assert_matches_fresh()
    for node in (a, b):
        assert fleet.maps[node].dns["ExtraRecords"][1]["Value"] == "100.64.0.4"
    # One DNSConfig delta, nothing else: no full map was sent again.
    assert server.mapper is not None
    assert server.mapper.sessions[a].sent["full"] == 1

    messages = fleet.maps[a].messages
    write_text(records, '[{"name": "grafana.ts.example.com", "value": "not-an-ip"}]')
    server.dns.records_file.poll()
    await fleet.settle()  # the bad file changed nothing anywhere (a fresh server would refuse
    assert fleet.maps[a].dns["ExtraRecords"][1]["Value"] == "100.64.0.4"  # to start on it)
    assert fleet.maps[a].messages == messages  # (settle reads its marker, applies nothing)


async def test_settings_set_through_the_api_are_stored_and_sent(server: Server,
                                                               fleet: Fleet) -> None:
    k = key(server)
    a = await fleet.join(k, "alpha")
    assert server.dns is not None and server.storage is not None
    server.dns.set({"base_domain": "ts.example.com", "override_local_dns": True,
                    "nameservers": {"global": ["1.1.1.1"],
                                    "split": {"corp.example.com": ["10.0.0.53"]}},
                    "search_domains": ["corp.example.com"]})
    await fleet.assert_matches_fresh()  # a fresh server reads them from the database
    dns = fleet.maps[a].dns
    assert dns["Resolvers"] == [{"Addr": "1.1.1.1"}] and "FallbackResolvers" not in dns
    assert dns["Routes"] == {"corp.example.com": [{"Addr": "10.0.0.53"}]}
    assert dns["Domains"] == ["ts.example.com", "corp.example.com"]
    # The file's records still come on top of the stored settings (which have none).
    assert dns["ExtraRecords"] == [
        {"Name": "grafana.ts.example.com", "Type": "A", "Value": "100.64.0.3"}]
    stored = server.storage.load().settings["dns"]
    assert json.loads(stored.value)["nameservers"]["global"] == ["1.1.1.1"]
    assert server.dns.view()["source"] == "database"

    with pytest.raises(ConfigError, match=r"^dns.nameservers.global\[0\]: expected an IP"):
        server.dns.set({"nameservers": {"global": ["one.one"]}})
    with pytest.raises(ConfigError, match=r"^dns\.extra_records_path: set in the config file"):
        server.dns.set({"extra_records_path": "/etc/passwd"})
    assert json.loads(server.storage.load().settings["dns"].value)["nameservers"]["global"] \
        == ["1.1.1.1"]  # nothing changed

    server.dns.reset()
    await fleet.assert_matches_fresh()
    assert fleet.maps[a].dns["FallbackResolvers"] == [{"Addr": "9.9.9.9"}]
    assert "dns" not in server.storage.load().settings


async def test_a_new_base_domain_renames_every_node(server: Server, fleet: Fleet) -> None:
    k = key(server)
    a, b = await fleet.join(k, "alpha"), await fleet.join(k, "bravo")
    await fleet.settle()
    assert names(fleet, a) == {"alpha.ts.example.com.", "bravo.ts.example.com."}
    assert server.dns is not None
    server.dns.set({"base_domain": "tailnet.example.org"})
    await fleet.assert_matches_fresh()
    for node in (a, b):
        assert names(fleet, node) == {"alpha.tailnet.example.org.", "bravo.tailnet.example.org."}
        assert fleet.maps[node].domain == "tailnet.example.org"
        assert fleet.maps[node].dns["Domains"] == ["tailnet.example.org"]


async def test_sighup_reads_the_dns_section_again(tmp_path: Path) -> None:
    host = PluginHost()
    host.load(["sqlite"])
    base = make_config(tmp_path / "data", host)
    raw: dict[str, Any] = {"data_dir": str(base.data_path), "listen_addr": str(base.listen_addr),
                           "server_url": str(base.server_url), "plugins": ["sqlite"],
                           "derp": {"auto_update_enabled": False},
                           "dns": {"base_domain": "ts.example.com"}}
    path = tmp_path / "config.yaml"
    write_text(path, yaml.safe_dump(raw))
    server = Server(load_config(str(path), sections_for=lambda _n: host.hooks.config_sections()),
                    host)
    await server.start()
    fleet = Fleet(server)
    try:
        a = await fleet.join(key(server), "alpha")
        assert "Routes" not in fleet.maps[a].dns
        raw["dns"]["nameservers"] = {"split": {"corp.example.com": ["10.0.0.53"]}}
        write_text(path, yaml.safe_dump(raw))
        server.reload()
        await fleet.assert_matches_fresh()
        assert fleet.maps[a].dns["Routes"] == {"corp.example.com": [{"Addr": "10.0.0.53"}]}

        raw["dns"]["nameservers"] = {"split": {"corp.example.com": ["nope"]}}
        write_text(path, yaml.safe_dump(raw))
        server.reload()  # refused, logged; the settings in force stay
        await fleet.assert_matches_fresh()
        assert fleet.maps[a].dns["Routes"] == {"corp.example.com": [{"Addr": "10.0.0.53"}]}
    finally:
        await fleet.close()
        await server.stop()
