"""An API key's lastSeen: noted when the key authenticates a request, stored at most once a
minute per key (not a database write per request), shown by /api/v1 and ``apikeys list``. Real
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from meshscale.api.admin import create_admin_app
from meshscale.server import Server
from meshscale.state.apikeys import ApiKeys
from tests.conftest import Backend


def test_last_seen_is_stored_at_most_once_a_minute(tmp_path: Path, backend: Backend) -> None:
    storage = backend.storage(tmp_path)
    try:
        keys = ApiKeys(storage, storage.load())
        key, full = keys.create()
        other, _ = keys.create()
        assert key.last_seen is None
        t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

        def stored(key_id: int) -> datetime | None:
            (row,) = [k for k in storage.load().api_keys if k.id == key_id]
            return row.last_seen

        keys.seen(keys.check(full), t0)
        assert keys.keys[key.id].last_seen == t0 and stored(key.id) == t0
        for later in (1, 30, 59):  # within the minute: neither memory nor the database change
            keys.seen(keys.check(full), t0 + timedelta(seconds=later))
            assert keys.keys[key.id].last_seen == t0 and stored(key.id) == t0
        keys.seen(keys.check(full), t0 + timedelta(seconds=61))
        assert stored(key.id) == t0 + timedelta(seconds=61)
        assert keys.keys[other.id].last_seen is None and stored(other.id) is None
        # kept across a restart
        assert ApiKeys(storage, storage.load()).keys[key.id].last_seen == t0 + timedelta(
            seconds=61)
        keys.delete(key.id)
        keys.seen(key, t0 + timedelta(hours=1))  # a key deleted meanwhile is not written back
        assert key.id not in {k.id for k in storage.load().api_keys}
    finally:
        storage.close()


@pytest.mark.asyncio
async def test_a_request_notes_last_seen_and_both_apis_show_it(
        meshscale_server_factory: Callable[..., Any]) -> None:
    server: Server = await meshscale_server_factory()
    assert server.apikeys is not None
    used, full = server.apikeys.create()
    unused, _ = server.apikeys.create()
    before = datetime.now(UTC)

    def get(path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{server.main_port}{path}",
                                     headers={"Authorization": f"Bearer {full}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    # listed by the masked prefix (mskey-api-<prefix>-***), as headscale 0.29 lists its keys
    listed = {k["prefix"].removeprefix("mskey-api-").removesuffix("-***"): k
              for k in (await asyncio.to_thread(get, "/api/v1/apikey"))["apiKeys"]}
    seen = datetime.fromisoformat(listed[used.prefix]["lastSeen"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= seen <= datetime.now(UTC)
    assert listed[unused.prefix]["lastSeen"] is None
    # The CLI's view (the admin socket's route) shows the same time.
    resp = await create_admin_app(server).test_client().get("/v1/apikeys")
    shown = {k["prefix"].removeprefix("mskey-api-").removesuffix("-***"): k["lastSeen"]
             for k in await resp.get_json()}
    assert shown == {used.prefix: listed[used.prefix]["lastSeen"], unused.prefix: None}
    # Another request within the minute leaves it as it was.
    await asyncio.to_thread(get, "/api/v1/user")
    assert server.apikeys.keys[used.id].last_seen == seen
