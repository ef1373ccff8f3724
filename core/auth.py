"""Ways to log in: pre-auth keys, API keys, and the contract of login providers.

Login providers
---------------
A device without a key gets an AuthURL and waits (control/interactive.py). Which URL is the
first answer of the providers plugins offer (``meshscale_auth_providers``), in order, falling back
to the built-in interactive page ``/register/<auth-id>`` where an admin runs
``meshscale auth register``. A provider then completes the waiting login through ``Logins``
with the ``Identity`` it established (or refuses it); core finds or makes the user by
(provider, subject), registers the node through the node lifecycle and answers the waiting client.

Keys
----

A pre-auth key reads ``mskey-auth-<prefix>-<secret>``, an API key ``mskey-api-<prefix>-<secret>``
(headscale's ``hskey-api-...`` shape). The prefix is public (it names the key in listings
and finds it); the secret is 256 random bits, of which only a SHA-256 is stored. A slow hash would
add nothing for a secret of that entropy, and constant-time comparison keeps timing quiet.

Keys imported from headscale keep the forms headscale gave them out in, so they go on working
(meshscale.keyhash checks them against the bcrypt hashes headscale kept):

- pre-auth keys of headscale 0.28 and later: ``hskey-auth-<12>-<64>`` (base64url characters,
  so the prefix may hold ``-``; the parts have fixed lengths);
- older pre-auth keys: 48 hex digits, kept by headscale in plain text; meshscale stores the first
  12 as the prefix and a SHA-256 of the other 36;
- API keys of headscale 0.28 and later: ``hskey-api-<12>-<64>``; older ones ``<7>.<32>``.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from meshscale import keyhash

# The id of a login or an SSH check waiting for someone (``/register/<id>``, ``auth register
# --auth-id``): 144 random bits in base64url. Never with a leading "-": an admin pastes it after a
# flag (``nodes register --key ID``), and argparse would read "-abc..." as an option (1 in 64
# before), so new ids never start with one; ids typed in are still checked by AUTH_ID alone.
AUTH_ID = re.compile(r"[A-Za-z0-9_-]{24}")


def new_auth_id() -> str:
    while (auth_id := secrets.token_urlsafe(18)).startswith("-"):
        pass
    return auth_id


KEY_PREFIX = "mskey-auth-"
_PREFIX_LEN = 12
_FORMAT = re.compile(r"^mskey-auth-([A-Za-z0-9]{12})-([A-Za-z0-9_-]{32,128})$")


def new_key() -> tuple[str, str, bytes]:
    """(full key to show once, public prefix, secret hash to store)."""
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    secret = secrets.token_urlsafe(32)
    return f"{KEY_PREFIX}{prefix}-{secret}", prefix, hash_secret(secret)


def masked_key(form: str, prefix: str) -> str:
    """A pre-auth or API key as listings show it, as headscale 0.28+ does
    (``hskey-auth-<prefix>-***``, ``hskey-api-<prefix>-***``): enough to tell keys apart and find
    one again, never the secret. ``form`` is what the full key starts with ("" for headscale's
    older keys, 48 hex digits or ``<7>.<32>``, written ``<prefix>***``)."""
    return f"{form}{prefix}-***" if form else f"{prefix}***"


def unmasked_prefix(text: str, forms: tuple[str, ...] = (KEY_PREFIX, "hskey-auth-")
                    ) -> str | None:
    """The prefix in a key as a listing shows it (masked_key's output for one of ``forms``, or
    a form-less ``<prefix>***``), or None."""
    for form in forms:
        if text.startswith(form) and text.endswith("-***"):
            return text[len(form):-4] or None
    if text.endswith("***") and not text.startswith(forms):
        return text[:-3] or None
    return None


API_KEY_PREFIX = "mskey-api-"
#: The forms an API key's full text starts with (ApiKey.key_form): ours, headscale 0.28+'s.
API_KEY_FORMS = (API_KEY_PREFIX, "hskey-api-")
_API_FORMAT = re.compile(r"^mskey-api-([A-Za-z0-9]{12})-([A-Za-z0-9_-]{32,128})$")


def new_api_key() -> tuple[str, str, bytes]:
    """(full API key to show once, public prefix, secret hash to store)."""
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    secret = secrets.token_urlsafe(48)
    return f"{API_KEY_PREFIX}{prefix}-{secret}", prefix, hash_secret(secret)


_B64URL = "[A-Za-z0-9_-]"
_HS_AUTH = re.compile(rf"^hskey-auth-({_B64URL}{{12}})-({_B64URL}{{64}})$")
_HS_LEGACY_AUTH = re.compile(r"^([0-9a-f]{12})([0-9a-f]{36})$")
_HS_API = re.compile(rf"^hskey-api-({_B64URL}{{12}})-({_B64URL}{{64}})$")
_HS_LEGACY_API = re.compile(rf"^({_B64URL}{{7}})\.({_B64URL}{{32}})$")


def _split(key: str, *forms: re.Pattern[str]) -> tuple[str, str] | None:
    text = key.strip()
    for form in forms:
        m = form.match(text)
        if m:
            return m.group(1), m.group(2)
    return None


def split_api_key(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of an API key (ours or headscale's), or None if ``key`` is not one."""
    return _split(key, _API_FORMAT, _HS_API, _HS_LEGACY_API)


def split_key(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of a pre-auth key (ours or headscale's), or None if it is not one."""
    return _split(key, _FORMAT, _HS_AUTH, _HS_LEGACY_AUTH)


def legacy_headscale_key(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of a pre-auth key headscale kept in plain text (48 hex digits)."""
    return _split(key, _HS_LEGACY_AUTH)


def hash_secret(secret: str) -> bytes:
    return keyhash.sha256(secret)


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


# -- login providers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a provider says logged in. ``subject`` is unique and stable within ``provider`` (for
    OIDC: the issuer and the ``sub`` claim); the user is found by the two together only."""

    provider: str
    subject: str
    name: str  # preferred user name for a new user
    display_name: str = ""
    email: str = ""
    picture: str = ""
    groups: tuple[str, ...] = ()  # refreshed on each login; policy group:<name> includes them
    # headscale's map_legacy_users: when no user has this identity yet, a user of this name
    # that no login provider owns (made before logins were bound to identities) becomes its
    # user. Only set for an e-mail the provider verified; "" never matches.
    legacy_name: str = ""


class Logins(Protocol):
    """What a provider may do with waiting logins (the running server offers it)."""

    def waiting(self, auth_id: str) -> Mapping[str, Any] | None:
        """``{"authId", "kind", "hostname", "os"}`` of a waiting login, or None (used, refused,
        expired or never issued). ``kind`` is ``"register"`` for a device logging in, or
        ``"ssh-check"`` for a Tailscale SSH check (control/sshcheck.py), which also names
        ``destination`` and ``localUser``; ``hostname`` is then the source device's."""

    def complete(self, auth_id: str, identity: Identity, method: str,
                 expiry: datetime | None = None) -> Mapping[str, Any]:
        """Register the waiting node to the identity's user; its client proceeds at once;
        ``expiry``: when its node key expires (None: the server's node.expiry).
        Returns the node as ``GET /v1/nodes`` shows it; raises MeshscaleError (one line for the
        person) if the login is no longer waiting or the registration is refused.
        For an SSH check it approves the check if the identity's (existing) user owns the
        source device, and returns the check with ``"approved": True``."""

    def reject(self, auth_id: str, why: str) -> None:
        """Refuse the waiting login; the client shows ``why``."""


class AuthProvider(Protocol):
    """A way to log in, offered by a plugin's ``meshscale_auth_providers``."""

    @property
    def name(self) -> str: ...

    def auth_url(self, auth_id: str, hostinfo: Mapping[str, Any]) -> str | None:
        """Where the device's user is sent to log in (the AuthURL), or None to leave this login
        to the next provider (the last is the built-in admin page)."""
