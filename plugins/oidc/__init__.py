"""meshscale plugin: oidc — log devices in with an OpenID Connect provider.

Turned on by headscale's ``oidc:`` keys (issuer, client_id, client_secret / client_secret_path,
scope, extra_params, allowed_domains, allowed_users, allowed_groups, email_verified_required,
pkce, expiry, use_expiry_from_token, only_start_if_oidc_is_available, map_legacy_users,
strip_email_domain); needs ``pip install 'meshscale[oidc]'``. See docs/login.md.

A keyless device's AuthURL is ``/oidc/register/<auth-id>``: it sets a browser cookie and sends
the browser to the provider with state, nonce and PKCE S256. The callback accepts a state only
once and only from the browser that started it, exchanges the code, checks the ID token
(signature against the provider's JWKS, iss, aud, exp, nonce) and the allowed_* rules, then shows
a confirmation page naming the device and the account; only its POST registers the device (so a
link someone else sent cannot put their device into your account unasked). The user is the
identity (issuer, subject): never found by e-mail.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from quart import Response, redirect, request

from meshscale import hookimpl
from meshscale.auth import AuthProvider, Identity
from meshscale.contributions import ConfigSection, HttpRoute
from meshscale.errors import MeshscaleError
from meshscale.plugins.oidc.settings import OidcSettings, legacy_user_name, parse

if TYPE_CHECKING:
    from meshscale.config import Config
    from meshscale.context import ServerContext
    from meshscale.plugins.oidc.relying import RelyingParty

log = logging.getLogger(__name__)

COOKIE = "meshscale_oidc"
FLOW_TTL = 600.0  # a browser has ten minutes from the AuthURL to the confirmation
MAX_FLOWS = 1000  # flows (and confirmations) a stranger can hold open at once


@dataclass(slots=True)
class Flow:
    auth_id: str
    browser: bytes  # SHA-256 of the browser's cookie
    deadline: float
    nonce: str = ""
    verifier: str = ""
    identity: Identity | None = None
    expiry: datetime | None = None
    groups: tuple[str, ...] = ()


def _hash(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _page(title: str, body: str, status: int = 200) -> Response:
    text = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return Response(text, status=status, content_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                             "Content-Security-Policy": "default-src 'none'; form-action 'self'"})


class OidcPlugin:
    name = "oidc"

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self._rp: RelyingParty | None = None
        self._flows: dict[str, Flow] = {}  # by state
        self._confirms: dict[str, Flow] = {}  # by confirmation token
        self._unavailable = False  # discovery failed at start-up (only_start_... false)

    # -- configuration ---------------------------------------------------------------------------

    @hookimpl
    def meshscale_config_sections(self) -> Sequence[ConfigSection]:
        return [ConfigSection("oidc", parse)]

    def settings(self) -> OidcSettings:
        s = self.server.config.section("oidc")
        return s if isinstance(s, OidcSettings) else OidcSettings()

    def base(self) -> str:
        return str(self.server.config.server_url).rstrip("/")

    def rp(self) -> RelyingParty:
        if self._rp is None:
            from meshscale.plugins.oidc.relying import RelyingParty  # noqa: PLC0415 - the extra

            self._rp = RelyingParty(self.settings(), f"{self.base()}/oidc/callback")
        return self._rp

    @hookimpl
    async def meshscale_startup(self) -> None:
        """Fetch the issuer's discovery document now (headscale does): if it fails, refuse to
        start (only_start_if_oidc_is_available, the default) or start with OIDC login off."""
        from meshscale.plugins.oidc.relying import LoginFailed  # noqa: PLC0415 - the extra

        s = self.settings()
        if not s.enabled:
            return
        if s.strip_email_domain is not None and not s.map_legacy_users:
            log.warning("oidc.strip_email_domain has no effect without oidc.map_legacy_users: "
                        "user names of new OIDC users come from preferred_username or the "
                        "e-mail's local part (docs/login.md)")
        try:
            await self.rp().meta()
        except LoginFailed as exc:
            reason = str(exc).removesuffix("; try again later")  # said to a browser user
            why = f"the OIDC issuer {s.issuer} is not available: {reason}"
            if s.only_start_if_oidc_is_available:
                raise MeshscaleError(
                    f"refusing to start: {why}. Fix oidc.issuer (or the provider), or set "
                    "oidc.only_start_if_oidc_is_available: false to start without OIDC "
                    "login") from None
            self._unavailable = True
            log.warning("%s; OIDC login is off until the server restarts: devices without a "
                        "key get the admin page (meshscale auth register) instead", why)

    # -- the provider ----------------------------------------------------------------------------

    @hookimpl
    def meshscale_auth_providers(self, config: Config) -> Sequence[AuthProvider]:
        return [self] if self.settings().enabled else []

    def auth_url(self, auth_id: str, hostinfo: Mapping[str, Any]) -> str | None:
        if self._unavailable:
            return None  # the next provider's, or the built-in admin page
        return f"{self.base()}/oidc/register/{auth_id}"

    @hookimpl
    def meshscale_http_routes(self, config: Config) -> Sequence[HttpRoute]:
        if not self.settings().enabled:
            return []
        return [
            HttpRoute("/oidc/register/<auth_id>", self.start, name="oidc_start"),
            HttpRoute("/oidc/callback", self.callback, name="oidc_callback"),
            HttpRoute("/oidc/confirm", self.confirm, methods=("POST",), name="oidc_confirm"),
        ]

    # -- the browser's steps ---------------------------------------------------------------------

    def _sweep(self) -> None:
        now = time.monotonic()
        for table in (self._flows, self._confirms):
            for key in [k for k, f in table.items() if f.deadline <= now]:
                del table[key]

    async def start(self, auth_id: str) -> Response:
        from meshscale.plugins.oidc.relying import LoginFailed  # noqa: PLC0415 - the extra

        waiting = self.server.logins().waiting(auth_id)
        if waiting is None:
            return _page("This login link is not valid", "<p>It was used, refused or has "
                         "expired. Run <code>tailscale up</code> again for a new one.</p>", 404)
        self._sweep()
        if len(self._flows) >= MAX_FLOWS:
            return _page("Too many logins", "<p>Too many logins are in progress; try again in a "
                         "few minutes.</p>", 503)
        rp = self.rp()
        state, nonce, verifier = rp.new_secrets()
        cookie = secrets.token_urlsafe(32)
        try:
            url = await rp.authorize_url(state, nonce, verifier)
        except LoginFailed as exc:
            return _page("Login failed", f"<p>{html.escape(str(exc))}</p>", 502)
        self._flows[state] = Flow(auth_id, _hash(cookie), time.monotonic() + FLOW_TTL, nonce,
                                  verifier)
        resp = redirect(url, 302)
        resp.set_cookie(COOKIE, cookie, max_age=int(FLOW_TTL), path="/oidc/", httponly=True,
                        samesite="Lax", secure=self.base().startswith("https://"))
        return resp  # type: ignore[return-value]

    def _browser_ok(self, flow: Flow) -> bool:
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(_hash(cookie), flow.browser)

    async def callback(self) -> Response:
        from meshscale.plugins.oidc.relying import LoginFailed  # noqa: PLC0415 - the extra

        state = request.args.get("state", "")
        flow = self._flows.pop(state, None)  # single use, whatever happens next
        if flow is None or flow.deadline <= time.monotonic():
            return _page("Login failed", "<p>This login was already used or has expired. Run "
                         "<code>tailscale up</code> again.</p>", 400)
        if not self._browser_ok(flow):
            return _page("Login failed", "<p>This login was started in another browser. Open "
                         "the link from <code>tailscale up</code> in this one.</p>", 400)
        if request.args.get("error"):
            why = request.args.get("error_description") or request.args["error"]
            return _page("Login failed", f"<p>The identity provider says: "
                         f"{html.escape(why[:300])}</p>", 400)
        rp = self.rp()
        try:
            token = await rp.exchange(request.args.get("code", ""), flow.verifier)
            claims = await rp.id_claims(token, flow.nonce)
            identity, groups = self._admit(claims)
        except LoginFailed as exc:
            log.info("OIDC login for auth id %s refused: %s", flow.auth_id[:6], exc)
            return _page("Login refused", f"<p>{html.escape(str(exc))}</p>", 403)
        waiting = self.server.logins().waiting(flow.auth_id)
        if waiting is None:
            return _page("This login link is not valid", "<p>The device's login expired "
                         "meanwhile. Run <code>tailscale up</code> again.</p>", 404)
        flow.identity, flow.groups = identity, groups
        flow.expiry = self._expiry(claims)
        flow.deadline = time.monotonic() + FLOW_TTL
        confirm = secrets.token_urlsafe(32)
        self._confirms[confirm] = flow
        host = html.escape(str(waiting.get("hostname", "")))
        who = html.escape(identity.display_name or identity.name)
        email = html.escape(identity.email or "no e-mail")
        form = ("<form method=\"post\" action=\"/oidc/confirm\">"
                f"<input type=\"hidden\" name=\"token\" value=\"{confirm}\">"
                "<button type=\"submit\">{}</button></form>")
        if waiting.get("kind") == "ssh-check":
            dst = html.escape(str(waiting.get("destination", "")))
            local = html.escape(str(waiting.get("localUser", "")))
            body = (f"<p>You are <b>{who}</b> ({email}). Allow the SSH connection from "
                    f"<b>{host}</b> to <b>{dst}</b> as <b>{local}</b>?</p>"
                    "<p>Only continue if you are connecting right now.</p>"
                    + form.format("Allow this connection"))
            return _page("Confirm Tailscale SSH", body)
        body = (f"<p>Register the device <b>{host}</b> ({html.escape(str(waiting.get('os')))})"
                f" to your account <b>{who}</b> ({email})?</p>"
                "<p>Only continue if you just ran <code>tailscale up</code> on that device.</p>"
                + form.format("Register this device"))
        return _page("Confirm device registration", body)

    async def confirm(self) -> Response:
        form = await request.form
        flow = self._confirms.pop(str(form.get("token", "")), None)
        if flow is None or flow.deadline <= time.monotonic() or flow.identity is None:
            return _page("Login failed", "<p>This confirmation was already used or has "
                         "expired.</p>", 400)
        if not self._browser_ok(flow):
            return _page("Login failed", "<p>This login was started in another browser.</p>",
                         400)
        try:
            node = self.server.logins().complete(flow.auth_id, flow.identity, "oidc",
                                                 expiry=flow.expiry)
        except MeshscaleError as exc:
            return _page("Registration failed", f"<p>{html.escape(str(exc))}</p>", 400)
        if node.get("approved"):  # an SSH check (control/sshcheck.py)
            return _page("SSH connection allowed",
                         f"<p>The connection from <b>{html.escape(str(node['hostname']))}</b> "
                         "proceeds. You can close this page.</p>")
        return _page("Device registered",
                     f"<p><b>{html.escape(str(node['givenName']))}</b> is now registered to "
                     f"<b>{html.escape(str(node['user']))}</b>. You can close this page.</p>")

    # -- who may log in --------------------------------------------------------------------------

    def _admit(self, claims: Mapping[str, Any]) -> tuple[Identity, tuple[str, ...]]:
        from meshscale.plugins.oidc.relying import LoginFailed  # noqa: PLC0415 - the extra

        s = self.settings()
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise LoginFailed("the ID token names no subject")
        email_claim = claims.get("email")
        email = email_claim if isinstance(email_claim, str) else ""
        verified = claims.get("email_verified") is True
        groups_raw = claims.get("groups")
        groups = tuple(g for g in groups_raw if isinstance(g, str)) \
            if isinstance(groups_raw, list) else ()
        if email and s.email_verified_required and not verified:
            raise LoginFailed(f"the e-mail address {email} is not verified by the identity "
                              "provider")
        checked_email = email.lower() if (verified or not s.email_verified_required) else ""
        if s.allowed_domains:
            domain = checked_email.rpartition("@")[2] if "@" in checked_email else ""
            if domain not in s.allowed_domains:
                raise LoginFailed(f"accounts of {domain or 'no e-mail domain'} may not log in "
                                  "here (allowed_domains)")
        if s.allowed_users and checked_email not in s.allowed_users:
            raise LoginFailed(f"{checked_email or 'this account'} may not log in here "
                              "(allowed_users)")
        if s.allowed_groups and not set(groups) & set(s.allowed_groups):
            raise LoginFailed("this account is in none of the groups allowed here "
                              "(allowed_groups)")
        name = claims.get("preferred_username") or (email.partition("@")[0] if email else sub)
        display = claims.get("name") if isinstance(claims.get("name"), str) else ""
        picture = claims.get("picture")
        legacy = ""
        if s.map_legacy_users and email and verified:  # never for an unverified address
            legacy = legacy_user_name(email, s.strip_email_domain is not False)
        identity = Identity(provider="oidc", subject=f"{s.issuer}/{sub}", name=str(name),
                            display_name=str(display or ""), email=email,
                            picture=picture if isinstance(picture, str) else "", groups=groups,
                            legacy_name=legacy)
        return identity, groups

    def _expiry(self, claims: Mapping[str, Any]) -> datetime | None:
        s = self.settings()
        if s.use_expiry_from_token and isinstance(claims.get("exp"), int):
            return datetime.fromtimestamp(claims["exp"], UTC)
        if s.expiry > 0:
            return datetime.now(UTC) + timedelta(seconds=float(s.expiry))
        return None
