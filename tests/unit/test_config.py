from __future__ import annotations

from pathlib import Path

import pytest

from meshscale.configload import apply_env, build_config, load_config
from meshscale.configvalues import parse_cli_address, parse_duration
from meshscale.contributions import ConfigSection
from meshscale.errors import ConfigError


def test_defaults_match_the_issue() -> None:
    c = build_config({})
    assert c.listen_addr == "127.0.0.1:8080"
    assert c.prefixes.v4 == "100.64.0.0/10" and c.prefixes.v6 == "fd7a:115c:a1e0::/48"
    assert c.database.type == "sqlite"
    assert c.derp.urls == ()  # never Tailscale's public DERP servers by default


@pytest.mark.parametrize(
    ("raw", "path", "reason"),
    [
        ({"listen_adr": "x"}, "listen_adr", "unknown key"),
        ({"derp": {"server": {"region_id": "x"}}}, "derp.server.region_id", "integer"),
        ({"prefixes": {"v4": "100.64.0.1/10"}}, "prefixes.v4", "invalid IP prefix"),
        ({"prefixes": {"v4": "fd7a::/48"}}, "prefixes.v4", "IPv4"),
        ({"node": {"expiry": "soon"}}, "node.expiry", "duration"),
        ({"dns": {"extra_records": [{"name": "a", "type": "MX", "value": "x"}]}},
         "dns.extra_records[0].type", "A or AAAA"),
        ({"dns": {"nameservers": {"global": "1.1.1.1"}}}, "dns.nameservers.global", "list"),
        ({"listen_addr": "localhost"}, "listen_addr", "host:port"),
        ({"log": {"level": "loud"}}, "log.level", "debug"),
        ({"cli": {"address": "http://hs.example.com:8080"}}, "cli.address", "HTTPS only"),
        ({"cli": {"address": "hs.example.com:http"}}, "cli.address", "host:port"),
        ({"cli": {"timeout": "0s"}}, "cli.timeout", "greater than zero"),
    ],
)
def test_invalid_keys_are_refused_with_their_path(raw: dict, path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    assert err.value.path == path
    assert reason in err.value.reason


def test_headscale_keys_we_do_not_use_are_accepted_with_a_notice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = build_config({"grpc_listen_addr": "127.0.0.1:50443", "grpc_allow_insecure": False,
                      "disable_check_updates": True})
    assert c.listen_addr == "127.0.0.1:8080"
    assert c.notices == (
        "grpc_listen_addr, grpc_allow_insecure: ignored (headscale's gRPC API; meshscale's CLI "
        "talks to the server over unix_socket, or to cli.address over HTTPS)",
        "disable_check_updates: ignored (update checks; meshscale never checks for updates)")
    assert caplog.text == ""  # shown by serve and configtest only, not on every load


def test_headscale_switches_that_are_off_here_warn_only_when_on() -> None:
    # headscale's example config carries database.debug: false; only true gets a notice.
    assert build_config({"database": {"debug": False}}).notices == ()
    assert build_config({"database": {"debug": True}}).notices == (
        "database.debug: ignored (headscale's SQL query log; meshscale logs no SQL "
        "statements)",)
    with pytest.raises(ConfigError) as err:
        build_config({"database": {"debug": "yes"}})
    assert err.value.path == "database.debug"


def test_durations() -> None:
    assert parse_duration("90s", "x") == 90
    assert parse_duration("1h30m", "x") == 5400
    assert parse_duration("180d", "x") == 180 * 86400
    assert parse_duration(0, "x") == 0


def test_environment_overrides_single_keys(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("listen_addr: 127.0.0.1:1\ndatabase:\n  sqlite:\n    path: a.db\n")
    env = {
        "MESHSCALE_LISTEN_ADDR": "127.0.0.1:2",
        "MESHSCALE_DATABASE_SQLITE_PATH": "/tmp/b.db",
        "MESHSCALE_DNS_MAGIC_DNS": "false",
        "MESHSCALE_UNRELATED": "ignored",
    }
    c = load_config(str(f), environ=env)
    assert c.listen_addr == "127.0.0.1:2"
    assert c.database.sqlite.path == "/tmp/b.db"
    assert c.dns.magic_dns is False
    assert apply_env({}, {"MESHSCALE_DERP_SERVER_REGION_ID": "901"}) == {
        "derp": {"server": {"region_id": 901}}
    }


def test_yaml_errors_point_at_the_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("listen_addr: 127.0.0.1:1\nprefixes: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(f), environ={})
    assert str(f) in err.value.path and ":3:" in err.value.path


def test_plugin_sections_are_parsed_by_their_plugin() -> None:
    def parse(raw: dict, path: str) -> dict:
        if "url" not in raw:
            raise ConfigError(f"{path}.url", "required")
        return raw

    section = ConfigSection("webhooks", parse)
    c = build_config({"webhooks": {"url": "http://x"}}, [section])
    assert c.section("webhooks") == {"url": "http://x"}
    with pytest.raises(ConfigError, match=r"webhooks\.url: required"):
        build_config({"webhooks": {}}, [section])


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [("hs.example.com", "hs.example.com", 443), ("hs.example.com:8443", "hs.example.com", 8443),
     ("https://hs.example.com/", "hs.example.com", 443), ("[::1]:50443", "::1", 50443),
     ("::1", "::1", 443), ("https://127.0.0.1:8443", "127.0.0.1", 8443)],
)
def test_cli_address_is_headscales_host_port_or_an_https_url(
    address: str, host: str, port: int) -> None:
    assert parse_cli_address(address) == (host, port)
    assert build_config({"cli": {"address": address}}).cli.address == address


def test_workers_bound_the_request_body(tmp_path: Path) -> None:
    """A request travels to the owner as one worker message: a larger body limit is refused
    up front rather than failing each big request with a 500."""
    f = tmp_path / "c.yaml"
    f.write_text("workers: 2\nlimits:\n  max_body_bytes: 16777216\n"
                 "  max_connection_body_bytes: 16777216\n")
    with pytest.raises(ConfigError, match=r"limits\.max_body_bytes") as err:
        load_config(str(f), environ={})
    assert "workers" in str(err.value)
    f.write_text("workers: 0\nlimits:\n  max_body_bytes: 16777216\n"
                 "  max_connection_body_bytes: 16777216\n")
    assert load_config(str(f), environ={}).limits.max_body_bytes == 16 << 20
    f.write_text("workers: 2\n")  # the default limit fits
    assert load_config(str(f), environ={}).workers == 2
