"""Users and pre-auth keys: the accounts part of State."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from meshscale import auth, keyhash
from meshscale.errors import AuthError, MeshscaleError, NotFoundError, StorageError
from meshscale.state.changes import UserChanged
from meshscale.state.models import PreAuthKey, User, utcnow
from meshscale.state.policyview import PolicyBridge
from meshscale.storage.base import (
    DeleteKey,
    DeleteUser,
    PutCounter,
    PutKey,
    PutUser,
)

USERNAME_MAX = 63


class Accounts(PolicyBridge):
    """Users (created, renamed, deleted) and pre-auth keys (made, expired, checked)."""

    # -- users -----------------------------------------------------------------------------------

    def user(self, ref: str | int) -> User:
        """A user by id or name (``--user`` takes either)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            u = self.users.get(int(ref))
            if u is not None:
                return u
        for u in self.users.values():
            if u.name == ref:
                return u
        raise NotFoundError(f"user {ref!r} not found")

    def refresh_profile(self, u: User, display_name: str, email: str, picture: str,
                        groups: tuple[str, ...]) -> User:
        """A login provider's fresh view of the user (each login); policy sees new groups."""
        updated = replace(u, display_name=display_name or u.display_name,
                          email=email or u.email, picture=picture, groups=groups)
        if updated == u:
            return u
        self._write([PutUser(updated)])
        self.users[u.id] = updated
        self._notify_policy_user(updated)
        self._emit(UserChanged(u.id))
        return updated

    def by_identity(self, provider: str, provider_id: str) -> User | None:
        """The user a login provider's identity belongs to (never matched by e-mail)."""
        for u in self.users.values():
            if u.provider == provider and u.provider_id == provider_id:
                return u
        return None

    def bind_identity(self, u: User, provider: str, provider_id: str) -> User:
        """A user no login provider owned is bound to an identity (map_legacy_users)."""
        if u.provider_id:
            raise MeshscaleError(f"user {u.name!r} already belongs to a login identity")
        updated = replace(u, provider=provider, provider_id=provider_id)
        self._write([PutUser(updated)])
        self.users[u.id] = updated
        return updated

    @staticmethod
    def _check_username(name: str) -> None:
        if not name or len(name) > USERNAME_MAX or any(c.isspace() for c in name):
            raise MeshscaleError(
                f"invalid user name {name!r}: 1-{USERNAME_MAX} characters, no spaces"
            )

    def create_user(self, name: str, display_name: str = "", email: str = "",
                    provider: str = "", provider_id: str = "", picture: str = "",
                    groups: tuple[str, ...] = ()) -> User:
        self._check_username(name)
        if any(u.name == name for u in self.users.values()):
            raise MeshscaleError(f"user {name!r} already exists")
        uid, counter = self._next_id("user", self.users)
        u = User(id=uid, name=name, display_name=display_name, email=email, provider=provider,
                 provider_id=provider_id, picture=picture, groups=groups)
        self._write([PutUser(u), counter])
        self._hwm["user"] = uid
        self.users[u.id] = u
        self._notify_policy_user(u)
        return u

    def rename_user(self, ref: str | int, new_name: str) -> User:
        u = self.user(ref)
        self._check_username(new_name)
        if any(o.name == new_name and o.id != u.id for o in self.users.values()):
            raise MeshscaleError(f"user {new_name!r} already exists")
        updated = replace(u, name=new_name)
        self._write([PutUser(updated)])
        self.users[u.id] = updated
        self._notify_policy_user(updated)
        self._emit(UserChanged(u.id))
        return updated

    def delete_user(self, ref: str | int) -> User:
        u = self.user(ref)
        owned = [n.given_name for n in self.nodes.values() if n.user_id == u.id]
        if owned:
            raise MeshscaleError(
                f"user {u.name!r} still has nodes ({', '.join(sorted(owned))}); delete them first"
            )
        keys = [k for k in self.keys.values() if k.user_id == u.id]
        self._write([*(DeleteKey(k.id) for k in keys), DeleteUser(u.id)])
        for k in keys:
            del self.keys[k.id]
        del self.users[u.id]
        if self.policy_engine_hooks:
            self.policy_engine_hooks.user_removed(u.id)
        return u

    # -- pre-auth keys ---------------------------------------------------------------------------

    def create_key(
        self,
        user: User | None,
        reusable: bool = False,
        ephemeral: bool = False,
        expiration: timedelta | None = timedelta(hours=1),
        tags: Sequence[str] = (),
        preauthorized: bool = False,
    ) -> tuple[PreAuthKey, str]:
        """Make a key; returns the record and the full key, which is shown once.
        ``preauthorized``: the nodes it registers need no device approval."""
        for tag in tags:
            if not tag.startswith("tag:") or len(tag) <= 4:
                raise MeshscaleError(f"invalid tag {tag!r}: tags look like tag:name")
        if user is None and not tags:
            raise MeshscaleError("a key needs a user or at least one tag")
        full, prefix, secret_hash = auth.new_key()
        now = utcnow()
        key = PreAuthKey(
            id=self._next_id("key", self.keys)[0],
            prefix=prefix,
            secret_hash=secret_hash,
            user_id=user.id if user else None,
            reusable=reusable,
            ephemeral=ephemeral,
            expiration=now + expiration if expiration else None,
            created_at=now,
            tags=tuple(sorted(set(tags))),
            preauthorized=preauthorized,
        )
        self._write([PutKey(key), PutCounter("key", key.id)])
        self._hwm["key"] = key.id
        self.keys[key.id] = key
        return key, full

    def expire_key(self, ref: str | int) -> PreAuthKey:
        key = self.find_key(ref)
        updated = replace(key, expiration=utcnow())
        self._write([PutKey(updated)])
        self.keys[key.id] = updated
        return updated

    def delete_key(self, ref: str | int) -> PreAuthKey:
        key = self.find_key(ref)
        self._write([DeleteKey(key.id)])
        del self.keys[key.id]
        return key

    def find_key(self, ref: str | int) -> PreAuthKey:
        """A key by id, prefix, the key as listed (masked), or the full key (whose secret must
        then match)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            k = self.keys.get(int(ref))
            if k is not None:
                return k
        text = str(ref).strip()
        by_prefix = self._key_by_prefix(auth.unmasked_prefix(text) or text)
        if by_prefix is not None:
            return by_prefix
        parts = auth.split_key(text)
        if parts is not None:
            k = self._key_by_prefix(parts[0])
            if k is not None and keyhash.matches(parts[1], k.secret_hash, k.hash_scheme,
                                                 self._bcrypt_budget):
                return k
        raise NotFoundError(f"pre-auth key {text[:24]!r} not found")

    def _key_by_prefix(self, prefix: str) -> PreAuthKey | None:
        return next((k for k in self.keys.values() if k.prefix == prefix), None)

    def check_auth_key(self, text: str) -> PreAuthKey:
        """The key a client presents: it must exist, match, be unexpired and unused."""
        parts = auth.split_key(text)
        if parts is None:
            raise AuthError("invalid pre-auth key")
        prefix, secret = parts
        key = self._key_by_prefix(prefix)
        # Compare even when the prefix is unknown, so timing does not tell which part was wrong.
        if not keyhash.matches(secret, key.secret_hash if key else None,
                               key.hash_scheme if key else keyhash.SHA256,
                               self._bcrypt_budget) or key is None:
            raise AuthError("invalid pre-auth key")
        if key.expired():
            raise AuthError("pre-auth key expired")
        if key.used and not key.reusable:
            raise AuthError("pre-auth key already used")
        if key.hash_scheme != keyhash.SHA256:
            key = self._rehash_key(key, secret)
        return key

    def _rehash_key(self, key: PreAuthKey, secret: str) -> PreAuthKey:
        """An imported key's bcrypt hash replaced by our SHA-256 once its secret is known right
        (meshscale.keyhash); if that write fails the key still works, bcrypt-checked."""
        secret_hash, scheme = keyhash.rehashed(secret)
        updated = replace(key, secret_hash=secret_hash, hash_scheme=scheme)
        try:
            self._write([PutKey(updated)])
        except StorageError:
            return key
        self.keys[key.id] = updated
        return updated
