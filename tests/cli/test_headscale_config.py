"""A headscale user's config.yaml loads: headscale's example configs of 0.26.1, 0.28.0, 0.29.2 and
its main branch pass ``configtest``; keys for features meshscale lacks warn once (serve and
configtest only), are refused when they switch such a feature on, and every problem of a file
shows in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshscale.cli.main import main
from meshscale.configload import build_config
from meshscale.errors import ConfigError, config_problems
from meshscale.mapper.mapper import config_caps

DATA = Path(__file__).parent / "data" / "headscale"
RELEASES = ["0.26.1", "0.28.0", "0.29.2", "main"]


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """headscale's absolute paths (/var/lib/headscale) stay as they are; meshscale's data
    directory and the embedded STUN port are the test's own."""
    monkeypatch.setenv("MESHSCALE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MESHSCALE_DERP_SERVER_STUN_LISTEN_ADDR", "127.0.0.1:0")
    return tmp_path


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("release", RELEASES)
def test_headscale_example_config_passes_configtest(
    release: str, sandbox: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = DATA / f"config-{release}.yaml"
    rc = main(["-c", str(path), "configtest"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith(f"config OK ({path})")
    warnings = err.splitlines()
    assert all(w.startswith("meshscale: warning: ") for w in warnings)
    # each ignored headscale feature is named once
    assert sum("database.gorm" in w for w in warnings) == 1
    assert sum("node.routes.ha" in w for w in warnings) == (release in ("0.29.2", "main"))
    assert sum("grpc_listen_addr" in w for w in warnings) == (release != "main")
    if release in ("0.26.1", "0.28.0"):  # renamed in 0.29
        assert ("meshscale: warning: ephemeral_node_inactivity_timeout: headscale's old name "
                "for node.ephemeral.inactivity_timeout; read as node.ephemeral.inactivity_timeout"
                in warnings)


@pytest.mark.parametrize("release", RELEASES)
def test_headscale_example_values_mean_the_same(release: str) -> None:
    raw = yaml.safe_load((DATA / f"config-{release}.yaml").read_text())
    c = build_config(raw)
    assert c.noise.private_key_path == "/var/lib/headscale/noise_private.key"
    assert c.database.sqlite.path == "/var/lib/headscale/db.sqlite"
    assert c.derp.server.enabled is False
    assert c.derp.urls == ("https://controlplane.tailscale.com/derpmap/default",)
    assert c.derp.update_frequency == {"0.26.1": 24 * 3600}.get(release, 3 * 3600)
    assert c.node.ephemeral.inactivity_timeout == 30 * 60
    assert c.dns.nameservers.global_[:2] == ("1.1.1.1", "1.0.0.1")
    assert c.dns.override_local_dns is raw["dns"]["override_local_dns"]
    assert c.dns.base_domain == "example.com"
    assert c.unix_socket == "/var/run/headscale/headscale.sock"
    assert c.taildrop.enabled is True and c.logtail.enabled is False
    assert c.auto_update.enabled is False


def test_switched_on_features_are_refused_all_in_one_run(
    sandbox: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    raw = yaml.safe_load((DATA / "config-0.29.2.yaml").read_text())
    raw["oidc"] = {"issuer": "https://sso.example.com", "client_id": "x", "client_secret": "y"}
    raw["trusted_proxies"] = ["10.0.0.0/8"]
    raw["listen_adr"] = "typo"
    raw["prefixes"]["v4"] = "100.64.0.1/10"
    path = write(sandbox, raw)
    rc = main(["-c", str(path), "configtest"])
    _, err = capsys.readouterr()
    problems = [line for line in err.splitlines() if "warning:" not in line]
    assert rc == 1
    assert problems == [
        "meshscale: invalid config: trusted_proxies: client addresses from proxy headers "
        "(X-Forwarded-For) is not available in meshscale; leave trusted_proxies empty",
        "meshscale: invalid config: oidc: OIDC login without the oidc plugin is not available in "
        "meshscale; add oidc to plugins (pip install 'meshscale[oidc]'), or remove the oidc "
        "section's issuer",
        "meshscale: invalid config: listen_adr: unknown key",
        "meshscale: invalid config: prefixes.v4: invalid IP prefix '100.64.0.1/10': "
        "100.64.0.1/10 has host bits set",
        f"configtest: 4 problem(s) with {path}",
    ]


def test_an_oidc_section_without_issuer_is_off() -> None:
    c = build_config({"oidc": {"only_start_if_oidc_is_available": True, "scope": ["openid"]}})
    assert any(n.startswith("oidc: ignored (OIDC login") for n in c.notices)


def test_semantic_problems_are_all_reported() -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"log": {"level": "loud", "format": "xml"},
                      "policy": {"mode": "git"}, "unix_socket_permission": "rwx"})
    assert [p.path for p in config_problems(err.value)] == [
        "policy.mode", "log.level", "log.format", "unix_socket_permission"]


def test_legacy_keys_are_read_as_todays() -> None:
    c = build_config({
        "acl_policy_path": "/etc/headscale/acl.hujson",
        "dns_config": {"magic_dns": True, "base_domain": "ts.example.com",
                       "nameservers": ["9.9.9.9"], "domains": ["corp.example.com"],
                       "restricted_nameservers": {"corp.example.com": ["10.0.0.53"]}},
        "ip_prefixes": ["fd7a:115c:a1e0::/48", "100.64.0.0/16"],
        "db_type": "postgres", "db_host": "db.internal", "db_port": 5433, "db_name": "hs",
        "db_user": "hs", "db_pass": "secret", "db_ssl": True,
    })
    assert c.policy.path == "/etc/headscale/acl.hujson"
    assert c.dns.base_domain == "ts.example.com" and c.dns.nameservers.global_ == ("9.9.9.9",)
    assert c.dns.search_domains == ("corp.example.com",)
    assert c.dns.nameservers.split == {"corp.example.com": ("10.0.0.53",)}
    assert (c.prefixes.v4, c.prefixes.v6) == ("100.64.0.0/16", "fd7a:115c:a1e0::/48")
    pg = c.database.postgres
    assert (c.database.type, pg.host, pg.port, pg.name, pg.user, pg.password, pg.ssl) == (
        "postgres", "db.internal", 5433, "hs", "hs", "secret", "require")
    assert any("acl_policy_path: headscale's old name for policy.path" in n for n in c.notices)
    # both names: today's wins, and the notice says so
    c = build_config({"acl_policy_path": "a.hujson", "policy": {"path": "b.hujson"}})
    assert c.policy.path == "b.hujson"


@pytest.mark.parametrize(("ssl", "mode"), [(False, "disable"), (True, "require"),
                                           ("verify-full", "verify-full"), ("prefer", "prefer"),
                                           ("true", "require")])
def test_postgres_pass_and_sslmode_strings(ssl: object, mode: str) -> None:
    c = build_config({"database": {"type": "postgres", "postgres": {
        "host": "/run/postgresql", "port": None, "name": "headscale", "user": "foo",
        "pass": "bar", "ssl": ssl}}})
    assert c.database.postgres.password == "bar"
    assert c.database.postgres.ssl == mode
    assert c.database.postgres.port is None


def test_admin_commands_do_not_repeat_the_warnings(
    sandbox: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = DATA / "config-0.29.2.yaml"
    rc = main(["-c", str(path), "nodes", "list"])  # no server: fails, but says nothing else
    _, err = capsys.readouterr()
    assert rc == 1
    assert err.splitlines() == [line for line in err.splitlines() if "ignored" not in line]
    assert "cannot reach the server" in err


def test_config_found_where_headscale_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    if Path("/etc/meshscale/config.yaml").exists() or Path("/etc/headscale").exists():
        pytest.fail("this machine has a config in /etc; the test needs it not to")
    home = tmp_path / "home"
    (home / ".headscale").mkdir(parents=True)
    found = home / ".headscale" / "config.yaml"
    found.write_text((DATA / "config-0.29.2.yaml").read_text())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("MESHSCALE_CONFIG", raising=False)
    monkeypatch.setenv("MESHSCALE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    rc = main(["configtest"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith(f"config OK ({found})")
    assert (f"meshscale: warning: config: none of meshscale's files (config.yaml, "
            f"{home}/.config/meshscale/config.yaml, /etc/meshscale/config.yaml) exists; read "
            f"headscale's {found}") in err.splitlines()


def test_config_switches_reach_the_self_node() -> None:
    assert config_caps(build_config({})) == {
        "default-auto-update": [False], "https://tailscale.com/cap/file-sharing": []}
    caps = config_caps(build_config({"taildrop": {"enabled": False},
                                     "auto_update": {"enabled": True},
                                     "randomize_client_port": True}))
    assert caps == {"default-auto-update": [True], "randomize-client-port": None}
