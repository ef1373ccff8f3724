"""Tailscale SSH check mode: ``GET /machine/ssh/action/<src>/to/<dst>`` on the Noise channel.

A policy ``ssh`` rule with ``"action": "check"`` reaches the destination node as an SSHAction
whose ``holdAndDelegate`` is ``<server_url>/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID
?local_user=$LOCAL_USER`` (plugins/policy/ssh.py). When someone connects, the destination's
tailscaled fills in the placeholders and GETs that URL over its Noise session
(tailscale's ssh/tailssh/tailssh.go, ``fetchSSHAction``: it retries a non-200 answer with
back-off for up to 30 minutes and shows an action's ``message`` to the SSH user as a banner).

This module answers:

- **accept**, when the source node's user re-authenticated within the rule's ``checkPeriod``
  (the engine's ``ssh_check_period``, never a value from the URL); a check is recorded per
  (user, source node);
- **hold**: ``message`` with an AuthURL and a new ``holdAndDelegate`` carrying an ``auth_id``.
  The client shows the message and GETs that URL, which this module holds open (a long poll,
  bounded by ``node.auth_id_expiry``) until the check is approved (``meshscale auth approve``,
  or a login provider such as OIDC, where only the source node's user may approve), rejected
  (``meshscale auth reject``) or expires;
- **reject** (with a message the client shows) when no check rule covers the connection any
  more, the source node is gone, or the check was refused or expired.

Only the destination node may ask (the Noise session's machine key must be its own): a check
is about connections *to* a node, and anything else could fill the table for others. Pending
checks are bounded (``limits.max_pending_logins``), one per (source, destination, local user),
each with a deadline. Checks and pending checks live in memory: after a restart every
connection is checked again, the safe direction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote

from meshscale.auth import AUTH_ID, new_auth_id
from meshscale.control.request import ControlRequest, ResponseWriter
from meshscale.errors import MeshscaleError, NotFoundError
from meshscale.policy import PolicyEngine
from meshscale.state.models import Node, User
from meshscale.state.store import State

log = logging.getLogger(__name__)

PATH = re.compile(r"/machine/ssh/action/(\d{1,19})/to/(\d{1,19})")
LOCAL_USER_MAX = 256  # Linux user names are at most 32 bytes; room for other systems
# A finished check still answers its follow-up this long: the client's long poll may have been
# cut and retried (fetchSSHAction retries with back-off) while the user approved.
GRACE = 60.0
MAX_PERIOD = 168 * 3600.0  # the policy refuses longer checkPeriods: older records are useless
JSON = "application/json"
ACCEPT: dict[str, Any] = {
    "accept": True,
    "allowAgentForwarding": True,
    "allowLocalPortForwarding": True,
    "allowRemotePortForwarding": True,
}


class BadActionRequest(ValueError):
    """The request is malformed: a 400 with this one-line reason."""


@dataclass(frozen=True, slots=True)
class ActionQuery:
    src: int
    dst: int
    local_user: str
    auth_id: str  # "" on the first request of a connection


def parse_action(path: str) -> ActionQuery:
    """The ids, local user and auth id of an action URL's path and query (sans-IO)."""
    route, _, query = path.partition("?")
    m = PATH.fullmatch(route)
    if m is None:
        raise BadActionRequest("expected /machine/ssh/action/<src node id>/to/<dst node id>")
    try:
        args = parse_qs(query, keep_blank_values=True, strict_parsing=False,
                        max_num_fields=8)
    except ValueError as exc:
        raise BadActionRequest(f"invalid query: {exc}") from None
    local = args.get("local_user", [""])
    auth = args.get("auth_id", [""])
    if len(local) > 1 or len(auth) > 1:
        raise BadActionRequest("local_user and auth_id may be given once each")
    if len(local[0]) > LOCAL_USER_MAX or any(ord(c) < 32 for c in local[0]):
        raise BadActionRequest("local_user is not a user name")
    if auth[0] and not AUTH_ID.fullmatch(auth[0]):
        raise BadActionRequest("auth_id is not one this server issues")
    return ActionQuery(int(m.group(1)), int(m.group(2)), local[0], auth[0])


def reject(message: str) -> dict[str, Any]:
    return {"reject": True, "message": f"tailscale: {message}\n"}


@dataclass(slots=True, eq=False)
class PendingCheck:
    auth_id: str
    src: int
    dst: int
    local_user: str
    outcome: asyncio.Future[str]  # "" approved, else why it was refused
    deadline: float
    url: str = ""
    timer: asyncio.TimerHandle | None = field(default=None)


class SSHChecks:
    """Pending SSH checks and the record of recent ones (one per server)."""

    def __init__(self, state: State, engine: PolicyEngine, server_url: str, ttl: float,
                 limit: int, auth_url: Callable[[str, Mapping[str, Any]], str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.engine = engine
        self.server_url = server_url.rstrip("/")
        self.ttl = ttl
        self.limit = limit
        self.auth_url = auth_url
        self.clock = clock
        self.checked: dict[tuple[int | None, int], float] = {}  # (user, src node) -> when
        self._by_id: dict[str, PendingCheck] = {}
        self._by_conn: dict[tuple[int, int, str], PendingCheck] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    # -- the endpoint ----------------------------------------------------------------------------

    async def handle(self, req: ControlRequest, resp: ResponseWriter) -> None:
        if req.method != "GET":
            await resp.send(405, f"{req.method} not allowed; use GET\n".encode(), "text/plain")
            return
        try:
            q = parse_action(req.path)
        except BadActionRequest as exc:
            await resp.send(400, f"{exc}\n".encode(), "text/plain")
            return
        dst = self.state.nodes.get(q.dst)
        if dst is None or dst.machine_key != req.machine_key:
            # Only the destination asks about connections to itself.
            await resp.send(403, b"this machine is not the destination node\n", "text/plain")
            return
        action = await self.action(q, dst)
        await resp.send(200, json.dumps(action).encode(), JSON)

    async def action(self, q: ActionQuery, dst: Node) -> dict[str, Any]:
        """The SSHAction for an authenticated request of ``dst``."""
        src = self.state.nodes.get(q.src)
        if src is None:
            return reject(f"node {q.src} is not in this tailnet")
        period = self.engine.ssh_check_period(src.id, dst.id, q.local_user)
        if period is None:
            return reject("the tailnet policy no longer permits this connection")
        if q.auth_id:
            pending = self._by_id.get(q.auth_id)  # finished ones too, for a while (GRACE)
            if pending is not None and (pending.src, pending.dst) == (src.id, dst.id):
                return await self._wait(pending, src)
            # Unknown (expired, or lost in a restart) or another connection's: answer as a first
            # request would, rather than leave the client polling a dead id for 30 minutes.
        if period > 0:
            when = self.checked.get((src.user_id, src.id))
            if when is not None and self.clock() - when < period:
                log.info("SSH from node %d to %d as %r: checked %.0fs ago, accepted", src.id,
                         dst.id, q.local_user, self.clock() - when)
                return dict(ACCEPT)
        try:
            pending = self._start(src, dst, q.local_user)
        except MeshscaleError as exc:
            return reject(str(exc))
        hold = (f"{self.server_url}/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID"
                f"?local_user=$LOCAL_USER&auth_id={pending.auth_id}")
        return {"message": "# Tailscale SSH requires an additional check.\n"
                           f"# To authenticate, visit: {pending.url}\n",
                "holdAndDelegate": hold}

    async def _wait(self, pending: PendingCheck, src: Node) -> dict[str, Any]:
        outcome = await asyncio.shield(pending.outcome)
        if outcome:
            return reject(outcome)
        log.info("SSH check %s approved: node %d to %d as %r", pending.auth_id[:6], src.id,
                 pending.dst, pending.local_user)
        return dict(ACCEPT)

    # -- pending checks --------------------------------------------------------------------------

    def _start(self, src: Node, dst: Node, local_user: str) -> PendingCheck:
        live = self._by_conn.get((src.id, dst.id, local_user))
        if live is not None and not live.outcome.done():
            return live  # a second connection (or a retry) waits on the same check
        if len(self._by_id) >= self.limit:
            raise MeshscaleError("too many SSH checks are waiting on this server; try again "
                                 "later")
        loop = asyncio.get_running_loop()
        pending = PendingCheck(new_auth_id(), src.id, dst.id, local_user,
                               loop.create_future(), self.clock() + self.ttl)
        pending.url = self.auth_url(pending.auth_id, src.hostinfo)
        pending.timer = loop.call_later(self.ttl, self._finish, pending,
                                        "the SSH check expired before anyone approved it")
        self._by_id[pending.auth_id] = pending
        self._by_conn[(src.id, dst.id, local_user)] = pending
        log.info("SSH check %s waits: node %d (%s) to %d as %r: %s", pending.auth_id[:6],
                 src.id, src.hostname, dst.id, quote(local_user), pending.url)
        return pending

    def _finish(self, pending: PendingCheck, outcome: str) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.outcome.done():
            return
        pending.outcome.set_result(outcome)
        key = (pending.src, pending.dst, pending.local_user)
        if self._by_conn.get(key) is pending:
            del self._by_conn[key]
        pending.timer = asyncio.get_running_loop().call_later(GRACE, self._forget, pending)

    def _forget(self, pending: PendingCheck) -> None:
        if self._by_id.get(pending.auth_id) is pending:
            del self._by_id[pending.auth_id]

    def get(self, auth_id: str) -> PendingCheck | None:
        """The check still waiting under ``auth_id``, if any."""
        pending = self._by_id.get(auth_id) if AUTH_ID.fullmatch(auth_id) else None
        return pending if pending is not None and not pending.outcome.done() else None

    def find(self, auth_id: str) -> PendingCheck:
        pending = self.get(auth_id)
        if pending is None:
            raise NotFoundError(f"no SSH check is waiting with auth id {auth_id[:40]!r}: it was "
                                "used, refused or expired; connect again for a new one")
        return pending

    def waiting(self, auth_id: str) -> Mapping[str, Any] | None:
        """The waiting check as login providers see it (``kind`` tells it from a login)."""
        pending = self.get(auth_id)
        if pending is None:
            return None
        src, dst = self.state.nodes.get(pending.src), self.state.nodes.get(pending.dst)
        return {"authId": pending.auth_id, "kind": "ssh-check",
                "hostname": src.hostname if src else "",
                "os": str(src.hostinfo.get("OS") or "") if src else "",
                "destination": dst.given_name if dst else "", "localUser": pending.local_user}

    def approve(self, auth_id: str, user: User | None) -> Mapping[str, Any]:
        """Approve a waiting check. ``user``: who re-authenticated (a login provider's user),
        who must own the source node; None: an administrator (``meshscale auth approve``)."""
        pending = self.find(auth_id)
        src = self.state.nodes.get(pending.src)
        if src is None:
            self._finish(pending, "the source node was deleted")
            raise MeshscaleError("the source node of this SSH check no longer exists")
        if user is not None and (src.user_id is None or src.user_id != user.id):
            owner = self.state.owner_name(src) or "a tagged node"
            raise MeshscaleError(f"this SSH check is for {src.hostname}, a device of {owner}; "
                                 "only that user may approve it")
        view = dict(self.waiting(auth_id) or {}, approved=True)
        now = self.clock()
        self.checked = {k: t for k, t in self.checked.items() if now - t < MAX_PERIOD}
        self.checked[(src.user_id, src.id)] = now
        self._finish(pending, "")
        return view

    def reject(self, auth_id: str, why: str) -> None:
        self._finish(self.find(auth_id), why)

    def close(self) -> None:
        for pending in list(self._by_id.values()):
            self._finish(pending, "the control server is shutting down; connect again")
            if pending.timer is not None:
                pending.timer.cancel()
        self._by_id.clear()
