"""Pre-auth keys and API keys: format, hashing at rest, constant-time checks.

A pre-auth key reads ``mskey-auth-<prefix>-<secret>``, an API key ``mskey-api-<prefix>-<secret>``
(headscale's ``hskey-api-...`` shape). The prefix is public (it names the key in listings
and finds it); the secret is 256 random bits, of which only a SHA-256 is stored. A slow hash would
add nothing for a secret of that entropy, and constant-time comparison keeps timing quiet.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "mskey-auth-"
_PREFIX_LEN = 12
_FORMAT = re.compile(r"^mskey-auth-([A-Za-z0-9]{12})-([A-Za-z0-9_-]{32,128})$")


def new_key() -> tuple[str, str, bytes]:
    """(full key to show once, public prefix, secret hash to store)."""
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    secret = secrets.token_urlsafe(32)
    return f"{KEY_PREFIX}{prefix}-{secret}", prefix, hash_secret(secret)


API_KEY_PREFIX = "mskey-api-"
_API_FORMAT = re.compile(r"^mskey-api-([A-Za-z0-9]{12})-([A-Za-z0-9_-]{32,128})$")


def new_api_key() -> tuple[str, str, bytes]:
    """(full API key to show once, public prefix, secret hash to store)."""
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    secret = secrets.token_urlsafe(48)
    return f"{API_KEY_PREFIX}{prefix}-{secret}", prefix, hash_secret(secret)


def split_api_key(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of an API key, or None if ``key`` is not one."""
    m = _API_FORMAT.match(key.strip())
    return (m.group(1), m.group(2)) if m else None


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_key(key: str) -> tuple[str, str] | None:
    """(prefix, secret), or None if ``key`` is not in our format."""
    m = _FORMAT.match(key.strip())
    return (m.group(1), m.group(2)) if m else None


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
