"""Issue 11, items 5, 6, 7 and 11: node state a client must not be able to bend (self-assigned
tags, route primaries on dead routers, expired nodes still talking, reused IDs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from meshscale.server import Server
from meshscale.simclient import SimNode
from tests.plugin.simnodes import join
from tests.plugin.test_bad_input import still_serving, unchanged

pytestmark = pytest.mark.asyncio


# -- item 5: no policy, no self-assigned tags ------------------------------------------------


@pytest.mark.parametrize("plugins", [["sqlite"], ["sqlite", "policy"]])
async def test_request_tags_without_a_policy_are_refused(
        meshscale_server_factory: Callable[..., Any], plugins: list[str]) -> None:
    server: Server = await meshscale_server_factory(plugins=plugins)
    assert server.state is not None and server.policy_text is None
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    node = SimNode("sneaky")
    node.hostinfo["RequestTags"] = ["tag:prod"]
    await node.conn.connect("127.0.0.1", server.main_port)
    resp = await unchanged(server, lambda: node.register(key))
    assert "no policy is loaded" in resp["Error"] and "tag:prod" in resp["Error"], resp
    assert not server.state.nodes
    # A pre-auth key made with tags (by an admin) still tags the node.
    _, tagged_key = server.state.create_key(None, tags=["tag:prod"])
    _, _, first = await join(server, tagged_key, "tagged")
    assert first is not None and first["Node"]["Tags"] == ["tag:prod"]
    # And without RequestTags the user's key works as before.
    _, _, plain = await join(server, key, "plain")
    assert plain is not None and "Tags" not in plain["Node"]
    await still_serving(server)
