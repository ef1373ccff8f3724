"""The records meshscale keeps: users, pre-auth keys, nodes.

These are the authoritative in-memory objects; storage backends persist them. Keys are raw
32-byte values; the ``nodekey:``/``mkey:`` text forms exist only on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class User:
    id: int
    name: str
    display_name: str = ""
    email: str = ""
    provider: str = ""  # "" for local users; "oidc" later
    provider_id: str = ""
    created_at: datetime = field(default_factory=utcnow)
    picture: str = ""  # a login provider's picture URL
    # The login provider's groups (OIDC ``groups`` claim), refreshed on each login: the policy's
    # group:<name> includes the user when <name> is among them.
    groups: tuple[str, ...] = ()

    @property
    def login_name(self) -> str:
        return self.email or self.name


@dataclass(slots=True)
class PreAuthKey:
    id: int
    prefix: str  # public part, printed in listings and used to find the key
    secret_hash: bytes  # a hash of the secret part (hash_scheme); the secret is never stored
    user_id: int | None  # None: a tags-only key
    reusable: bool = False
    ephemeral: bool = False
    used: bool = False
    expiration: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)
    tags: tuple[str, ...] = ()
    # How secret_hash was made (meshscale.keyhash): "sha256", or "bcrypt" for a key imported
    # from headscale that has not been presented since.
    hash_scheme: str = "sha256"
    # What the full key starts with (meshscale.auth.masked_key): "mskey-auth-" for ours,
    # "hskey-auth-" for one imported from headscale 0.28+, "" for headscale's older plain keys.
    key_form: str = "mskey-auth-"
    # Nodes it registers join approved although node.approval is manual (Tailscale's
    # "pre-approved" keys, ``preauthorized`` in its API).
    preauthorized: bool = False

    def expired(self, now: datetime | None = None) -> bool:
        return self.expiration is not None and self.expiration <= (now or utcnow())


@dataclass(slots=True)
class ApiKey:
    """A key for /api/v1 (and the remote CLI): ``mskey-api-<prefix>-<secret>``."""

    id: int
    prefix: str  # public: listed, and finds the key
    secret_hash: bytes  # a hash of the secret (hash_scheme); the secret is not stored
    expiration: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)
    last_seen: datetime | None = None
    hash_scheme: str = "sha256"  # as PreAuthKey.hash_scheme
    # What the full key starts with (meshscale.auth.masked_key): "mskey-api-" for ours,
    # "hskey-api-" for one imported from headscale 0.28+, "" for headscale's older <7>.<32> keys.
    key_form: str = "mskey-api-"

    def expired(self, now: datetime | None = None) -> bool:
        return self.expiration is not None and self.expiration <= (now or utcnow())


@dataclass(slots=True)
class Node:
    id: int
    machine_key: bytes
    node_key: bytes
    hostname: str
    given_name: str
    user_id: int | None  # None for tagged nodes
    ipv4: str | None
    ipv6: str | None
    disco_key: bytes = b"\x00" * 32
    tags: tuple[str, ...] = ()
    hostinfo: dict[str, Any] = field(default_factory=dict)
    endpoints: tuple[str, ...] = ()
    home_derp: int = 0
    created_at: datetime = field(default_factory=utcnow)
    last_seen: datetime | None = None
    expiry: datetime | None = None  # node key expiry; None: never
    auth_key_id: int | None = None
    ephemeral: bool = False
    register_method: str = "authkey"
    approved_routes: tuple[str, ...] = ()
    capver: int = 0
    # False while the node waits for an admin's ``nodes approve`` (``node.approval: manual``):
    # it is in no peer's map and gets none of its own (tailcfg MachineAuthorized false).
    approved: bool = True
    # Runtime only, never persisted.
    online: bool = False

    def expired(self, now: datetime | None = None) -> bool:
        return self.expiry is not None and self.expiry <= (now or utcnow())

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a)

    @property
    def prefixes(self) -> list[str]:
        out = []
        if self.ipv4:
            out.append(f"{self.ipv4}/32")
        if self.ipv6:
            out.append(f"{self.ipv6}/128")
        return out

    @property
    def routable_ips(self) -> tuple[str, ...]:
        # Hostinfo is checked and normalised where it enters (meshscale.clientinput: masked
        # prefixes in canonical form) and repaired at load, so no parsing here: routers may
        # advertise thousands of routes and this is read on every route decision.
        value = self.hostinfo.get("RoutableIPs") or ()
        return tuple(p for p in value if isinstance(p, str))
