"""Loading and comparing the policy conformance corpus (shared by the tests and the report).

Comparison rules (see /work/shared/conformance/policy/README.md):

- Addresses are compared as sets: the hosted service writes ``*`` as ranges, merges or splits
  prefixes differently, so ``SrcIPs``, each ``DstPorts[].IP`` and ``CapGrant[].Dsts`` are
  normalised to address sets.
- A node's PacketFilter is compared as a multiset of rules: rule order has no meaning to
  clients (any rule may accept a packet).
- SSH rules are compared in order (first match wins), principals as a set.
- CapMap: the keys the hosted service adds on its own (``is-owner``, ``tailnet-lock``...) are
  left out of both sides; what remains is what policy (nodeAttrs) adds.
- Peers: the set of peer names, and per peer its AllowedIPs and PrimaryRoutes as sets.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

from meshscale.errors import PolicyError
from meshscale.plugins.policy.addrset import AddrSet
from meshscale.plugins.policy.engine import TailscalePolicyEngine
from meshscale.policytool import compile_topology

# shared/ lies beside the checkout (as CI lays it); /work/shared is where sessions find it.
_BESIDE = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "policy"
CORPUS = Path(os.environ.get("MESHSCALE_POLICY_CORPUS")
              or (_BESIDE if _BESIDE.is_dir() else "/work/shared/conformance/policy"))
DATA = Path(__file__).parent / "data"
HOSTED_CAPS = frozenset(
    {
        "https://tailscale.com/cap/file-sharing", "https://tailscale.com/cap/ssh",
        "https://tailscale.com/cap/tailnet-lock", "https://tailscale.com/cap/is-owner",
        "https://tailscale.com/cap/is-admin", "probe-udp-lifetime", "ssh-behavior-v1",
        "ssh-env-vars", "store-appc-routes", "tailnet-display-name", "default-auto-update",
    }
)
CONTROL_URL = "https://unused"  # what the capture tool wrote into holdAndDelegate URLs


def case_files() -> list[Path]:
    return sorted(CORPUS.glob("*/*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def known_failures() -> dict[str, str]:
    path = DATA / "xfail.json"
    if not path.exists():
        return {}
    data: dict[str, str] = json.loads(path.read_text())
    return data


def registration_order() -> dict[str, list[str]]:
    """Per topology node name, nodes known to have registered earlier (see the data file)."""
    data: dict[str, list[str]] = json.loads((DATA / "registration_order.json").read_text())
    return data


def topology_with_ids(case: dict[str, Any]) -> dict[str, Any]:
    """The case's topology with node ids in registration order.

    The capture does not record ids, but the hosted service elects primary routes by
    registration order; ``registration_order.json`` records the few orderings the captures
    reveal, everything else is numbered alphabetically.
    """
    topo = json.loads(json.dumps(case["topology"]))
    names = sorted(topo["nodes"])
    for first in registration_order().get("first", []):
        if first in names:
            names.remove(first)
            names.insert(0, first)
    for i, name in enumerate(names, start=1):
        topo["nodes"][name]["id"] = i
    return topo


def _addr(text: str) -> str:
    # The canonical rendering of an address set is unique, so equal sets compare equal.
    return ",".join(AddrSet.parse(text).strings())


def _addrs(items: list[str] | None) -> str:
    return ",".join(AddrSet.of(items or []).strings())


def norm_rule(rule: dict[str, Any]) -> str:
    out: dict[str, Any] = {"SrcIPs": _addrs(rule.get("SrcIPs"))}
    if rule.get("IPProto"):
        out["IPProto"] = sorted(rule["IPProto"])
    if rule.get("DstPorts"):
        out["DstPorts"] = sorted(
            f"{_addr(p['IP'])} {p['Ports']['First']}-{p['Ports']['Last']}"
            for p in rule["DstPorts"]
        )
    if rule.get("CapGrant"):
        out["CapGrant"] = sorted(
            json.dumps([_addrs(g.get("Dsts")), g.get("CapMap")], sort_keys=True)
            for g in rule["CapGrant"]
        )
    return json.dumps(out, sort_keys=True)


def norm_ssh(rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "principals": sorted(_addr(p["nodeIP"]) for p in rule.get("principals", [])),
        "sshUsers": rule.get("sshUsers"),
        "action": rule.get("action"),
        "acceptEnv": rule.get("acceptEnv") or [],
    }


def norm_node(view: dict[str, Any], *, expected: bool) -> dict[str, Any]:
    caps = view.get("self_cap_map" if expected else "cap_map") or {}
    return {
        "packet_filter_rules": sorted(norm_rule(r) for r in view.get("packet_filter_rules") or []),
        "peers": {
            p["name"]: {
                "allowed_ips": _addrs(p.get("allowed_ips")),
                "primary_routes": sorted(p.get("primary_routes") or []),
            }
            for p in view.get("peers") or []
        },
        "ssh_rules": [norm_ssh(r) for r in view.get("ssh_rules") or []],
        "cap_map": {k: v for k, v in caps.items() if k not in HOSTED_CAPS},
        "self_primary_routes": sorted(view.get("self_primary_routes") or []),
    }


def run_case(case: dict[str, Any]) -> str | None:
    """None when the engine reproduces the case; otherwise a readable description."""
    engine = TailscalePolicyEngine(control_url=CONTROL_URL)
    text = json.dumps(case["policy"]) if isinstance(case["policy"], dict) else case["policy"]
    try:
        got = compile_topology(engine, text, topology_with_ids(case))
    except PolicyError as exc:
        if case["expect_error"]:
            return None
        return f"refused a policy the hosted service accepted: {exc}"
    if case["expect_error"]:
        body = case.get("api_response_body") or {}
        return f"accepted a policy the hosted service refused ({body.get('message')!r})"
    problems: list[str] = []
    for name, want_view in sorted(case["nodes"].items()):
        want = norm_node(want_view, expected=True)
        have = norm_node(got["nodes"].get(name, {}), expected=False)
        if want == have:
            continue
        for key in want:
            if want[key] != have[key]:
                a = json.dumps(want[key], indent=1, sort_keys=True).splitlines()
                b = json.dumps(have[key], indent=1, sort_keys=True).splitlines()
                diff = "\n".join(difflib.unified_diff(a, b, "expected", "got", lineterm="", n=1))
                problems.append(f"node {name}: {key} differs\n{diff}")
    return "\n".join(problems) or None
