"""Interactive login: a client without a key gets an AuthURL and waits until someone acts on it.

The exchange (tailscale's control/controlclient/direct.go): the client's RegisterRequest has no
key, so the answer is ``AuthURL = <server_url>/register/<auth-id>``; the client shows it and sends
the same request again with ``Followup`` set to that URL, a long poll that this module holds open
until the login is completed (``meshscale auth register``, or a login provider such as OIDC),
refused (``meshscale auth reject``) or expires (``node.auth_id_expiry``). The answer then goes to
the waiting client at once, so it proceeds by itself.

Pending logins live in memory only: after a restart a waiting client simply gets a new AuthURL.
They are what a stranger can hold without any key, so there is a ceiling on how many wait
(``limits.max_pending_logins``), one per machine key, and each has a deadline.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from quart import Response

from meshscale.auth import AUTH_ID, new_auth_id
from meshscale.contributions import HttpRoute
from meshscale.control.register import RegisterRefused, permitted_tags, response_for
from meshscale.errors import MeshscaleError, NotFoundError
from meshscale.events import Registration
from meshscale.state.models import Node, User
from meshscale.tailcfg import CAPVER_MIN

if TYPE_CHECKING:
    from datetime import datetime

    from meshscale.auth import AuthProvider, Identity
    from meshscale.clientinput import RegisterRequest
    from meshscale.control.register import Registrar
    from meshscale.control.sshcheck import SSHChecks

log = logging.getLogger(__name__)



@dataclass(slots=True, eq=False)
class PendingLogin:
    auth_id: str
    machine_key: bytes
    node_key: bytes
    hostinfo: dict[str, Any]
    capver: int
    url: str  # the AuthURL: a follow-up must name exactly this
    # The node once registered, or the message a refused or expired login gets.
    outcome: asyncio.Future[Node | str]
    timer: asyncio.TimerHandle | None = field(default=None)

    @property
    def hostname(self) -> str:
        return str(self.hostinfo.get("Hostname") or "node")


class PendingLogins:
    """Auth ids waiting for a login: bounded in number, each with a deadline."""

    def __init__(self, ttl: float, limit: int) -> None:
        self.ttl = ttl
        self.limit = limit
        self._by_id: dict[str, PendingLogin] = {}
        self._by_machine: dict[bytes, PendingLogin] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def start(self, machine_key: bytes, node_key: bytes, hostinfo: dict[str, Any],
              capver: int) -> PendingLogin:
        """The pending login of this machine (a new auth id if it has none)."""
        live = self._by_machine.get(machine_key)
        if live is not None and not live.outcome.done():
            # The same machine asking again (a retry, a new node key): one auth id per machine.
            live.node_key, live.hostinfo, live.capver = node_key, hostinfo, capver
            return live
        if len(self._by_id) >= self.limit:
            raise RegisterRefused("too many logins are waiting on this server; try again later")
        loop = asyncio.get_running_loop()
        pending = PendingLogin(
            auth_id=new_auth_id(), machine_key=machine_key, node_key=node_key,
            hostinfo=hostinfo, capver=capver, url="",
            outcome=loop.create_future(),
        )
        pending.timer = loop.call_later(self.ttl, self._expire, pending)
        self._by_id[pending.auth_id] = pending
        self._by_machine[machine_key] = pending
        return pending

    def start_debug(self, auth_id: str, hostinfo: dict[str, Any]) -> PendingLogin:
        """A login waiting under ``auth_id`` for a node no client stands behind (headscale's
        DebugCreateNode): fresh machine and node keys; ``auth register`` then makes the node.
        Bounded and with a deadline like every other pending login."""
        if not AUTH_ID.fullmatch(auth_id):
            raise MeshscaleError("key must be an auth id: 24 characters of A-Z, a-z, 0-9, _ "
                                 "and -")
        if auth_id in self._by_id:
            raise MeshscaleError("a login is already waiting with that auth id")
        if len(self._by_id) >= self.limit:
            raise MeshscaleError("too many logins are waiting on this server; try again later")
        machine_key = X25519PrivateKey.generate().public_key().public_bytes_raw()
        node_key = X25519PrivateKey.generate().public_key().public_bytes_raw()
        loop = asyncio.get_running_loop()
        pending = PendingLogin(auth_id=auth_id, machine_key=machine_key, node_key=node_key,
                               hostinfo=hostinfo, capver=CAPVER_MIN, url="",
                               outcome=loop.create_future())
        pending.timer = loop.call_later(self.ttl, self._expire, pending)
        self._by_id[auth_id] = pending
        self._by_machine[machine_key] = pending
        return pending

    def get(self, auth_id: str) -> PendingLogin | None:
        return self._by_id.get(auth_id)

    def of_machine(self, machine_key: bytes) -> PendingLogin | None:
        return self._by_machine.get(machine_key)

    def find(self, auth_id: str) -> PendingLogin:
        pending = self._by_id.get(auth_id) if AUTH_ID.fullmatch(auth_id) else None
        if pending is None:
            raise NotFoundError(
                f"no login is waiting with auth id {auth_id[:40]!r}: it was used, refused or "
                "expired; run `tailscale up` again for a new one")
        return pending

    def finish(self, pending: PendingLogin, outcome: Node | str) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        if not pending.outcome.done():
            pending.outcome.set_result(outcome)
        self._by_id.pop(pending.auth_id, None)
        if self._by_machine.get(pending.machine_key) is pending:
            del self._by_machine[pending.machine_key]

    def _expire(self, pending: PendingLogin) -> None:
        log.info("login %s for %s expired unused", pending.auth_id[:6], pending.hostname)
        self.finish(pending, "the login link expired before anyone used it: run `tailscale up` "
                             "again for a new one")

    def close(self) -> None:
        for pending in list(self._by_id.values()):
            self.finish(pending, "the server is shutting down: run `tailscale up` again")


class InteractiveLogins:
    """Hands out AuthURLs, holds the clients' follow-ups, and completes or refuses logins (the
    ``meshscale.auth.Logins`` that login providers use)."""

    def __init__(self, reg: Registrar, server_url: str, ttl: float, limit: int,
                 providers: Sequence[AuthProvider] = ()) -> None:
        self.reg = reg
        self.server_url = server_url.rstrip("/")
        self.pending = PendingLogins(ttl, limit)
        self.providers = list(providers)
        # SSH check mode re-authenticates through the same AuthURLs (control/sshcheck.py);
        # the control plane sets this.
        self.checks: SSHChecks | None = None

    def url(self, auth_id: str, hostinfo: Mapping[str, Any]) -> str:
        """The first provider's AuthURL, else the built-in admin page."""
        for provider in self.providers:
            url = provider.auth_url(auth_id, hostinfo)
            if url:
                return url
        return f"{self.server_url}/register/{auth_id}"

    async def login(self, machine_key: bytes, req: RegisterRequest) -> dict[str, Any]:
        """The RegisterResponse for a client that needs to log in (register.NeedsLogin)."""
        started = time.monotonic()
        pending = self.pending.of_machine(machine_key)
        if req.followup and pending is not None and req.followup == pending.url:
            outcome = await asyncio.shield(pending.outcome)
            if isinstance(outcome, str):
                self._report("refused", started, outcome)
                return {"Error": outcome}
            self._report("ok", started)
            return response_for(self.reg, outcome)
        assert req.node_key is not None  # register.py refuses a request without one first
        try:
            pending = self.pending.start(machine_key, req.node_key, req.hostinfo, req.version)
        except RegisterRefused as exc:
            self._report("refused", started, str(exc))
            return {"Error": str(exc)}
        if not pending.url:
            pending.url = self.url(pending.auth_id, pending.hostinfo)
        log.info("login for %s waits: %s", pending.hostname, pending.url)
        return {"AuthURL": pending.url}

    def _report(self, outcome: str, started: float, why: str = "") -> None:
        self.reg.hooks.registration(
            Registration("interactive", outcome, time.monotonic() - started, why))

    def register(self, auth_id: str, user: User, method: str = "cli") -> Node:
        """Complete a waiting login: the node registers to ``user``; its client proceeds."""
        if self.checks is not None and self.checks.get(auth_id) is not None:
            raise MeshscaleError("that auth id is an SSH check, not a login: approve it with "
                                 "`meshscale auth approve --auth-id ...`")
        pending = self.pending.find(auth_id)
        reg = self.reg
        try:
            tags = permitted_tags(reg, user, [], pending.hostinfo)
        except RegisterRefused as exc:
            raise MeshscaleError(str(exc)) from None
        veto = reg.hooks.admit_node(pending.hostname, user.name, tuple(tags), method)
        if veto:
            self.pending.finish(pending, f"registration refused: {veto}")
            raise MeshscaleError(f"registration refused by a plugin: {veto}")
        by_key = reg.state.by_node_key(pending.node_key)
        if by_key is not None and by_key.machine_key != pending.machine_key:
            self.pending.finish(pending, "node key is registered to a different machine")
            raise MeshscaleError("that node key is registered to a different machine")
        node = reg.lifecycle.register_for_user(user, pending.machine_key, pending.node_key,
                                               pending.hostinfo, tags, pending.capver, method)
        self.pending.finish(pending, node)
        return node

    def reject(self, auth_id: str, why: str = "the administrator refused this login") -> None:
        if self.checks is not None and self.checks.get(auth_id) is not None:
            self.checks.reject(auth_id, "the SSH check was refused")
            return
        self.pending.finish(self.pending.find(auth_id), why)

    # -- meshscale.auth.Logins, for login providers -------------------------------------------

    def waiting(self, auth_id: str) -> Mapping[str, Any] | None:
        if self.checks is not None and self.checks.get(auth_id) is not None:
            return self.checks.waiting(auth_id)
        pending = self.pending.get(auth_id) if AUTH_ID.fullmatch(auth_id) else None
        if pending is None:
            return None
        return {"authId": pending.auth_id, "kind": "register", "hostname": pending.hostname,
                "os": str(pending.hostinfo.get("OS") or "")}

    def complete(self, auth_id: str, identity: Identity, method: str,
                 expiry: datetime | None = None) -> Mapping[str, Any]:
        if self.checks is not None and self.checks.get(auth_id) is not None:
            # A re-authentication for SSH: only an existing user, the source node's, may
            # approve it; no user is made for an identity seen for the first time.
            user = self.reg.state.by_identity(identity.provider, identity.subject)
            if user is None:
                raise MeshscaleError("this account has no devices here, so it cannot approve "
                                     "an SSH check")
            return self.checks.approve(auth_id, user)
        self.pending.find(auth_id)  # before a user is made for a login that is not waiting
        user = self.reg.lifecycle.user_for_identity(identity)
        node = self.register(auth_id, user, method)
        if expiry is not None and not node.tags:
            node = self.reg.lifecycle.expire(node.id, when=expiry)
        return {"id": node.id, "givenName": node.given_name, "user": user.name,
                "ipAddresses": list(node.addresses)}

    def routes(self) -> list[HttpRoute]:
        return [HttpRoute("/register/<auth_id>", self._page, name="register_page"),
                HttpRoute("/admin", self._admin_page, name="approval_page")]

    async def _admin_page(self) -> Response:
        """Where a client waiting for device approval sends its user (``tailscale up`` prints
        ``<login server>/admin``). It names nobody's device: it says what an admin runs."""
        body = ("<h1>Device approval</h1><p>New devices on this tailnet wait until an "
                "administrator approves them. The administrator finds the device with:</p>"
                "<pre>meshscale nodes list</pre><p>(column Approved: no) and approves it "
                "with:</p><pre>meshscale nodes approve -i ID</pre>")
        return _html(body)

    async def _page(self, auth_id: str) -> Response:
        """What the person who opened the AuthURL sees: the command an admin runs."""
        check = self.checks.waiting(auth_id) if self.checks is not None else None
        if check is not None:
            return _html(_check_page(check))
        pending = self.pending.get(auth_id) if AUTH_ID.fullmatch(auth_id) else None
        if pending is None:
            body = ("<h1>This login link is not valid</h1><p>It was used, refused or has "
                    "expired. Run <code>tailscale up</code> again for a new one.</p>")
            return _html(body, 404)
        aid, host = html.escape(pending.auth_id), html.escape(pending.hostname)
        body = (f"<h1>Machine registration</h1><p>Device <b>{host}</b> asks to join this "
                "tailnet. An administrator registers it with:</p>"
                f"<pre>meshscale auth register --auth-id {aid} --user USERNAME</pre>"
                f"<p>or refuses it with:</p><pre>meshscale auth reject --auth-id {aid}</pre>")
        return _html(body)


def _check_page(check: Mapping[str, Any]) -> str:
    aid = html.escape(str(check["authId"]))
    host, dst = html.escape(str(check["hostname"])), html.escape(str(check["destination"]))
    who = html.escape(str(check["localUser"]))
    return (f"<h1>Tailscale SSH check</h1><p>Someone on <b>{host}</b> is connecting to "
            f"<b>{dst}</b> as <b>{who}</b>, and the tailnet policy asks for a check. An "
            "administrator approves it with:</p>"
            f"<pre>meshscale auth approve --auth-id {aid}</pre>"
            f"<p>or refuses it with:</p><pre>meshscale auth reject --auth-id {aid}</pre>")


def _html(body: str, status: int = 200) -> Response:
    page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>meshscale</title>"
            f"</head><body>{body}</body></html>")
    return Response(page, status=status, content_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                             "Content-Security-Policy": "default-src 'none'"})
