"""DNS settings at run time through a real ``meshscale serve``: ``/api/v1/dns`` (meshscale's
extension, with an API key), the admin socket's ``/v1/dns`` behind ``meshscale dns``, stored in
the database over the config file's section, kept across a restart, refused with the field
named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.cli.serverproc import Serve, meshscale, write_config
from tests.cli.test_rest_api import Api


def test_dns_settings_through_the_rest_api_and_the_cli(tmp_path: Path) -> None:
    config = write_config(tmp_path, dns={"base_domain": "ts.example.com",
                                         "nameservers": {"global": ["9.9.9.9"]}})
    base = yaml.safe_load(config.read_text())["server_url"]

    def cli(*args: str, ok: bool = True) -> Any:
        result = meshscale("-c", str(config), *args)
        assert (result.returncode == 0) is ok, result.stderr
        return result

    def cli_json(*args: str) -> Any:
        return json.loads(cli(*args, "-o", "json").stdout)

    server = Serve(config)
    try:
        api = Api(base, cli("apikeys", "create").stdout.strip())
        assert api.call("GET", "/api/v1/dns", key="-")[0] == 401

        # The config file's section, as the server holds it.
        status, body = api.call("GET", "/api/v1/dns")
        assert status == 200 and body["source"] == "config" and body["updatedAt"] is None
        assert body["dns"]["nameservers"] == {"global": ["9.9.9.9"], "split": {}}
        assert body["dns"]["base_domain"] == "ts.example.com"

        # PUT stores a whole section; left-out keys take their defaults.
        wanted = {"base_domain": "ts.example.com", "override_local_dns": True,
                  "nameservers": {"global": ["1.1.1.1", "https://dns.nextdns.io/abc123"],
                                  "split": {"corp.example.com": ["10.0.0.53"]}},
                  "search_domains": ["corp.example.com"],
                  "extra_records": [{"name": "grafana.ts.example.com", "type": "A",
                                     "value": "100.64.0.3"}]}
        status, body = api.call("PUT", "/api/v1/dns", {"dns": wanted})
        assert status == 200, body
        assert body["source"] == "database" and body["updatedAt"].endswith("Z")
        assert body["dns"] == {**wanted, "magic_dns": True}
        assert cli_json("dns", "show")["dns"] == body["dns"]

        # Bad values: 400 naming every field at fault, nothing changed.
        status, body = api.call("PUT", "/api/v1/dns", {"dns": {
            "nameservers": {"global": ["1.1.1.1", "one.one.one.one"]},
            "extra_records": [{"name": "x.example", "type": "A", "value": "fd7a::1"}]}})
        assert status == 400 and body["code"] == 3, body
        assert body["message"] == (
            "dns.nameservers.global[1]: expected an IP address, IP:port or an https:// URL, "
            "got 'one.one.one.one'; dns.extra_records[0].value: an A record needs an IPv4 "
            "address, got 'fd7a::1'")
        status, body = api.call("PUT", "/api/v1/dns", {"dns": {"magic_dns": "yes"}})
        assert (status, body["message"]) == (400, "dns.magic_dns: expected true or false, "
                                                   "got 'yes'")
        status, body = api.call("PUT", "/api/v1/dns", {"dns": {"extra_records_path": "/x"}})
        assert status == 400 and body["message"].startswith("dns.extra_records_path: set in "
                                                            "the config file only")
        assert api.call("PUT", "/api/v1/dns", {"nameservers": []})[0] == 400
        assert api.call("GET", "/api/v1/dns")[1]["dns"]["nameservers"]["global"][0] == "1.1.1.1"

        # The CLI changes single settings, keeping the others.
        shown = cli_json("dns", "set", "--nameservers", "8.8.8.8,8.8.4.4",
                         "--split", "lab.example.com=10.1.0.53", "--extra-record",
                         "db.ts.example.com=fd7a:115c:a1e0::5")
        assert shown["dns"]["nameservers"] == {"global": ["8.8.8.8", "8.8.4.4"],
                                               "split": {"lab.example.com": ["10.1.0.53"]}}
        assert shown["dns"]["extra_records"] == [
            {"name": "db.ts.example.com", "type": "AAAA", "value": "fd7a:115c:a1e0::5"}]
        assert shown["dns"]["search_domains"] == ["corp.example.com"]  # kept
        refused = cli("dns", "set", "--search-domains", "trailing.dot.", ok=False)
        assert refused.stderr.strip() == ("meshscale: dns.search_domains[0]: not a DNS name (no "
                                          "trailing dot): 'trailing.dot.'")
        text = cli("dns", "show").stdout
        assert text.startswith("# set through the admin API at ")
        assert "  - 8.8.8.8\n" in text and "base_domain: ts.example.com" in text

        # From a file (a config file's section as it is), then kept across a restart.
        section = tmp_path / "dns.yaml"
        section.write_text(yaml.safe_dump({"dns": {"base_domain": "tailnet.example.org",
                                                   "search_domains": ["a.example"]}}))
        cli("dns", "set", "-f", str(section))
        rc, log = server.stop()
        assert rc == 0, log
        server = Serve(config)
        body = api.call("GET", "/api/v1/dns")[1]
        assert body["source"] == "database"
        assert body["dns"]["base_domain"] == "tailnet.example.org"
        assert body["dns"]["nameservers"] == {"global": [], "split": {}}

        # DELETE (meshscale dns reset): the config file's section again.
        assert cli_json("dns", "reset", "--force")["source"] == "config"
        status, body = api.call("DELETE", "/api/v1/dns")
        assert status == 200 and body["dns"]["nameservers"]["global"] == ["9.9.9.9"]
    finally:
        rc, log = server.stop()
    assert rc == 0, log
