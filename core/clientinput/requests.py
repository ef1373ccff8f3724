"""``/machine/register`` and ``/machine/map`` bodies -> typed requests, or a clear refusal.

Field types are tailcfg's ``RegisterRequest`` and ``MapRequest``. A field of the wrong type is
refused as Go's decoder would refuse it (HTTP 400 naming the field); unknown fields are
ignored. Hostinfo and Endpoints, which meshscale keeps and relays, are normalised on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meshscale import tailcfg
from meshscale.clientinput.hostinfo import (
    ENDPOINTS_MAX,
    HOSTINFO_MAX_BYTES,
    check_endpoints,
    check_hostinfo,
)
from meshscale.clientinput.schema import (
    DROP,
    Problems,
    Spec,
    boolean,
    integer,
    list_of,
    string,
)
from meshscale.errors import MeshscaleError

KEY_TEXT_MAX = 80  # "nodekey:" + 64 hex digits, with room for the other prefixes


class BadRequest(MeshscaleError):
    """The body does not fit tailcfg: answered with HTTP 400 and this message."""


@dataclass(frozen=True, slots=True)
class Limits:
    hostinfo_max_bytes: int = HOSTINFO_MAX_BYTES
    endpoints_max: int = ENDPOINTS_MAX


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    version: int
    node_key: bytes | None
    old_node_key: bytes | None
    expiry: datetime | None
    auth_key: str
    hostinfo: dict[str, Any]
    has_auth: bool
    followup: str = ""  # the AuthURL of an interactive login the client is waiting on


@dataclass(frozen=True, slots=True)
class MapRequest:
    version: int
    node_key: bytes | None
    disco_key: bytes | None
    stream: bool
    omit_peers: bool
    keepalive: bool
    compress: str
    hostinfo: dict[str, Any] | None  # None: not sent
    endpoints: tuple[str, ...] | None  # None: not sent


@dataclass(frozen=True, slots=True)
class SetDNSRequest:
    """tailcfg.SetDNSRequest: a TXT record the node wants (``tailscale cert``'s DNS-01)."""

    version: int
    node_key: bytes | None
    name: str
    type: str
    value: str


_SCALARS: dict[str, Spec] = {
    "Version": integer(),
    "NodeKey": string(KEY_TEXT_MAX),
    "OldNodeKey": string(KEY_TEXT_MAX),
    "NLKey": string(KEY_TEXT_MAX),
    "DiscoKey": string(KEY_TEXT_MAX),
    "Expiry": string(64),
    "Followup": string(2048),
    "Ephemeral": boolean,
    "Tailnet": string(256),
    "Compress": string(16),
    "KeepAlive": boolean,
    "Stream": boolean,
    "OmitPeers": boolean,
    "ReadOnly": boolean,
    "MapSessionHandle": string(256),
    "MapSessionSeq": integer(),
    "TKAHead": string(256),
    "EndpointTypes": list_of(integer(), ENDPOINTS_MAX),
    "DebugFlags": list_of(string(256)),
    "ConnectionHandleForTest": string(256),
    "Name": string(512),
    "Type": string(16),
    "Value": string(1024),
}
_AUTH = {"AuthKey": string(512)}
_REGISTER_FIELDS = ("Version", "NodeKey", "OldNodeKey", "NLKey", "Expiry", "Followup",
                    "Ephemeral", "Tailnet")
_SET_DNS_FIELDS = ("Version", "NodeKey", "Name", "Type", "Value")
_MAP_FIELDS = ("Version", "NodeKey", "DiscoKey", "Compress", "KeepAlive", "Stream", "OmitPeers",
               "ReadOnly", "MapSessionHandle", "MapSessionSeq", "TKAHead", "EndpointTypes",
               "DebugFlags", "ConnectionHandleForTest")


def _scalars(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    probs = Problems()
    out: dict[str, Any] = {}
    for name in names:
        value = body.get(name)
        if value is not None:
            got = _SCALARS[name](value, name, probs)
            if got is not DROP:
                out[name] = got
    _refuse(probs)
    return out


def _refuse(probs: Problems) -> None:
    if probs:
        raise BadRequest(f"invalid request: {probs.summary()}")


def _key(text: object, prefix: str, field: str) -> bytes | None:
    """A key field: absent or all-zero is None; anything else must be ``prefix`` + 64 hex."""
    if text is None or text == "":
        return None
    raw = tailcfg.parse_key(text, prefix)
    if raw is None and text != prefix + "0" * 64:
        raise BadRequest(f"invalid request: {field}: not a {prefix}<64 hex digits> key")
    return raw


def _hostinfo(body: dict[str, Any], limits: Limits) -> dict[str, Any] | None:
    raw = body.get("Hostinfo")
    if raw is None:
        return None
    hostinfo, probs = check_hostinfo(raw, limits.hostinfo_max_bytes)
    _refuse(probs)
    return dict(hostinfo)


def parse_register(body: dict[str, Any], limits: Limits) -> RegisterRequest:
    f = _scalars(body, _REGISTER_FIELDS)
    auth = body.get("Auth")
    auth_key = ""
    if auth is not None:
        if not isinstance(auth, dict):
            raise BadRequest("invalid request: Auth: expected an object")
        key = auth.get("AuthKey")
        if key is not None:
            probs = Problems()
            got = _AUTH["AuthKey"](key, "Auth.AuthKey", probs)
            _refuse(probs)
            auth_key = str(got)
    expiry_text = f.get("Expiry")
    expiry = tailcfg.parse_gotime(expiry_text)
    if expiry is None and expiry_text and not expiry_text.startswith("0001-01-01"):
        raise BadRequest("invalid request: Expiry: not an RFC 3339 time")
    return RegisterRequest(
        version=f.get("Version", 0),
        node_key=_key(f.get("NodeKey"), "nodekey:", "NodeKey"),
        old_node_key=_key(f.get("OldNodeKey"), "nodekey:", "OldNodeKey"),
        expiry=expiry,
        auth_key=auth_key,
        hostinfo=_hostinfo(body, limits) or {},
        has_auth=auth is not None,
        followup=f.get("Followup", ""),
    )


def parse_map(body: dict[str, Any], limits: Limits) -> MapRequest:
    f = _scalars(body, _MAP_FIELDS)
    endpoints = None
    if body.get("Endpoints") is not None:
        eps, probs = check_endpoints(body["Endpoints"], limits.endpoints_max)
        _refuse(probs)
        endpoints = tuple(eps)
    return MapRequest(
        version=f.get("Version", 0),
        node_key=_key(f.get("NodeKey"), "nodekey:", "NodeKey"),
        disco_key=_key(f.get("DiscoKey"), "discokey:", "DiscoKey"),
        stream=f.get("Stream", False),
        omit_peers=f.get("OmitPeers", False),
        keepalive=f.get("KeepAlive", True),
        compress=f.get("Compress", ""),
        hostinfo=_hostinfo(body, limits),
        endpoints=endpoints,
    )


def parse_set_dns(body: dict[str, Any], limits: Limits) -> SetDNSRequest:
    f = _scalars(body, _SET_DNS_FIELDS)
    return SetDNSRequest(
        version=f.get("Version", 0),
        node_key=_key(f.get("NodeKey"), "nodekey:", "NodeKey"),
        name=f.get("Name", ""),
        type=f.get("Type", ""),
        value=f.get("Value", ""),
    )
