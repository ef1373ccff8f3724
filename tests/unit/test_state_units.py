from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from meshscale import auth
from meshscale.errors import AuthError, MeshscaleError, StorageError
from meshscale.state.ipalloc import AddressPoolExhausted, IPAllocator
from meshscale.state.names import sanitize, unique_name
from meshscale.state.store import State
from tests.conftest import Backend


def test_sanitize_and_dedupe() -> None:
    assert sanitize("My Laptop.local") == "my-laptop-local"
    assert sanitize("---") == "node"
    assert len(sanitize("x" * 100)) == 63
    taken = {"web"}
    other = unique_name("web", taken)
    assert other.startswith("web-") and len(other) == 12 and other not in taken
    assert unique_name("db", taken) == "db"


def test_ip_allocation_sequential_skips_reserved_and_reuses() -> None:
    a = IPAllocator("100.64.0.0/10")
    assert [a.allocate() for _ in range(3)] == ["100.64.0.1", "100.64.0.2", "100.64.0.3"]
    a.release("100.64.0.2")
    small = IPAllocator("100.115.91.252/30")
    # .252 is the network address, .255 broadcast: two usable addresses.
    assert [small.allocate(), small.allocate()] == ["100.115.91.253", "100.115.91.254"]
    with pytest.raises(AddressPoolExhausted):
        small.allocate()
    r = IPAllocator("fd7a:115c:a1e0::/48", "random")
    assert ipaddress.ip_address(r.allocate()) in ipaddress.ip_network("fd7a:115c:a1e0::/48")


def test_key_format_and_hash_at_rest() -> None:
    full, prefix, digest = auth.new_key()
    assert full.startswith(f"mskey-auth-{prefix}-")
    parts = auth.split_key(full)
    assert parts is not None and parts[0] == prefix
    assert auth.secret_matches(parts[1], digest)
    assert not auth.secret_matches(parts[1] + "x", digest)
    assert parts[1] not in digest.hex()


def make_state(tmp_path: Path, backend: Backend) -> State:
    return State(backend.config(tmp_path), backend.storage(tmp_path))


def test_single_use_key_is_consumed_atomically(tmp_path: Path, backend: Backend) -> None:
    st = make_state(tmp_path, backend)
    user = st.create_user("alice")
    _, key = st.create_key(user)
    rec = st.check_auth_key(key)
    st.register_with_key(rec, b"m" * 32, b"n" * 32, {"Hostname": "a"}, [], 130)
    with pytest.raises(AuthError, match="already used"):
        st.check_auth_key(key)
    # The consumption is on disk too (closed first: one storage per database at a time).
    st.storage.close()
    reloaded = make_state(tmp_path, backend)
    reloaded.load(reloaded.storage.load())
    assert next(iter(reloaded.keys.values())).used is True
    assert reloaded.nodes[1].ipv4 == "100.64.0.1"


def test_failed_write_changes_nothing(tmp_path: Path, backend: Backend) -> None:
    st = make_state(tmp_path, backend)
    user = st.create_user("alice")
    _rec, key = st.create_key(user)
    st.register_with_key(st.check_auth_key(key), b"m" * 32, b"n" * 32, {"Hostname": "a"}, [], 1)
    _, key2 = st.create_key(user)
    rec2 = st.check_auth_key(key2)
    # Same node key as the first node: the database's unique constraint refuses the write.
    with pytest.raises(StorageError):
        st.register_with_key(rec2, b"o" * 32, b"n" * 32, {"Hostname": "b"}, [], 1)
    assert len(st.nodes) == 1 and st.keys[rec2.id].used is False
    assert "100.64.0.2" not in st.v4.used
    snap = st.storage.load()
    assert len(snap.nodes) == 1 and not next(k for k in snap.keys if k.id == rec2.id).used


def test_user_with_nodes_cannot_be_destroyed(tmp_path: Path, backend: Backend) -> None:
    st = make_state(tmp_path, backend)
    user = st.create_user("alice")
    _, key = st.create_key(user)
    st.register_with_key(st.check_auth_key(key), b"m" * 32, b"n" * 32, {"Hostname": "a"}, [], 1)
    with pytest.raises(MeshscaleError, match="still has nodes"):
        st.delete_user("alice")
    with pytest.raises(MeshscaleError, match="already exists"):
        st.create_user("alice")


def test_two_storages_in_one_process_stay_apart(tmp_path: Path, backend: Backend) -> None:
    """Several servers may share a process (tests do): each storage writes and reads only its
    own database, whichever was opened last."""
    first = Backend("sqlite", {"type": "sqlite"}).storage(tmp_path / "first")
    second = backend.storage(tmp_path / "second")
    try:
        one = State(Backend("sqlite").config(tmp_path / "first"), first)
        one.create_user("only-in-first")
        two = State(backend.config(tmp_path / "second"), second)
        two.create_user("only-in-second")
        assert [u.name for u in first.load().users] == ["only-in-first"]
        assert [u.name for u in second.load().users] == ["only-in-second"]
    finally:
        first.close()
        second.close()
