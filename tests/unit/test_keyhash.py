"""Key forms (ours and headscale's) and the check of a secret by its row's hash scheme.

The bcrypt hashes are made here as Go's golang.org/x/crypto/bcrypt makes them at headscale's
cost (``$2a$10$``); the key forms are those of headscale's hscontrol/db/preauth_keys.go and
api_key.go (0.23 to 0.29).
"""

from __future__ import annotations

import bcrypt
import pytest

from meshscale import auth, keyhash
from meshscale.errors import AuthError

PREFIX = "ab-_cdEF0123"  # base64url: headscale's prefixes may hold "-" and "_"
SECRET = "S" * 30 + "-_" + "t" * 32  # 64 characters


def go_hash(secret: str) -> bytes:
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(10, prefix=b"2a"))


def test_preauth_key_forms() -> None:
    full, prefix, _ = auth.new_key()
    assert auth.split_key(full) == (prefix, full.split("-", 3)[3])
    assert auth.split_key(f"hskey-auth-{PREFIX}-{SECRET}") == (PREFIX, SECRET)
    legacy = "0123456789ab" + "c" * 36
    assert auth.split_key(legacy) == ("0123456789ab", "c" * 36)
    assert auth.legacy_headscale_key(legacy) == ("0123456789ab", "c" * 36)
    for bad in (f"hskey-auth-{PREFIX}-{SECRET}x", f"hskey-auth-{PREFIX}-{SECRET[:-1]}",
                f"hskey-auth-{PREFIX[:-1]}-{SECRET}", f"hskey-auth-{PREFIX}-{SECRET[:-1]}!",
                legacy + "0", legacy.upper(), "", f"hskey-api-{PREFIX}-{SECRET}"):
        assert auth.split_key(bad) is None, bad
    assert auth.legacy_headscale_key(f"hskey-auth-{PREFIX}-{SECRET}") is None


def test_api_key_forms() -> None:
    full, prefix, _ = auth.new_api_key()
    assert auth.split_api_key(full) is not None and auth.split_api_key(full)[0] == prefix
    assert auth.split_api_key(f"hskey-api-{PREFIX}-{SECRET}") == (PREFIX, SECRET)
    assert auth.split_api_key("aB-_9xZ." + "q" * 32) == ("aB-_9xZ", "q" * 32)  # up to 0.27
    for bad in ("aB-_9x." + "q" * 32, "aB-_9xZ." + "q" * 31, "aB-_9xZ." + "q" * 33,
                f"hskey-api-{PREFIX}-{SECRET}=", f"hskey-auth-{PREFIX}-{SECRET}"):
        assert auth.split_api_key(bad) is None, bad


def test_keys_are_listed_masked_as_headscale_lists_them_and_found_again() -> None:
    """headscale v0.29.2 (hscontrol/types/api_key.go, preauth_key.go): a 12-character prefix
    as hskey-api-<prefix>-*** (hskey-auth-...), a legacy 7-character API prefix as <prefix>***."""
    api = auth.API_KEY_FORMS
    for form, prefix, shown in (("mskey-api-", "0123456789ab", "mskey-api-0123456789ab-***"),
                                ("hskey-api-", PREFIX, f"hskey-api-{PREFIX}-***"),
                                ("", "aB-_9x-", "aB-_9x-***")):  # a legacy prefix ending in -
        assert auth.masked_key(form, prefix) == shown
        assert auth.unmasked_prefix(shown, api) == prefix
    for form, prefix in (("mskey-auth-", "0123456789ab"), ("hskey-auth-", PREFIX),
                         ("", "0123456789ab")):
        assert auth.unmasked_prefix(auth.masked_key(form, prefix)) == prefix
    # Not a listing's text: a bare prefix, a full key, another kind's form, nothing masked.
    for text in ("0123456789ab", f"hskey-api-{PREFIX}-{SECRET}", "***", "mskey-api--***",
                 f"hskey-api-{PREFIX}***"):
        assert auth.unmasked_prefix(text, api) is None, text


def test_a_secret_is_checked_by_its_rows_scheme() -> None:
    budget = keyhash.BcryptBudget()
    stored = go_hash(SECRET)
    assert keyhash.is_bcrypt_hash(stored) and stored.startswith(b"$2a$10$")
    assert keyhash.matches(SECRET, stored, keyhash.BCRYPT, budget)
    assert not keyhash.matches(SECRET[:-1] + "u", stored, keyhash.BCRYPT, budget)
    assert not keyhash.matches("x" * 80, stored, keyhash.BCRYPT, budget)  # over 72 bytes
    # A bcrypt hash read as SHA-256 (a row marked wrongly) matches nothing.
    assert not keyhash.matches(SECRET, stored, keyhash.SHA256, budget)
    assert keyhash.matches(SECRET, keyhash.sha256(SECRET), keyhash.SHA256, budget)
    assert not keyhash.matches(SECRET, None, keyhash.SHA256, budget)  # no such key
    assert keyhash.rehashed(SECRET) == (keyhash.sha256(SECRET), keyhash.SHA256)
    for bad in (b"", keyhash.sha256(SECRET), stored[:-1], b"$1$" + stored[3:],
                stored[:4] + b"xx" + stored[6:]):
        assert not keyhash.is_bcrypt_hash(bad)


def test_the_bcrypt_budget_bounds_checks_per_second() -> None:
    now = [100.0]
    budget = keyhash.BcryptBudget(per_second=2, burst=3, clock=lambda: now[0])
    stored = bcrypt.hashpw(b"secret", bcrypt.gensalt(4))  # cheap: the budget is under test
    for _ in range(3):
        assert not keyhash.matches("wrong", stored, keyhash.BCRYPT, budget)
    with pytest.raises(AuthError, match="try again in a few seconds"):
        keyhash.matches("secret", stored, keyhash.BCRYPT, budget)
    # SHA-256 rows are never held back.
    assert keyhash.matches("s", keyhash.sha256("s"), keyhash.SHA256, budget)
    now[0] += 0.5  # one token back
    assert keyhash.matches("secret", stored, keyhash.BCRYPT, budget)
    with pytest.raises(AuthError):
        keyhash.matches("secret", stored, keyhash.BCRYPT, budget)
    now[0] += 60  # refills to the burst, no further
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
