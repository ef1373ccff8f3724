"""DNS settings reaching real tailscaled v1.102.5, in the netns, and answered by its own resolver
(100.100.100.100, asked with ``tailscale dns query``).

Two tiny DNS servers (tests/interop/dnsserver.py) stand for a company's split-DNS resolver and
the global nameservers: a query shows which one the client sent it to. The extra records file
is edited while the client runs; the new value resolves within seconds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.interop.dnsserver import dns_server
from tests.interop.realclients import MeshscaleProcess, wait_for
from tests.interop.tailscaled import BASE_DOMAIN, Tailscaled, answers, dns_query, start_all, up_all

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]


def write_records(path: Path, records: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    os.replace(tmp, path)


def dns_status(node: Tailscaled) -> dict[str, Any]:
    result: dict[str, Any] = node.json("dns", "status", "--all", "--json")
    return result


def test_nameservers_split_dns_search_domains_and_extra_records(
        tmp_path: Path, tailscaled: Callable[..., Tailscaled]) -> None:
    records = tmp_path / "records.json"
    write_records(records, [{"name": f"grafana.{BASE_DOMAIN}", "type": "A",
                             "value": "100.100.7.7"}])
    with dns_server("10.1.2.3") as corp, dns_server("10.9.9.9") as upstream:
        server = MeshscaleProcess(
            tmp_path, ["sqlite", "derp", "stun"],
            "dns:\n"
            "  override_local_dns: true\n"
            "  nameservers:\n"
            f"    global: ['127.0.0.1:{upstream.port}']\n"
            f"    split: {{corp.example: ['127.0.0.1:{corp.port}']}}\n"
            "  search_domains: [corp.example]\n"
            f"  extra_records: [{{name: wiki.{BASE_DOMAIN}, type: A, value: 100.100.8.8}}]\n"
            f"  extra_records_path: {records}\n")
        server.start()
        try:
            server.cli("users", "create", "alice")
            key = server.cli("preauthkeys", "create", "-u", "alice", "--reusable", "-o", "json")
            a, b = tailscaled("alpha"), tailscaled("beta")
            start_all([a, b])
            up_all([a, b], server.url, key["key"])
            beta_v4 = server.nodes()["beta"]["ip_addresses"][0]

            # What the client holds, as `tailscale dns status` shows it.
            st = dns_status(a)
            assert [r["Addr"] for r in st["Resolvers"]] == [f"127.0.0.1:{upstream.port}"], st
            routes = {k.rstrip("."): [r["Addr"] for r in v]
                      for k, v in (st["SplitDNSRoutes"] or {}).items()}
            assert routes == {"corp.example": [f"127.0.0.1:{corp.port}"]}, st
            assert st["SearchDomains"] == ["corp.example", BASE_DOMAIN], st  # sorted
            assert {(r["Name"], r["Value"]) for r in st["ExtraRecords"]} == {
                (f"wiki.{BASE_DOMAIN}", "100.100.8.8"), (f"grafana.{BASE_DOMAIN}", "100.100.7.7")}
            assert st["CurrentTailnet"]["MagicDNSEnabled"] is True, st

            # The client's resolver answers: MagicDNS names and extra records itself, split
            # domains through the company resolver, everything else through the global one.
            assert answers(dns_query(a, f"beta.{BASE_DOMAIN}")) == [beta_v4]
            assert answers(dns_query(a, f"wiki.{BASE_DOMAIN}")) == ["100.100.8.8"]
            assert answers(dns_query(a, f"grafana.{BASE_DOMAIN}")) == ["100.100.7.7"]
            assert answers(dns_query(a, "jira.corp.example")) == ["10.1.2.3"]
            assert "jira.corp.example." in corp.asked and "jira.corp.example." not in upstream.asked
            assert answers(dns_query(a, "www.example.org")) == ["10.9.9.9"]
            assert "www.example.org." in upstream.asked and "www.example.org." not in corp.asked

            # The records file changes while the clients run: the new value resolves within
            # seconds (the server polls the file every second and sends a DNSConfig delta).
            write_records(records, [{"name": f"grafana.{BASE_DOMAIN}", "type": "A",
                                     "value": "100.100.7.8"},
                                    {"name": f"new.{BASE_DOMAIN}", "type": "A",
                                     "value": "100.100.9.9"}])
            started = time.monotonic()
            for node in (a, b):
                wait_for(lambda n=node: answers(dns_query(n, f"grafana.{BASE_DOMAIN}"))
                         == ["100.100.7.8"], 10, f"the new record on {node.name}")
            took = time.monotonic() - started
            assert answers(dns_query(b, f"new.{BASE_DOMAIN}")) == ["100.100.9.9"]
            print(f"extra record change resolved on both clients after {took:.1f} s")
            assert took < 5, took

            # A broken file is refused (the log says where) and the records in force stay.
            records.write_text('[{"name": "x", "value": "nope"}]')
            wait_for(lambda: "extra records refused" in server.log.read_text(), 10,
                     "the refusal in the server log")
            assert f"{records}: [0].value: not an IP address: 'nope'" in server.log.read_text()
            assert answers(dns_query(a, f"grafana.{BASE_DOMAIN}")) == ["100.100.7.8"]

            # Set through the admin API (meshscale dns set): stored over the config file's
            # section, sent to the running clients at once.
            server.cli("dns", "set", "--search-domains", "lab.example", "--extra-record",
                       f"api.{BASE_DOMAIN}=100.100.6.6")
            # (dns status lists the search domains sorted)
            wait_for(lambda: dns_status(a)["SearchDomains"] == ["lab.example", BASE_DOMAIN],
                     10, "the new search domain on alpha")
            assert answers(dns_query(a, f"api.{BASE_DOMAIN}")) == ["100.100.6.6"]
            assert dns_query(a, f"wiki.{BASE_DOMAIN}")["ResponseCode"] == "RCodeNameError"
            # A new base domain renames every node: the clients get new full maps.
            server.cli("dns", "set", "--base-domain", "tailnet.example.org",
                       "--no-extra-records")
            wait_for(lambda: answers(dns_query(a, "beta.tailnet.example.org")) == [beta_v4],
                     10, "beta under the new base domain")
            assert a.status()["Self"]["DNSName"] == "alpha.tailnet.example.org."
            assert b.peers()["alpha"]["DNSName"] == "alpha.tailnet.example.org."
            # And back to the config file's section.
            server.cli("dns", "reset", "--force")
            wait_for(lambda: answers(dns_query(a, f"wiki.{BASE_DOMAIN}")) == ["100.100.8.8"],
                     10, "the config file's records again")
            assert answers(dns_query(b, f"alpha.{BASE_DOMAIN}")) == [
                server.nodes()["alpha"]["ip_addresses"][0]]
        finally:
            server.stop()
