"""Property-based fuzzing of the parsers a client (or a policy author) reaches: register and
map bodies (meshscale.clientinput) and the policy parser.

Budget: the hypothesis profile of tests/conftest.py (bounded in the suite); a longer run:

    HYPOTHESIS_PROFILE=long bash scripts/test -q tests/unit/test_fuzz_input.py

The properties: a body is either refused with BadRequest or yields values that a Go client
decodes (canonical endpoints and prefixes, bounded UTF-8 strings, integers in range, finite
numbers), that serialize, that fit the size limit and that are a fixed point of the checks; the
policy parser either accepts or raises PolicyError, never anything else.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshscale.clientinput import BadRequest, Limits, check_hostinfo, parse_map, parse_register
from meshscale.clientinput.hostinfo import HOSTINFO_FIELDS
from meshscale.errors import PolicyError
from meshscale.plugins.policy.parse import parse_policy

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits(hostinfo_max_bytes=4096, endpoints_max=16)

# Text with what attackers send: lone surrogates, NULs, non-ASCII digits, brackets, colons.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3),
    st.sampled_from(["1.2.3.4:41641", "[::1]:5", "[fe80::1%eth0]:1", "1.2.3.4", "::1:5",
                     "not-an-addrport", "10.0.0.0/8", "10.0.0.1/08", "10.0.0.0/33",
                     "1.2.3.4:080", "1.2.3.4:٣", "01.2.3.4:1", "nodekey:" + "0" * 64,
                     "nodekey:" + "ab" * 32, "discokey:zz", "tag:prod", "*", ""]),
)
scalars = st.one_of(
    st.none(), st.booleans(), nasty_text,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.one_of(nasty_text, st.sampled_from(
                                sorted(HOSTINFO_FIELDS))), inner, max_size=5)),
    max_leaves=30,
)
hostinfo_like = st.dictionaries(st.sampled_from(sorted(HOSTINFO_FIELDS)), json_values,
                                max_size=8)
MAP_FIELDS = ["Version", "NodeKey", "DiscoKey", "Stream", "OmitPeers", "KeepAlive", "Compress",
              "Endpoints", "EndpointTypes", "Hostinfo", "DebugFlags", "MapSessionSeq"]
REGISTER_FIELDS = ["Version", "NodeKey", "OldNodeKey", "Auth", "Expiry", "Followup",
                   "Hostinfo", "Ephemeral"]


def body(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(
        st.one_of(st.sampled_from(fields), nasty_text),
        st.one_of(json_values, hostinfo_like, st.lists(nasty_text, max_size=4)),
        max_size=8)


def go_decodable(value: Any, depth: int = 0) -> None:
    """What a Go client's JSON decoder could choke on is absent."""
    assert depth < 8
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        assert -(2**63) <= value < 2**64
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, list):
        for v in value:
            go_decodable(v, depth + 1)
    else:
        assert isinstance(value, dict)
        for k, v in value.items():
            assert isinstance(k, str)
            go_decodable(v, depth + 1)


def accepted_hostinfo(hostinfo: dict[str, Any]) -> None:
    go_decodable(hostinfo)
    assert set(hostinfo) <= set(HOSTINFO_FIELDS)
    assert len(orjson.dumps(hostinfo)) <= LIMITS.hostinfo_max_bytes
    for p in hostinfo.get("RoutableIPs", []):
        assert str(ipaddress.ip_network(p, strict=True)) == p  # canonical and masked
    again, probs = check_hostinfo(hostinfo, LIMITS.hostinfo_max_bytes)
    assert again == hostinfo and not probs  # a fixed point


def accepted_endpoints(endpoints: tuple[str, ...]) -> None:
    assert len(endpoints) <= LIMITS.endpoints_max
    for e in endpoints:
        host, _, port = e.rpartition(":")
        assert port.isascii() and port.isdigit() and 0 <= int(port) <= 65535
        ip = ipaddress.ip_address(host.strip("[]"))
        assert host.startswith("[") == (ip.version == 6)


@FUZZ
@given(body(MAP_FIELDS))
def test_map_bodies_are_refused_or_come_out_go_decodable(raw: dict[str, Any]) -> None:
    try:
        req = parse_map(raw, LIMITS)
    except BadRequest as exc:
        assert str(exc).startswith("invalid request: ")
        str(exc).encode("utf-8")  # the refusal itself is printable
        return
    if req.hostinfo is not None:
        accepted_hostinfo(req.hostinfo)
    if req.endpoints is not None:
        accepted_endpoints(req.endpoints)
    assert isinstance(req.version, int) and isinstance(req.stream, bool)


@FUZZ
@given(body(REGISTER_FIELDS))
def test_register_bodies_are_refused_or_come_out_go_decodable(raw: dict[str, Any]) -> None:
    try:
        req = parse_register(raw, LIMITS)
    except BadRequest as exc:
        assert str(exc).startswith("invalid request: ")
        return
    accepted_hostinfo(req.hostinfo)
    req.auth_key.encode("utf-8")


@FUZZ
@given(hostinfo_like)
def test_hostinfo_checks_never_let_through_what_go_rejects(raw: dict[str, Any]) -> None:
    out, probs = check_hostinfo(raw, LIMITS.hostinfo_max_bytes)
    go_decodable(out)
    orjson.dumps(out)
    if not probs:
        accepted_hostinfo(out)


policy_texts = st.one_of(
    st.text(max_size=200),
    json_values.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS).decode(
        "utf-8", "replace") if _dumpable(v) else "{}"),
    st.dictionaries(st.sampled_from(["acls", "groups", "tagOwners", "hosts", "grants", "ssh",
                                     "tests", "sshTests", "autoApprovers", "nodeAttrs",
                                     "postures"]), json_values, max_size=4).map(
        lambda d: orjson.dumps(d).decode() if _dumpable(d) else "{}"),
)


def _dumpable(v: Any) -> bool:
    try:
        orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True


@FUZZ
@given(policy_texts)
def test_policy_parser_accepts_or_raises_policy_error(text: str) -> None:
    try:
        parse_policy(text)
    except PolicyError as exc:
        assert str(exc)
