"""DNS settings: the tailcfg.DNSConfig they become (byte for byte, as Go's encoder writes
tailscale.com/tailcfg.DNSConfig), their checks, and the extra records file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from meshscale.configload import build_config
from meshscale.dns import model
from meshscale.dns.model import DnsConfig, ExtraRecord, NameserversConfig
from meshscale.dns.records import RecordsFile, parse_records
from meshscale.dns.render import dns_config, magic_dns_zones, reverse_zones
from meshscale.errors import ConfigError, config_problems


def wire(dns: DnsConfig, v4: str = "100.64.0.0/10", v6: str = "fd7a:115c:a1e0::/48") -> str:
    return json.dumps(dns_config(dns, v4, v6), separators=(",", ":"))


# -- rendering ------------------------------------------------------------------------------


def test_everything_set_renders_in_tailcfg_field_order() -> None:
    dns = DnsConfig(
        magic_dns=True, base_domain="ts.example.com", override_local_dns=True,
        nameservers=NameserversConfig(
            global_=("1.1.1.1", "2606:4700:4700::1111", "https://dns.nextdns.io/abc123"),
            split={"corp.example.com": ("10.0.0.53", "10.0.0.54"), "lab.example.": ()}),
        search_domains=("corp.example.com", "ts.example.com"),
        extra_records=(ExtraRecord("grafana.ts.example.com", "A", "100.64.0.3"),
                       ExtraRecord("v6.ts.example.com", "", "fd7a:115c:a1e0::3")))
    # Resolvers, Routes (keys sorted, no trailing dot, [] kept), Domains (base domain first,
    # no repeat), Proxied, ExtraRecords (Type left out when empty): tailcfg's order.
    assert wire(dns) == (
        '{"Resolvers":[{"Addr":"1.1.1.1"},{"Addr":"2606:4700:4700::1111"},'
        '{"Addr":"https://dns.nextdns.io/abc123"}],'
        '"Routes":{"corp.example.com":[{"Addr":"10.0.0.53"},{"Addr":"10.0.0.54"}],'
        '"lab.example":[]},'
        '"Domains":["ts.example.com","corp.example.com"],'
        '"Proxied":true,'
        '"ExtraRecords":[{"Name":"grafana.ts.example.com","Type":"A","Value":"100.64.0.3"},'
        '{"Name":"v6.ts.example.com","Value":"fd7a:115c:a1e0::3"}]}')


def test_without_override_the_nameservers_are_fallback_resolvers() -> None:
    dns = DnsConfig(nameservers=NameserversConfig(global_=("9.9.9.9",)))
    assert wire(dns) == ('{"FallbackResolvers":[{"Addr":"9.9.9.9"}],'
                         '"Domains":["meshscale.net"],"Proxied":true}')


def test_magic_dns_off_sends_no_proxied_and_no_base_domain() -> None:
    dns = DnsConfig(magic_dns=False, search_domains=("corp.example.com",))
    assert wire(dns) == '{"Domains":["corp.example.com"]}'
    assert wire(DnsConfig(magic_dns=False)) == "{}"


def test_reverse_zones_of_prefixes_the_client_does_not_know() -> None:
    # Tailscale's own ranges: the client serves their reverse zones by itself.
    assert magic_dns_zones("100.64.0.0/10", "fd7a:115c:a1e0::/48") == []
    assert magic_dns_zones("100.100.0.0/16", "fd7a:115c:a1e0:ab::/64") == []
    assert reverse_zones("10.20.0.0/15") == ["20.10.in-addr.arpa", "21.10.in-addr.arpa"]
    assert reverse_zones("192.168.7.0/24") == ["7.168.192.in-addr.arpa"]
    assert reverse_zones("fd00:1234::/30") == [f"{n}.3.2.1.0.0.d.f.ip6.arpa" for n in (4, 5, 6, 7)]
    assert wire(DnsConfig(), v4="10.20.0.0/15", v6="fd00::/8") == (
        '{"Routes":{"20.10.in-addr.arpa":[],"21.10.in-addr.arpa":[],"d.f.ip6.arpa":[]},'
        '"Domains":["meshscale.net"],"Proxied":true}')
    assert wire(DnsConfig(magic_dns=False), v4="10.20.0.0/15") == "{}"


# -- checks ---------------------------------------------------------------------------------


def problems(raw: dict[str, Any], server_url: str = "http://127.0.0.1:8080") -> list[str]:
    try:
        build_config({"server_url": server_url, "dns": raw})
    except ConfigError as exc:
        return [str(p) for p in config_problems(exc)]
    return []


def test_good_settings_pass() -> None:
    assert problems({
        "base_domain": "ts.example.com", "override_local_dns": True,
        "nameservers": {"global": ["1.1.1.1", "[::1]:5353", "127.0.0.1:5353",
                                   "https://dns.nextdns.io/abc"],
                        "split": {"corp.example.com": ["10.0.0.53"], "_tcp.lab.": []}},
        "search_domains": ["corp.example.com"],
        "extra_records": [{"name": "x.ts.example.com.", "type": "AAAA", "value": "fd7a::1"},
                          {"name": "y.ts.example.com", "value": "100.64.0.9"}],
    }) == []


@pytest.mark.parametrize(("raw", "expected"), [
    ({"nameservers": {"global": ["1.1.1"]}},
     "dns.nameservers.global[0]: expected an IP address, IP:port or an https:// URL, got '1.1.1'"),
    ({"nameservers": {"global": ["tls://dns.example"]}}, "dns.nameservers.global[0]: expected"),
    ({"nameservers": {"global": ["::1:53x"]}}, "dns.nameservers.global[0]: expected"),
    ({"nameservers": {"split": {"corp.example.com": ["10.0.0.53", "nope"]}}},
     "dns.nameservers.split.corp.example.com[1]: expected an IP address"),
    ({"nameservers": {"split": {"bad domain": ["10.0.0.53"]}}},
     "dns.nameservers.split.bad domain: not a DNS name: 'bad domain'"),
    ({"nameservers": {"split": {".corp.example": []}}},
     "dns.nameservers.split..corp.example: not a DNS name"),
    ({"override_local_dns": True},
     "dns.nameservers.global: must not be empty when dns.override_local_dns is true"),
    ({"search_domains": ["ok.example", "trailing.dot."]},
     "dns.search_domains[1]: not a DNS name (no trailing dot): 'trailing.dot.'"),
    ({"base_domain": "Ts.Example.com"}, "dns.base_domain: not a valid DNS name"),
    ({"base_domain": ""}, "dns.base_domain: required when dns.magic_dns is true"),
    ({"extra_records": [{"name": "a.example", "type": "MX", "value": "x"}]},
     "dns.extra_records[0].type: must be A or AAAA, got 'MX'"),
    ({"extra_records": [{"name": "a.example", "type": "A", "value": "fd7a::1"}]},
     "dns.extra_records[0].value: an A record needs an IPv4 address, got 'fd7a::1'"),
    ({"extra_records": [{"name": "a.example", "type": "AAAA", "value": "100.64.0.1"}]},
     "dns.extra_records[0].value: an AAAA record needs an IPv6 address"),
    ({"extra_records": [{"name": "a..example", "type": "A", "value": "100.64.0.1"}]},
     "dns.extra_records[0].name: not a DNS name: 'a..example'"),
    ({"extra_records": [{"name": "a.example", "type": "A"}]},
     "dns.extra_records[0].value: not an IP address: ''"),
])
def test_bad_settings_are_refused_naming_the_key(raw: dict[str, Any], expected: str) -> None:
    found = problems(raw)
    assert any(p.startswith(expected) for p in found), found


def test_the_server_url_must_stay_outside_the_base_domain() -> None:
    (found,) = problems({"base_domain": "example.com"}, "https://hs.example.com")
    assert found.startswith("dns.base_domain: server_url's host hs.example.com is inside "
                            "example.com")
    assert problems({"base_domain": "ts.example.com"}, "https://hs.example.com") == []


def test_limits() -> None:
    many = [f"10.0.{i // 256}.{i % 256}" for i in range(model.MAX_RESOLVERS + 1)]
    assert problems({"nameservers": {"global": many}}) == [
        f"dns.nameservers.global: at most {model.MAX_RESOLVERS} resolvers"]


# -- the extra records file -----------------------------------------------------------------


def test_records_file_takes_tailcfg_and_headscale_spellings() -> None:
    data = (b'[{"Name": "a.example.com", "Type": "A", "Value": "100.64.0.1"},\n'
            b' {"name": "b.example.com", "type": "AAAA", "value": "fd7a::2"},\n'
            b' {"name": "c.example.com", "value": "100.64.0.3"}]')
    assert parse_records(data, "r.json") == (
        ExtraRecord("a.example.com", "A", "100.64.0.1"),
        ExtraRecord("b.example.com", "AAAA", "fd7a::2"),
        ExtraRecord("c.example.com", "", "100.64.0.3"))
    assert parse_records(b"[]", "r.json") == ()


@pytest.mark.parametrize(("data", "expected"), [
    (b'[{"name": "a.example", "value": "100.64.0.1"},\n {"name": }]',
     "r.json:2:11: invalid JSON: Expecting value"),
    (b'{"name": "a"}', "r.json: expected a JSON list of records"),
    (b'[{"name": "a.example", "type": "A", "value": "1.2.3"}]',
     "r.json: [0].value: not an IP address: '1.2.3'"),
    (b'[{"name": "a.example", "value": "1.2.3.4"}, {"name": "b", "ttl": "3"}]',
     "r.json: [1].ttl: unknown field (name, type, value)"),
    (b'[{"name": "a.example"}]', "r.json: [0]: a record needs a name and a value"),
    (b'[{"name": "a.example", "value": 7}]', "r.json: [0].value: expected a string"),
    (b"\xff", "r.json: not UTF-8 text"),
])
def test_a_bad_records_file_is_refused_with_its_location(data: bytes, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_records(data, "r.json")
    assert str(err.value).startswith(expected), str(err.value)


def write(path: Path, records: list[dict[str, str]] | str) -> None:
    """Write as config tools do: a new file renamed into place."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(records if isinstance(records, str) else json.dumps(records))
    os.replace(tmp, path)


def test_records_file_changes_are_picked_up_and_bad_ones_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "records.json"
    write(path, [{"name": "a.example", "type": "A", "value": "100.64.0.1"}])
    seen: list[tuple[ExtraRecord, ...]] = []
    rf = RecordsFile(path, seen.append)
    assert rf.load() == (ExtraRecord("a.example", "A", "100.64.0.1"),)
    assert rf.poll() is False and seen == []  # nothing changed on disk

    write(path, [{"name": "a.example", "type": "A", "value": "100.64.0.2"}])
    assert rf.poll() is True
    assert seen == [(ExtraRecord("a.example", "A", "100.64.0.2"),)]

    caplog.set_level(logging.ERROR)
    write(path, '[{"name": "a.example", "type": "A", "value": "100.64.0.300"}]')
    assert rf.poll() is False
    assert rf.records == (ExtraRecord("a.example", "A", "100.64.0.2"),)  # kept
    assert [r.getMessage() for r in caplog.records] == [
        "extra records refused, keeping the 1 records read before: "
        f"{path}: [0].value: not an IP address: '100.64.0.300'"]
    write(path, '[{"name": "a.example", "type": "A", "value": "100.64.0.300"} ]')
    rf.poll()
    assert len(caplog.records) == 1  # the same problem is logged once

    path.write_text("")  # a writer truncated it and has not written yet
    assert rf.poll() is False and rf.records[0].value == "100.64.0.2"
    path.unlink()
    assert rf.poll() is False and rf.records[0].value == "100.64.0.2"
    assert "is gone; keeping the 1 records read before" in caplog.records[-1].getMessage()

    write(path, [])
    assert rf.poll() is True and rf.records == () and seen[-1] == ()
