"""The ``oidc:`` section, with headscale's keys and meanings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshscale.configvalues import Duration, parse_duration
from meshscale.errors import ConfigError


@dataclass(frozen=True)
class OidcSettings:
    issuer: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    scope: tuple[str, ...] = ("openid", "profile", "email")
    extra_params: Mapping[str, str] = field(default_factory=dict)
    allowed_domains: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    email_verified_required: bool = True
    pkce: bool = True  # S256; headscale's pkce.enabled (its default is off; ours is on)
    expiry: Duration = Duration(180 * 86400)  # node key lifetime after an OIDC login; 0: never
    use_expiry_from_token: bool = False
    # headscale's: refuse to start when the issuer's discovery fails (else: start without
    # OIDC login, the built-in admin page instead, and a warning).
    only_start_if_oidc_is_available: bool = True
    # headscale 0.23-0.25's migration keys: map_legacy_users binds an existing user that no
    # identity owns, named after the verified e-mail (whole, "@" as ".", or its local part
    # with strip_email_domain), to the first identity logging in with that e-mail.
    map_legacy_users: bool = False
    strip_email_domain: bool | None = None  # None: not set (headscale's default, true)

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


def _strings(raw: Any, path: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigError(path, "expected a list of strings")
    return tuple(raw)


def _bool(raw: Any, path: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(path, "expected true or false")
    return raw


def parse(raw: Mapping[str, Any], path: str) -> OidcSettings:
    known = {"issuer", "client_id", "client_secret", "client_secret_path", "scope",
             "extra_params", "allowed_domains", "allowed_users", "allowed_groups",
             "email_verified_required", "pkce", "expiry", "use_expiry_from_token",
             "only_start_if_oidc_is_available", "strip_email_domain", "map_legacy_users"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", "unknown key")
    issuer = raw.get("issuer") or ""
    if not isinstance(issuer, str):
        raise ConfigError(f"{path}.issuer", "expected a URL")
    issuer = issuer.rstrip("/")
    if not issuer:
        return OidcSettings()
    if not issuer.startswith(("https://", "http://")):
        raise ConfigError(f"{path}.issuer", "expected an http(s) URL")
    client_id = raw.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        raise ConfigError(f"{path}.client_id", "required when oidc.issuer is set")
    secret = raw.get("client_secret") or ""
    secret_path = raw.get("client_secret_path") or ""
    if secret and secret_path:
        raise ConfigError(f"{path}.client_secret_path", "set client_secret or this, not both")
    if secret_path:
        try:
            secret = Path(str(secret_path)).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{path}.client_secret_path",
                              f"cannot read {secret_path}: {exc.strerror}") from None
    if not isinstance(secret, str):
        raise ConfigError(f"{path}.client_secret", "expected a string")
    extra = raw.get("extra_params") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise ConfigError(f"{path}.extra_params", "expected a mapping of strings")
    scope = _strings(raw.get("scope"), f"{path}.scope") or ("openid", "profile", "email")
    if "openid" not in scope:
        raise ConfigError(f"{path}.scope", "must include openid")
    pkce_raw = raw.get("pkce", {})
    pkce = True
    if isinstance(pkce_raw, dict):
        if "enabled" in pkce_raw:
            pkce = _bool(pkce_raw["enabled"], f"{path}.pkce.enabled")
        method = pkce_raw.get("method", "S256")
        if method != "S256":
            raise ConfigError(f"{path}.pkce.method", "only S256 is offered (plain is unsafe)")
    else:
        raise ConfigError(f"{path}.pkce", "expected a mapping (enabled, method)")
    return OidcSettings(
        issuer=issuer,
        client_id=client_id,
        client_secret=secret,
        scope=scope,
        extra_params={str(k): v for k, v in extra.items()},
        allowed_domains=tuple(d.lower() for d in _strings(raw.get("allowed_domains"),
                                                          f"{path}.allowed_domains")),
        allowed_users=tuple(u.lower() for u in _strings(raw.get("allowed_users"),
                                                        f"{path}.allowed_users")),
        allowed_groups=_strings(raw.get("allowed_groups"), f"{path}.allowed_groups"),
        email_verified_required=_bool(raw.get("email_verified_required", True),
                                      f"{path}.email_verified_required"),
        pkce=pkce,
        expiry=parse_duration(raw.get("expiry", "180d"), f"{path}.expiry"),
        use_expiry_from_token=_bool(raw.get("use_expiry_from_token", False),
                                    f"{path}.use_expiry_from_token"),
        only_start_if_oidc_is_available=_bool(raw.get("only_start_if_oidc_is_available", True),
                                              f"{path}.only_start_if_oidc_is_available"),
        map_legacy_users=_bool(raw.get("map_legacy_users", False), f"{path}.map_legacy_users"),
        strip_email_domain=(None if raw.get("strip_email_domain") is None else
                            _bool(raw["strip_email_domain"], f"{path}.strip_email_domain")),
    )


_NOT_IN_USER_NAME = re.compile(r"[^a-z0-9.-]+")


def legacy_user_name(email: str, strip_email_domain: bool) -> str:
    """The user name headscale before 0.23 gave an OIDC login (NormalizeToFQDNRules): lower
    case, no quotes, the e-mail's local part (strip_email_domain) or the whole address with
    "@" as ".", other characters as "-"."""
    name = email.lower().replace("'", "")
    at = name.find("@")
    name = name[:at] if strip_email_domain and at > 0 else name.replace("@", ".")
    return _NOT_IN_USER_NAME.sub("-", name)
