"""Refused policies say where: a path into the document, or a line for syntax errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshscale.errors import PolicyError
from meshscale.plugins.policy.engine import TailscalePolicyEngine
from meshscale.policy import PolicyNode, PolicyUser

USERS = [PolicyUser(1, "alice", "alice@example.com"), PolicyUser(2, "bob", "bob@example.com")]
NODES = [
    PolicyNode(1, "laptop", 1, ipv4="100.64.0.1", ipv6="fd7a:115c:a1e0::1"),
    PolicyNode(2, "server", None, frozenset({"tag:server"}), "100.64.0.2", "fd7a:115c:a1e0::2"),
]
BASE: dict[str, Any] = {
    "groups": {"group:eng": ["alice@example.com"]},
    "hosts": {"db": "10.0.0.5"},
    "tagOwners": {"tag:server": ["group:eng"]},
}


def refuse(policy: dict[str, Any] | str) -> PolicyError:
    text = policy if isinstance(policy, str) else json.dumps({**BASE, **policy})
    with pytest.raises(PolicyError) as err:
        TailscalePolicyEngine().check(text, USERS, NODES)
    return err.value


def accept(policy: dict[str, Any]) -> None:
    TailscalePolicyEngine().check(json.dumps({**BASE, **policy}), USERS, NODES)


def acl(*dst: str, src: str = "group:eng", **extra: Any) -> dict[str, Any]:
    return {"action": "accept", "src": [src], "dst": list(dst), **extra}


def test_valid_policy_is_accepted() -> None:
    accept({"acls": [acl("tag:server:22", "db:5432", "autogroup:self:*")]})


def test_bad_port_points_at_the_destination() -> None:
    err = refuse({"acls": [acl("tag:server:22"), acl("tag:server:22"), acl("db:80", "db:ssh")]})
    assert err.location == "acls[2].dst[1]"
    assert "ssh" in err.reason


@pytest.mark.parametrize("ports", ["0", "70000", "90-80", "1-2-3", "-1"])
def test_bad_ports(ports: str) -> None:
    assert refuse({"acls": [acl(f"db:{ports}")]}).location == "acls[0].dst[0]"


def test_unknown_tag_group_and_host() -> None:
    assert refuse({"acls": [acl("tag:nope:22")]}).location == "acls[0].dst[0]"
    assert refuse({"acls": [acl("db:22", src="group:nope")]}).location == "acls[0].src[0]"
    assert refuse({"acls": [acl("nohost:22")]}).location == "acls[0].dst[0]"


def test_bad_prefixes() -> None:
    err = refuse({"hosts": {"x": "10.0.0.0/33"}, "acls": []})
    assert err.location == 'hosts["x"]'
    err = refuse({"autoApprovers": {"routes": {"10.0.0.300/8": ["group:eng"]}}})
    assert err.location == 'autoApprovers.routes["10.0.0.300/8"]'


def test_unknown_fields_are_refused_where_they_are() -> None:
    assert refuse({"aclz": []}).location == "aclz"
    assert refuse({"acls": [acl("db:22", port=1)]}).location == "acls[0].port"
    err = refuse({"ssh": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:server"],
                           "users": ["root"], "colour": "blue"}]})
    assert err.location == "ssh[0].colour"


def test_field_names_are_case_insensitive_and_hash_keys_ignored() -> None:
    accept({"ACLs": [{"Action": "accept", "SRC": ["*"], "dst": ["*:*"], "#note": "x"}]})


def test_group_cycles_and_nesting_are_refused() -> None:
    err = refuse({"groups": {"group:a": ["group:b"], "group:b": ["group:a"]}, "acls": []})
    assert err.location == 'groups["group:b"]'
    assert "recursive" in err.reason
    err = refuse({"groups": {"group:outer": ["group:inner"], "group:inner": ["a@x"]}})
    assert err.location == 'groups["group:outer"]'


def test_autogroup_rules() -> None:
    assert "src" in refuse({"acls": [acl("db:22", src="autogroup:self")]}).reason
    assert refuse({"acls": [acl("autogroup:danger-all:*")]}).location == "acls[0].dst[0]"
    err = refuse({"acls": [acl("autogroup:self:22", src="tag:server")]})
    assert err.location == "acls[0].src"


def test_grant_errors() -> None:
    assert "ip and app" in refuse({"grants": [{"src": ["*"], "dst": ["*"]}]}).reason
    err = refuse({"grants": [{"src": ["*"], "dst": ["*"], "app": {"tailscale.com/cap/x": [{}]}}]})
    assert err.location == 'grants[0].app["tailscale.com/cap/x"]'
    err = refuse({"grants": [{"src": ["*"], "dst": ["0.0.0.0/0"], "ip": ["*"]}]})
    assert err.location == "grants[0].dst[0]"
    err = refuse({"grants": [{"src": ["*"], "dst": ["*"], "ip": ["tcp:0"]}]})
    assert err.location == "grants[0].ip[0]"


def test_ssh_errors() -> None:
    rule = {"action": "accept", "src": ["group:eng"], "dst": ["tag:server"], "users": ["root"]}
    assert refuse({"ssh": [{**rule, "action": "deny"}]}).location == "ssh[0].action"
    assert refuse({"ssh": [{**rule, "users": []}]}).location == "ssh[0].users"
    assert refuse({"ssh": [{**rule, "users": ["root", "*"]}]}).location == "ssh[0].users[1]"
    assert refuse({"ssh": [{**rule, "dst": ["db"]}]}).location == "ssh[0].dst[0]"
    err = refuse({"ssh": [{**rule, "action": "check", "checkPeriod": "-1m"}]})
    assert err.location == "ssh[0].checkPeriod"
    err = refuse({"ssh": [{**rule, "users": ["localpart:*@other.org"]}]})
    assert "not associated" in err.reason


def test_syntax_error_is_a_line() -> None:
    assert refuse('{\n "acls": [\n  {"action": "accept",,}\n ]\n}').location.startswith("line 3")
