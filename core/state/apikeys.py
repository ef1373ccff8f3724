"""API keys: made, listed, expired, deleted, and checked on every /api/v1 request.

Apart from State (users, keys, nodes) because nothing a client does touches them and no change
event follows from them; the same storage writes them, one transaction per change, memory after.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from meshscale import auth, keyhash
from meshscale.errors import AuthError, MeshscaleError, NotFoundError, StorageError
from meshscale.state.models import ApiKey, utcnow
from meshscale.storage.base import DeleteApiKey, PutApiKey, PutCounter, Snapshot, Storage

_COUNTER = "apikey"
# lastSeen is written at most this often per key: a busy script would otherwise cost a database
# write per request, and "seen within the last minute" is all anyone reads from it.
SEEN_INTERVAL = timedelta(minutes=1)


class ApiKeys:
    def __init__(self, storage: Storage, snap: Snapshot) -> None:
        self.storage = storage
        self.keys: dict[int, ApiKey] = {k.id: k for k in snap.api_keys}
        self._by_prefix: dict[str, ApiKey] = {k.prefix: k for k in snap.api_keys}
        self._hwm = max(snap.counters.get(_COUNTER, 0), max(self.keys, default=0))
        self._bcrypt_budget = keyhash.BcryptBudget()  # keys imported from headscale

    def _put(self, key: ApiKey) -> None:
        self.keys[key.id] = key
        self._by_prefix[key.prefix] = key

    def create(self, expiration: timedelta | None = timedelta(days=90)) -> tuple[ApiKey, str]:
        """A new key; returns the record and the full key, which is shown once."""
        if expiration is not None and expiration.total_seconds() <= 0:
            raise MeshscaleError("an API key's expiration must be in the future")
        full, prefix, secret_hash = auth.new_api_key()
        now = utcnow()
        key = ApiKey(id=self._hwm + 1, prefix=prefix, secret_hash=secret_hash,
                     expiration=now + expiration if expiration else None, created_at=now)
        self.storage.apply([PutApiKey(key), PutCounter(_COUNTER, key.id)])
        self._hwm = key.id
        self._put(key)
        return key, full

    def find(self, ref: str | int) -> ApiKey:
        """A key by id or prefix: as listed (``mskey-api-<prefix>-***``, ``<prefix>***``),
        ``mskey-api-<prefix>`` or the bare prefix."""
        text = str(ref).strip()
        if text.isdigit() and int(text) in self.keys:
            return self.keys[int(text)]
        if text in self._by_prefix:  # headscale's prefixes may hold "-"
            return self._by_prefix[text]
        listed = auth.unmasked_prefix(text, auth.API_KEY_FORMS)
        if listed is not None and listed in self._by_prefix:
            return self._by_prefix[listed]
        parts = auth.split_api_key(text)
        # A listing's "mskey-api-<prefix>" or headscale's "hskey-api-<prefix>-***": both
        # prefixes are 12 characters.
        prefix = parts[0] if parts else \
            text.removeprefix(auth.API_KEY_PREFIX).removeprefix("hskey-api-")[:12]
        key = self._by_prefix.get(prefix)
        if key is None:
            raise NotFoundError(f"API key {text[:24]!r} not found")
        return key

    def expire(self, ref: str | int) -> ApiKey:
        key = self.find(ref)
        if key.expired():
            return key
        updated = replace(key, expiration=utcnow())
        self.storage.apply([PutApiKey(updated)])
        self._put(updated)
        return updated

    def delete(self, ref: str | int) -> ApiKey:
        key = self.find(ref)
        self.storage.apply([DeleteApiKey(key.id)])
        del self.keys[key.id]
        del self._by_prefix[key.prefix]
        return key

    def check(self, presented: str) -> ApiKey:
        """The key a request presents: known, secret matching, unexpired. Every refusal reads
        the same, so a caller learns nothing about which part was wrong."""
        parts = auth.split_api_key(presented)
        if parts is None:
            raise AuthError("invalid API key")
        prefix, secret = parts
        key = self._by_prefix.get(prefix)
        matches = keyhash.matches(secret, key.secret_hash if key else None,
                                  key.hash_scheme if key else keyhash.SHA256, self._bcrypt_budget)
        if key is None or not matches or key.expired():
            raise AuthError("invalid API key")
        if key.hash_scheme != keyhash.SHA256:
            key = self._rehash(key, secret)
        return key

    def seen(self, key: ApiKey, now: datetime | None = None) -> ApiKey:
        """Note a use of ``key`` (a request it authenticated): its lastSeen, stored at most once
        a SEEN_INTERVAL. A StorageError leaves the key as it was."""
        now = now or utcnow()
        live = self.keys.get(key.id)
        if live is None:
            return key  # deleted meanwhile
        if live.last_seen is not None and now - live.last_seen < SEEN_INTERVAL:
            return live
        updated = replace(live, last_seen=now)
        self.storage.apply([PutApiKey(updated)])
        self._put(updated)
        return updated

    def _rehash(self, key: ApiKey, secret: str) -> ApiKey:
        """An imported key's bcrypt hash replaced by our SHA-256 once its secret is known right
        (meshscale.keyhash); if that write fails the key still works, bcrypt-checked."""
        secret_hash, scheme = keyhash.rehashed(secret)
        updated = replace(key, secret_hash=secret_hash, hash_scheme=scheme)
        try:
            self.storage.apply([PutApiKey(updated)])
        except StorageError:
            return key
        self._put(updated)
        return updated
