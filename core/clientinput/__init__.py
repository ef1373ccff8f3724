"""Client input, checked where it enters: request bodies and Hostinfo against tailcfg's types.

Nothing a client sends is stored or relayed before it has been through here.
"""

from meshscale.clientinput.hostinfo import (
    check_endpoints,
    check_hostinfo,
    repair_stored,
)
from meshscale.clientinput.requests import (
    BadRequest,
    Limits,
    MapRequest,
    RegisterRequest,
    SetDNSRequest,
    parse_map,
    parse_register,
    parse_set_dns,
)

__all__ = [
    "BadRequest",
    "Limits",
    "MapRequest",
    "RegisterRequest",
    "SetDNSRequest",
    "check_endpoints",
    "check_hostinfo",
    "parse_map",
    "parse_register",
    "parse_set_dns",
    "repair_stored",
]
