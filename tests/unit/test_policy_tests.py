"""A policy whose ``tests`` or ``sshTests`` fail is refused, and nothing changes."""

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
    PolicyNode(2, "phone", 2, ipv4="100.64.0.3", ipv6="fd7a:115c:a1e0::3"),
    PolicyNode(3, "server", None, frozenset({"tag:server"}), "100.64.0.2", "fd7a:115c:a1e0::2"),
]


def policy(**extra: Any) -> str:
    return json.dumps({
        "tagOwners": {"tag:server": ["alice@example.com"]},
        "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:server:22"]}],
        "ssh": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:server"],
                 "users": ["root"]}],
        **extra,
    })


def engine() -> TailscalePolicyEngine:
    e = TailscalePolicyEngine()
    e.set_topology(USERS, NODES)
    return e


def test_passing_tests_are_accepted() -> None:
    engine().set_policy(policy(
        tests=[{"src": "alice@example.com", "accept": ["tag:server:22"],
                "deny": ["tag:server:80"]},
               {"src": "bob@example.com", "deny": ["tag:server:22"]}],
        sshTests=[{"src": "alice@example.com", "dst": ["tag:server"], "accept": ["root"]},
                  {"src": "bob@example.com", "dst": ["tag:server"], "deny": ["root"]}],
    ))


@pytest.mark.parametrize("test", [
    {"src": "bob@example.com", "accept": ["tag:server:22"]},
    {"src": "alice@example.com", "deny": ["tag:server:22"]},
    {"src": "alice@example.com", "accept": ["tag:server:22"], "proto": "icmp"},
    {"src": "alice@example.com", "accept": ["tag:server:20-30"]},  # not one port
    {"src": "alice@example.com", "accept": ["10.0.0.0/8:22"]},  # not one host
    {"src": "alice@example.com"},  # asserts nothing
    {"src": "group:nope", "accept": ["tag:server:22"]},
])
def test_failing_tests_refuse_the_policy(test: dict[str, Any]) -> None:
    e = engine()
    e.set_policy(policy())
    before = e.packet_filter(3)
    with pytest.raises(PolicyError) as err:
        e.set_policy(policy(tests=[{"src": "alice@example.com", "accept": ["tag:server:22"]},
                                   test]))
    assert err.value.location == "tests[1]"
    assert e.packet_filter(3) == before  # atomic: the old policy stays


@pytest.mark.parametrize("test", [
    {"src": "bob@example.com", "dst": ["tag:server"], "accept": ["root"]},
    {"src": "alice@example.com", "dst": ["tag:server"], "accept": ["ubuntu"]},
    {"src": "alice@example.com", "dst": ["tag:server"], "deny": ["root"]},
    {"src": "alice@example.com", "dst": ["tag:server"], "check": ["root"]},
])
def test_failing_ssh_tests_refuse_the_policy(test: dict[str, Any]) -> None:
    with pytest.raises(PolicyError) as err:
        engine().set_policy(policy(sshTests=[test]))
    assert err.value.location == "sshTests[0]"
    assert "test(s) failed" in err.value.reason


def test_ssh_test_destination_shape_is_checked_at_parse() -> None:
    with pytest.raises(PolicyError) as err:
        engine().check(
            policy(sshTests=[{"src": "alice@example.com", "dst": ["100.64.0.0/24"],
                              "accept": ["root"]}]),
            USERS, NODES,
        )
    assert err.value.location == "sshTests[0].dst[0]"
