"""Write meshscale's records out as a headscale database of a given schema (tests of
``meshscale import-headscale``): the tables of tests/cli/data/headscale/schema-<version>.sql,
filled the way headscale fills them (GORM's SQLite time text, ``mkey:``/``nodekey:`` key text,
JSON lists), and pre-auth and API keys made the way that release makes them, so the full keys a
headscale user holds are known to the test (facts from headscale's hscontrol/db/preauth_keys.go
and api_key.go):

- pre-auth keys up to 0.27: 24 random bytes in hex, kept in plain text in ``key`` (0.23 keeps
  their tags in ``pre_auth_key_acl_tags``, 0.24 on in ``tags``); from 0.28
  ``hskey-auth-<12>-<64>`` with ``prefix`` and a bcrypt ``hash`` of the 64 (cost 10, ``$2a$``
  as Go writes it), rows from before 0.28 keeping their plain ``key``;
- API keys: ``<7>.<32>`` up to 0.27, ``hskey-api-<12>-<64>`` from 0.28, always ``prefix`` and a
  bcrypt ``hash`` of the secret part.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bcrypt

from meshscale.config import Config
from meshscale.configload import load_config
from meshscale.pluginhost import PluginHost
from meshscale.state.models import Node, User
from meshscale.storage.base import Snapshot, Storage

DATA = Path(__file__).parent / "cli" / "data" / "headscale"
VERSIONS = ("0.23", "0.27", "0.29")


@dataclass(frozen=True)
class HsKey:
    """A pre-auth key as headscale keeps it."""

    id: int
    user_id: int | None
    reusable: bool = False
    ephemeral: bool = False
    used: bool = False
    tags: tuple[str, ...] = ()
    expiration: datetime | None = None
    created_at: datetime = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    plain: bool = False  # on 0.28 and later: a row kept from before, its key in plain text


@dataclass(frozen=True)
class HsApiKey:
    id: int
    expiration: datetime | None = None
    last_seen: datetime | None = None
    created_at: datetime = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class Issued:
    """The full keys written, by ID: what headscale showed its users once."""

    auth: dict[int, str] = field(default_factory=dict)
    api: dict[int, str] = field(default_factory=dict)


def hashed_keys(version: str) -> bool:
    """Whether this release keeps pre-auth keys as prefix + bcrypt (0.28 and later)."""
    return tuple(int(x) for x in version.split(".")) >= (0, 28)


def gorm_time(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%d %H:%M:%S.%f000+00:00")


def urlsafe(n: int) -> str:
    """headscale's util.GenerateRandomStringURLSafe(n): n random bytes, base64url, n chars."""
    return base64.urlsafe_b64encode(secrets.token_bytes(n)).decode().rstrip("=")[:n]


def go_bcrypt(secret: str) -> bytes:
    """bcrypt.GenerateFromPassword(secret, bcrypt.DefaultCost) as Go writes it."""
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(10, prefix=b"2a"))


def write_headscale_db(path: Path, version: str, users: list[User], nodes: list[Node],
                       policy: str | None = None, keys: Sequence[HsKey] = (),
                       api_keys: Sequence[HsApiKey] = ()) -> Issued:
    db = sqlite3.connect(path)
    db.executescript((DATA / f"schema-{version}.sql").read_text())
    issued = write_rows(db, "?", gorm_time, version, users, nodes, policy, keys, api_keys)
    db.commit()
    db.close()
    return issued


def write_rows(db: Any, ph: str, when: Callable[[datetime | None], object], version: str,
               users: list[User], nodes: list[Node], policy: str | None = None,
               keys: Sequence[HsKey] = (), api_keys: Sequence[HsApiKey] = ()) -> Issued:
    """Rows as headscale writes them; ``ph`` is the driver's placeholder, ``when`` its time."""

    def put(table: str, row: dict[str, object]) -> None:
        db.execute(f"INSERT INTO {table} ({', '.join(row)}) "
                   f"VALUES ({', '.join([ph] * len(row))})", tuple(row.values()))

    old = version == "0.23"
    for u in users:
        if old:
            put("users", {"id": u.id, "name": u.name, "created_at": when(u.created_at)})
        else:
            put("users", {"id": u.id, "name": u.name, "display_name": u.display_name,
                          "email": u.email, "provider_identifier": u.provider_id or None,
                          "provider": u.provider, "created_at": when(u.created_at)})
    issued = Issued()
    for k in keys:
        row: dict[str, object] = {
            "id": k.id, "user_id": k.user_id, "reusable": k.reusable,
            "ephemeral": k.ephemeral, "used": k.used, "expiration": when(k.expiration),
            "created_at": when(k.created_at)}
        if hashed_keys(version) and not k.plain:
            prefix, secret = urlsafe(12), urlsafe(64)
            issued.auth[k.id] = f"hskey-auth-{prefix}-{secret}"
            row |= {"key": "", "prefix": prefix, "hash": go_bcrypt(secret)}
        else:
            issued.auth[k.id] = row["key"] = secrets.token_hex(24)
        if old:
            put("pre_auth_keys", row)
            for tag in k.tags:
                put("pre_auth_key_acl_tags", {"pre_auth_key_id": k.id, "tag": tag})
        else:
            put("pre_auth_keys", {**row, "tags": json.dumps(list(k.tags))})
    for a in api_keys:
        if hashed_keys(version):
            prefix, secret = urlsafe(12), urlsafe(64)
            issued.api[a.id] = f"hskey-api-{prefix}-{secret}"
        else:
            prefix, secret = urlsafe(7), urlsafe(32)
            issued.api[a.id] = f"{prefix}.{secret}"
        put("api_keys", {"id": a.id, "prefix": prefix, "hash": go_bcrypt(secret),
                         "expiration": when(a.expiration), "last_seen": when(a.last_seen),
                         "created_at": when(a.created_at)})
    key_ids = {k.id for k in keys}
    for n in nodes:
        row = {"id": n.id, "machine_key": "mkey:" + n.machine_key.hex(),
               "node_key": "nodekey:" + n.node_key.hex(),
               "disco_key": "discokey:" + n.disco_key.hex(),
               "endpoints": json.dumps(list(n.endpoints)), "host_info": json.dumps(n.hostinfo),
               "ipv4": n.ipv4, "ipv6": n.ipv6, "hostname": n.hostname,
               "given_name": n.given_name, "user_id": n.user_id,
               "register_method": n.register_method,
               "auth_key_id": n.auth_key_id if n.auth_key_id in key_ids else None,
               "forced_tags" if version in ("0.23", "0.27") else "tags": json.dumps(list(n.tags)),
               "last_seen": when(n.last_seen), "expiry": when(n.expiry),
               "created_at": when(n.created_at)}
        if old:
            put("nodes", row)
            for prefix in n.approved_routes:
                put("routes", {"node_id": n.id, "prefix": prefix, "advertised": True,
                               "enabled": True, "is_primary": False})
        else:
            put("nodes", {**row, "approved_routes": json.dumps(list(n.approved_routes))})
    if policy is not None:
        put("policies", {"data": policy})
    return issued


def open_store(config: Path) -> tuple[Config, Storage]:
    """A stopped meshscale's config and its (SQLite) storage, opened through its plugin."""
    host = PluginHost()

    def sections(names: list[str]) -> list[object]:
        host.load(names)
        return list(host.hooks.config_sections())

    cfg = load_config(str(config), environ={}, sections_for=sections)
    (backend,) = [b for b in host.hooks.storage_backends() if b.name == "sqlite"]
    return cfg, backend.open(cfg)


def snapshot(config: Path) -> Snapshot:
    """Everything a stopped meshscale (SQLite) has stored, read through its storage plugin."""
    _, storage = open_store(config)
    try:
        return storage.load()
    finally:
        storage.close()
