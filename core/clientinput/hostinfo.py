"""Hostinfo and endpoints as the client reports them, checked against tailcfg (Go client 1.80+).

Field types follow tailscale's ``tailcfg.Hostinfo``, ``NetInfo``, ``Service``, ``Location``
and ``TPMInfo``; ``opt.Bool`` travels as JSON true/false/null. Only these fields are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from meshscale.clientinput.schema import (
    DROP,
    UINT16,
    UINT64,
    Problems,
    Spec,
    addr_port,
    boolean,
    integer,
    list_of,
    map_of,
    number,
    opt_bool,
    prefix,
    string,
    struct,
)
from meshscale.tailcfg import PEER_HOSTINFO_FIELDS

HOSTINFO_MAX_BYTES = 64 * 1024  # default of client_limits.hostinfo_max_bytes
ENDPOINTS_MAX = 256  # default of client_limits.endpoints_max
ROUTES_MAX = 4096  # Hostinfo.RoutableIPs (the byte limit usually binds first)

NETINFO = struct({
    "MappingVariesByDestIP": opt_bool,
    "HairPinning": opt_bool,
    "WorkingIPv6": opt_bool,
    "OSHasIPv6": opt_bool,
    "WorkingUDP": opt_bool,
    "WorkingICMPv4": opt_bool,
    "HavePortMap": boolean,
    "UPnP": opt_bool,
    "PMP": opt_bool,
    "PCP": opt_bool,
    "PreferredDERP": integer((0, 2**31 - 1)),
    "LinkType": string(64),
    "DERPLatency": map_of(number),
    "FirewallMode": string(64),
})

SERVICE = struct({"Proto": string(64), "Port": integer(UINT16), "Description": string(256)})

LOCATION = struct({
    "Country": string(128),
    "CountryCode": string(8),
    "City": string(128),
    "CityCode": string(16),
    "Latitude": number,
    "Longitude": number,
    "Priority": integer(),
})

TPM = struct({
    "Manufacturer": string(64),
    "Vendor": string(64),
    "Model": integer(),
    "FirmwareVersion": integer(UINT64),
    "SpecRevision": integer(),
})

_STRINGS = ("IPNVersion", "FrontendLogID", "BackendLogID", "OS", "OSVersion", "Env", "Distro",
            "DistroVersion", "DistroCodeName", "App", "Package", "DeviceModel",
            "PushDeviceToken", "Hostname", "Machine", "GoArch", "GoArchVar", "GoVersion",
            "Cloud", "ServicesHash", "ExitNodeID")
_BOOLS = ("ShieldsUp", "ShareeNode", "NoLogsNoSupport", "WireIngress", "IngressEnabled",
          "AllowsUpdate")
_OPT_BOOLS = ("Container", "Desktop", "Userspace", "UserspaceRouter", "AppConnector",
              "StateEncrypted")

HOSTINFO_FIELDS: dict[str, Spec] = {
    **{name: string() for name in _STRINGS},
    **{name: boolean for name in _BOOLS},
    **{name: opt_bool for name in _OPT_BOOLS},
    "RoutableIPs": list_of(prefix, ROUTES_MAX),
    "RequestTags": list_of(string(256)),
    "WoLMACs": list_of(string(64)),
    "Services": list_of(SERVICE),
    "NetInfo": NETINFO,
    "sshHostKeys": list_of(string(4096), 16),  # Go: SSH_HostKeys `json:"sshHostKeys"`
    "Location": LOCATION,
    "TPM": TPM,
}
HOSTINFO = struct(HOSTINFO_FIELDS)



def check_hostinfo(raw: object, max_bytes: int, path: str = "Hostinfo") -> tuple[
        dict[str, Any], Problems]:
    """The Hostinfo that fits tailcfg, and what did not. Oversize is a problem too."""
    probs = Problems()
    got = HOSTINFO(raw, path, probs)
    out: dict[str, Any] = got if isinstance(got, dict) and got is not DROP else {}
    size = len(orjson.dumps(out))
    if size > max_bytes:
        probs.append(f"{path}: {size} bytes, over the limit of {max_bytes} "
                     "(client_limits.hostinfo_max_bytes)")
    return out, probs


def check_endpoints(raw: object, max_items: int, path: str = "Endpoints") -> tuple[
        list[str], Problems]:
    probs = Problems()
    got = list_of(addr_port, max_items)(raw, path, probs)
    return (got if isinstance(got, list) else []), probs


def repair_stored(hostinfo: object, endpoints: Sequence[object], hostinfo_max: int,
                  endpoints_max: int) -> tuple[dict[str, Any], tuple[str, ...], list[str]]:
    """Stored Hostinfo and endpoints made to fit (start-up repair of rows written before
    input was checked): values that do not fit are dropped, unknown Hostinfo fields too; over
    the size limit only the fields peers use are kept (then only the hostname). Returns the
    repaired values and what was dropped (empty: nothing changed)."""
    fixed, probs = check_hostinfo(hostinfo, hostinfo_max)
    dropped: list[str] = list(probs)
    if isinstance(hostinfo, dict):
        dropped += [f"Hostinfo.{k}: unknown field" for k in hostinfo if k not in HOSTINFO_FIELDS]
    if len(orjson.dumps(fixed)) > hostinfo_max:
        fixed = {k: v for k, v in fixed.items() if k in PEER_HOSTINFO_FIELDS}
        if len(orjson.dumps(fixed)) > hostinfo_max:
            fixed = {k: v for k, v in fixed.items() if k == "Hostname"}
    eps, ep_probs = check_endpoints(list(endpoints[:endpoints_max]), endpoints_max)
    dropped += ep_probs
    if len(endpoints) > endpoints_max:
        dropped.append(f"Endpoints: {len(endpoints) - endpoints_max} over the limit")
    if not dropped and fixed != hostinfo:  # normalised forms (masked prefixes, ...)
        dropped.append("Hostinfo: normalised")
    if not dropped and tuple(eps) != tuple(endpoints):
        dropped.append("Endpoints: normalised")
    return fixed, tuple(eps), dropped
