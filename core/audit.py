"""One INFO line per node lifecycle step an operator wants in the log: registered, logged out,
expired, deleted, routes approved. Each names the node and its user (or tags), never a key."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshscale.state.models import Node
    from meshscale.state.store import State

log = logging.getLogger("meshscale.audit")


def node_line(state: State, node: Node, what: str) -> None:
    owner = state.owner_name(node)
    who = f"user {owner}" if owner else f"tags {','.join(node.tags) or '-'}"
    log.info("node %d %s (%s, %s): %s", node.id, node.given_name, who,
             node.ipv4 or node.ipv6 or "no address", what)
