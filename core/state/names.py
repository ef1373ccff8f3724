"""MagicDNS-safe given names, sanitized and deduplicated the way headscale does it."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Container

MAX_LABEL = 63
_INVALID = re.compile(r"[^a-z0-9-]+")
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
SUFFIX_LEN = 8


def sanitize(hostname: str) -> str:
    """Lower-case, invalid runs to '-', trimmed to one DNS label. Never empty."""
    name = _INVALID.sub("-", hostname.strip().lower())
    name = name.strip("-")[:MAX_LABEL].strip("-")
    return name or "node"


def unique_name(hostname: str, taken: Container[str]) -> str:
    """``sanitize(hostname)``, or with a random 8-character suffix if that is taken."""
    base = sanitize(hostname)
    if base not in taken:
        return base
    stem = base[: MAX_LABEL - SUFFIX_LEN - 1].rstrip("-")
    while True:
        suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(SUFFIX_LEN))
        candidate = f"{stem}-{suffix}"
        if candidate not in taken:
            return candidate
