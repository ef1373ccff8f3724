"""The OpenID Connect relying party: discovery, the authorization URL (PKCE S256, state, nonce),
the code exchange and the ID-token checks. Needs the ``oidc`` extra (authlib, joserfc, httpx);
imported only when the plugin starts."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwk, jws, jwt
from joserfc.errors import JoseError

from meshscale.plugins.oidc.settings import OidcSettings

TIMEOUT = 10.0


class LoginFailed(Exception):
    """Shown to the person in the browser, one line."""


class RelyingParty:
    def __init__(self, settings: OidcSettings, redirect_uri: str) -> None:
        self.s = settings
        self.redirect_uri = redirect_uri
        self._meta: dict[str, Any] | None = None
        self._keys: jwk.KeySet | None = None
        self._keys_at = 0.0

    async def meta(self) -> dict[str, Any]:
        if self._meta is None:
            url = f"{self.s.issuer}/.well-known/openid-configuration"
            try:
                async with httpx.AsyncClient(timeout=TIMEOUT) as http:
                    r = await http.get(url)
                    r.raise_for_status()
                    meta = r.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise LoginFailed(f"the identity provider cannot be reached ({exc}); try again "
                                  "later") from None
            if not isinstance(meta, dict) or meta.get("issuer", "").rstrip("/") != self.s.issuer:
                raise LoginFailed("the identity provider's discovery document names another "
                                  "issuer; the administrator must fix oidc.issuer")
            self._meta = meta
        return self._meta

    @staticmethod
    def new_secrets() -> tuple[str, str, str]:
        """(state, nonce, PKCE verifier)."""
        return generate_token(32), generate_token(32), generate_token(64)

    async def authorize_url(self, state: str, nonce: str, verifier: str) -> str:
        meta = await self.meta()
        params: dict[str, str] = {
            **self.s.extra_params,
            "response_type": "code",
            "client_id": self.s.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.s.scope),
            "state": state,
            "nonce": nonce,
        }
        if self.s.pkce:
            params["code_challenge"] = create_s256_code_challenge(verifier)
            params["code_challenge_method"] = "S256"
        sep = "&" if "?" in meta["authorization_endpoint"] else "?"
        return f"{meta['authorization_endpoint']}{sep}{urlencode(params)}"

    async def exchange(self, code: str, verifier: str) -> Mapping[str, Any]:
        meta = await self.meta()
        data = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self.redirect_uri}
        if self.s.pkce:
            data["code_verifier"] = verifier
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT) as http:
                r = await http.post(meta["token_endpoint"], data=data,
                                    auth=(self.s.client_id, self.s.client_secret))
        except httpx.HTTPError as exc:
            raise LoginFailed(f"the identity provider cannot be reached ({exc})") from None
        if r.status_code != 200:
            raise LoginFailed(f"the identity provider refused the code ({r.status_code}); "
                              "start the login again")
        token = r.json()
        if not isinstance(token, dict) or not isinstance(token.get("id_token"), str):
            raise LoginFailed("the identity provider sent no ID token")
        return token

    async def _keyset(self, refresh: bool) -> jwk.KeySet:
        if self._keys is None or (refresh and time.monotonic() - self._keys_at > 60):
            meta = await self.meta()
            async with httpx.AsyncClient(timeout=TIMEOUT) as http:
                r = await http.get(meta["jwks_uri"])
                r.raise_for_status()
                self._keys = jwk.KeySet.import_key_set(r.json())
                self._keys_at = time.monotonic()
        return self._keys

    async def id_claims(self, token: Mapping[str, Any], nonce: str) -> dict[str, Any]:
        """The ID token's claims once its signature (JWKS), iss, aud, exp, iat and nonce hold."""
        meta = await self.meta()
        algs = [a for a in meta.get("id_token_signing_alg_values_supported", ["RS256"])
                if a != "none" and not a.startswith("HS")]
        registry = jws.JWSRegistry(algorithms=algs)
        try:
            try:
                tok = jwt.decode(token["id_token"], await self._keyset(False), registry=registry)
            except JoseError:  # perhaps a rotated key: fetch the JWKS again, once
                tok = jwt.decode(token["id_token"], await self._keyset(True), registry=registry)
            claims = CodeIDToken(
                tok.claims, tok.header, {"iss": {"essential": True, "value": self.s.issuer}},
                {"nonce": nonce, "client_id": self.s.client_id,
                 "access_token": token.get("access_token")},
            )
            claims.validate(leeway=60)
        except Exception as exc:  # joserfc and authlib raise their own error trees
            raise LoginFailed(f"the ID token is not valid: {type(exc).__name__}") from None
        return dict(claims)
