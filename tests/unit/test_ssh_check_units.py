"""SSH check mode without sockets: the action URL parser, the check period the policy engine
gives for a connection (checkPeriod edge values), and how check rules are rendered."""

from __future__ import annotations

import json

import pytest

from meshscale.control.sshcheck import BadActionRequest, parse_action, reject
from meshscale.errors import PolicyError
from meshscale.plugins.policy.engine import TailscalePolicyEngine
from meshscale.policy import PolicyNode, PolicyUser

ALICE = PolicyUser(1, "alice", "alice@example.com")
BOB = PolicyUser(2, "bob", "bob@example.com")
NODES = [
    PolicyNode(1, "laptop", 1, ipv4="100.64.0.1", ipv6="fd7a:115c:a1e0::1"),
    PolicyNode(2, "bobpc", 2, ipv4="100.64.0.2", ipv6="fd7a:115c:a1e0::2"),
    PolicyNode(3, "server", None, frozenset({"tag:server"}), ipv4="100.64.0.3"),
    PolicyNode(4, "alicebox", 1, ipv4="100.64.0.4"),
]
HOLD = {"holdAndDelegate": "https://ms.example/machine/ssh/action/$SRC_NODE_ID/to/"
                           "$DST_NODE_ID?local_user=$LOCAL_USER"}


def test_parse_action() -> None:
    q = parse_action("/machine/ssh/action/12/to/3?local_user=root")
    assert (q.src, q.dst, q.local_user, q.auth_id) == (12, 3, "root", "")
    q = parse_action("/machine/ssh/action/1/to/2?local_user=a%2Bb&auth_id=" + "A" * 24)
    assert (q.local_user, q.auth_id) == ("a+b", "A" * 24)
    assert parse_action("/machine/ssh/action/1/to/2").local_user == ""


@pytest.mark.parametrize("path", [
    "/machine/ssh/action/1/to/",
    "/machine/ssh/action/-1/to/2",
    "/machine/ssh/action/1/to/2/x",
    "/machine/ssh/action/12345678901234567890/to/2",
    "/machine/ssh/action/1/to/2?local_user=a&local_user=b",
    "/machine/ssh/action/1/to/2?local_user=" + "x" * 257,
    "/machine/ssh/action/1/to/2?local_user=a%0Ab",
    "/machine/ssh/action/1/to/2?auth_id=../../etc",
    "/machine/ssh/action/1/to/2?" + "&".join(f"k{i}=v" for i in range(20)),
])
def test_parse_action_refuses(path: str) -> None:
    with pytest.raises(BadActionRequest):
        parse_action(path)


def test_reject_bytes() -> None:
    assert json.dumps(reject("no")).encode() == b'{"reject": true, "message": "tailscale: no\\n"}'


def engine(ssh: list[dict[str, object]]) -> TailscalePolicyEngine:
    e = TailscalePolicyEngine("https://ms.example")
    e.set_topology([ALICE, BOB], NODES)
    e.set_policy(json.dumps({"tagOwners": {"tag:server": ["alice@"]},
                             "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
                             "ssh": ssh}))
    return e


def rule(**kw: object) -> dict[str, object]:
    return {"action": "check", "src": ["autogroup:member"], "dst": ["tag:server"],
            "users": ["root"], **kw}


@pytest.mark.parametrize(("period", "seconds"), [
    (None, 12 * 3600.0),  # Tailscale's default
    ("always", 0.0),
    ("0", 0.0),
    ("30s", 30.0),  # accepted by Tailscale's control plane (ssh-malformed-checkperiod-too-short)
    ("1h30m", 5400.0),
    ("168h", 168 * 3600.0),  # the maximum
])
def test_check_period(period: str | None, seconds: float) -> None:
    e = engine([rule() if period is None else rule(checkPeriod=period)])
    assert e.ssh_check_period(1, 3, "root") == seconds
    # Rendered the same whatever the period: it never reaches the client.
    assert e.ssh_policy(3) == {"rules": [{
        "principals": [{"nodeIP": ip} for ip in
                       ("100.64.0.1", "100.64.0.4", "fd7a:115c:a1e0::1",  # alice's
                        "100.64.0.2", "fd7a:115c:a1e0::2")],
        "sshUsers": {"root": "root"}, "action": HOLD}]}


@pytest.mark.parametrize("period", ["-1m", "abc", "169h", "1d"])
def test_check_period_refused(period: str) -> None:
    with pytest.raises(PolicyError, match=r"ssh\[0\]\.checkPeriod"):
        engine([rule(checkPeriod=period)])


def test_which_connections_a_check_covers() -> None:
    e = engine([rule(checkPeriod="2h"),
                rule(checkPeriod="1h", src=["bob@example.com"]),
                rule(checkPeriod="5m", dst=["autogroup:self"], users=["autogroup:nonroot"]),
                {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"],
                 "users": ["autogroup:nonroot"]}])
    assert e.ssh_check_period(1, 3, "root") == 7200.0
    assert e.ssh_check_period(2, 3, "root") == 3600.0  # the shortest of the matching rules
    assert e.ssh_check_period(1, 3, "alice") is None  # an accept rule, not a check
    assert e.ssh_check_period(1, 4, "alice") == 300.0  # autogroup:self, a non-root user
    assert e.ssh_check_period(1, 4, "root") is None
    assert e.ssh_check_period(2, 4, "bob") is None  # not bob's own device
    assert e.ssh_check_period(3, 1, "root") is None  # no rule has laptop as destination
    assert e.ssh_check_period(1, 99, "root") is None  # no such node
    assert engine([]).ssh_check_period(1, 3, "root") is None
