"""The tailnets the benchmarks run under: allow-all, or a restrictive policy shaped like a real
company's (``meshscale bench ... --policy restrictive``).

Restrictive: half the nodes are user devices (three per user), half tagged servers; users and
servers are split into ``TEAMS`` teams. A team's users (a group) reach the team's servers, the
team's servers reach each other, and every member reaches their own devices
(``autogroup:self``). SSH is Tailscale's default rule (members into their own devices, check
mode). A device sees its team's servers and its owner's other devices (about 6 % of the
tailnet), a server its team's devices and servers (about 12.5 %): about 10 % on average.

Pure functions of the member index, so the load generator knows who must see whom without
asking the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POLICIES = ("allow-all", "restrictive")
TEAMS = 8
DEVICES_PER_USER = 3


@dataclass(frozen=True, slots=True)
class Role:
    """What member ``index`` of the fleet is: a user's device or a team's tagged server."""

    server: bool
    team: int
    user: int  # -1 for a server

    @property
    def tag(self) -> str:
        return f"tag:team{self.team}"


def role(index: int) -> Role:
    if index % 2:
        return Role(True, (index // 2) % TEAMS, -1)
    user = (index // 2) // DEVICES_PER_USER
    return Role(False, user % TEAMS, user)


def users_for(nodes: int) -> int:
    devices = (nodes + 1) // 2
    return max(1, -(-devices // DEVICES_PER_USER))


def user_name(user: int) -> str:
    return f"u{user}"


def restrictive_policy(nodes: int, cut: bool = False) -> dict[str, Any]:
    """The policy for a fleet of ``nodes``; ``cut``: team 0's users lose their servers."""
    users = users_for(nodes)
    groups = {f"group:team{t}": [f"{user_name(u)}@" for u in range(t, users, TEAMS)]
              for t in range(TEAMS)}
    acls: list[dict[str, Any]] = [
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]
    for t in range(TEAMS):
        if not (cut and t == 0):
            acls.append({"action": "accept", "src": [f"group:team{t}"],
                         "dst": [f"tag:team{t}:*"]})
        acls.append({"action": "accept", "src": [f"tag:team{t}"], "dst": [f"tag:team{t}:*"]})
    return {
        "groups": {g: members for g, members in groups.items() if members},
        "tagOwners": {f"tag:team{t}": ["autogroup:admin"] for t in range(TEAMS)},
        "acls": [a for a in acls if not any(
            s.startswith("group:") and not groups[s] for s in a["src"])],
        "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"],
                 "users": ["autogroup:nonroot", "root"]}],
    }


def sees(a: int, b: int, cut: bool = False) -> bool:
    """Does member ``a`` see member ``b`` under the restrictive policy (either direction)?"""
    if a == b:
        return False
    ra, rb = role(a), role(b)
    if ra.server and rb.server:
        return ra.team == rb.team
    if not ra.server and not rb.server:
        return ra.user == rb.user
    if ra.team != rb.team:
        return False
    return not (cut and ra.team == 0)
