"""Pending interactive logins: one per machine, a ceiling, a deadline, single use."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from meshscale import auth
from meshscale.auth import AUTH_ID
from meshscale.control.interactive import PendingLogins
from meshscale.control.register import RegisterRefused
from meshscale.errors import NotFoundError


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro_fn())


def test_one_auth_id_per_machine_and_single_use() -> None:
    async def go() -> None:
        p = PendingLogins(ttl=60, limit=10)
        a = p.start(b"m" * 32, b"n" * 32, {"Hostname": "a"}, 130)
        assert AUTH_ID.fullmatch(a.auth_id)
        again = p.start(b"m" * 32, b"k" * 32, {"Hostname": "a2"}, 131)
        assert again is a and a.node_key == b"k" * 32 and len(p) == 1
        other = p.start(b"o" * 32, b"n" * 32, {}, 130)
        assert other.auth_id != a.auth_id
        p.finish(a, "refused")
        assert a.outcome.result() == "refused"
        with pytest.raises(NotFoundError, match="no login is waiting"):
            p.find(a.auth_id)
        with pytest.raises(NotFoundError):
            p.find("../../etc")
        # Finished: the same machine gets a new id.
        assert p.start(b"m" * 32, b"n" * 32, {}, 130).auth_id != a.auth_id
    run(go)


def test_ceiling() -> None:
    async def go() -> None:
        p = PendingLogins(ttl=60, limit=2)
        p.start(b"a" * 32, b"n" * 32, {}, 1)
        p.start(b"b" * 32, b"n" * 32, {}, 1)
        with pytest.raises(RegisterRefused, match="too many logins"):
            p.start(b"c" * 32, b"n" * 32, {}, 1)
        p.close()
        assert len(p) == 0
    run(go)


def test_expiry_tells_the_waiting_client() -> None:
    async def go() -> None:
        p = PendingLogins(ttl=0.05, limit=2)
        a = p.start(b"a" * 32, b"n" * 32, {}, 1)
        outcome = await asyncio.wait_for(asyncio.shield(a.outcome), 2)
        assert isinstance(outcome, str) and "expired" in outcome
        assert p.get(a.auth_id) is None and len(p) == 0
    run(go)


def test_auth_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """An admin pastes the id after a flag (``nodes register --key ID``): argparse takes one
    starting with "-" for an option. The random source is made to give such an id first."""
    given = iter(["-" + "a" * 23, "_" + "b" * 23])
    monkeypatch.setattr(auth.secrets, "token_urlsafe", lambda n: next(given))
    assert auth.new_auth_id() == "_" + "b" * 23
    # And for real: many fresh ids, none with a leading dash (1 in 64 each before).
    monkeypatch.undo()
    assert not any(auth.new_auth_id().startswith("-") for _ in range(2000))
