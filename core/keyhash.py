"""Checking a presented key's secret against the stored hash, by the scheme its row names.

meshscale's own keys store a SHA-256 of a 256-bit secret (``sha256``; meshscale.auth says why
that is enough). Keys imported from headscale keep the bcrypt hash headscale made (``bcrypt``,
cost 10: about 50 ms of CPU per check), so they go on working as they are. The first time such a
key is presented with its right secret, its owner re-hashes it to SHA-256 (``rehashed``), so
bcrypt runs about once per imported key rather than on every request. Until then a stranger who
knows an imported key's public prefix could make the server run bcrypt on every guess, on the
event loop: a ``BcryptBudget`` bounds that to a few checks a second per key store.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

import bcrypt

from meshscale.errors import AuthError

SHA256 = "sha256"
BCRYPT = "bcrypt"
SCHEMES = (SHA256, BCRYPT)

_UNKNOWN = b"\x00" * 32  # compared against when the prefix is unknown: timing tells nothing


def sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def is_bcrypt_hash(stored: bytes) -> bool:
    """The shape of a bcrypt hash (``$2a$10$`` + 53 characters), as headscale's Go writes it."""
    return len(stored) == 60 and stored[:4] in (b"$2a$", b"$2b$", b"$2y$") \
        and stored[4:6].isdigit() and stored[6:7] == b"$"


class BcryptBudget:
    """A token bucket: at most ``burst`` bcrypt checks at once, refilled at ``per_second``."""

    def __init__(self, per_second: float = 4.0, burst: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def matches(secret: str, stored: bytes | None, scheme: str, budget: BcryptBudget) -> bool:
    """Whether ``secret`` is the one ``stored`` was made from. ``stored`` None (no such key)
    is compared all the same, so timing does not tell a wrong prefix from a wrong secret.
    Raises AuthError when the bcrypt budget is spent (the same request may work shortly)."""
    if stored is None or scheme != BCRYPT:
        return hmac.compare_digest(sha256(secret), stored if stored is not None else _UNKNOWN)
    if not budget.take():
        raise AuthError("too many attempts with keys imported from headscale; "
                        "try again in a few seconds")
    try:
        return bcrypt.checkpw(secret.encode(), stored)
    except ValueError:  # a secret over bcrypt's 72 bytes, or a damaged hash: not a match
        return False


def rehashed(secret: str) -> tuple[bytes, str]:
    """The (hash, scheme) a key is stored with once its secret has been seen right."""
    return sha256(secret), SHA256
