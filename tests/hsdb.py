"""Write meshscale's records out as a headscale database of a given schema (tests of
``meshscale import-headscale``): the tables of tests/cli/data/headscale/schema-<version>.sql,
filled the way headscale fills them (GORM's SQLite time text, ``mkey:``/``nodekey:`` key text,
JSON lists)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from meshscale.config import load_config
from meshscale.pluginhost import PluginHost
from meshscale.state.models import Node, User
from meshscale.storage.base import Snapshot

DATA = Path(__file__).parent / "cli" / "data" / "headscale"
VERSIONS = ("0.23", "0.29")


def gorm_time(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%d %H:%M:%S.%f000+00:00")


def write_headscale_db(path: Path, version: str, users: list[User], nodes: list[Node],
                       policy: str | None = None, bcrypt_keys: int = 1) -> None:
    db = sqlite3.connect(path)
    db.executescript((DATA / f"schema-{version}.sql").read_text())
    write_rows(db, "?", gorm_time, version, users, nodes, policy, bcrypt_keys)
    db.commit()
    db.close()


def write_rows(db: Any, ph: str, when: Callable[[datetime | None], object], version: str,
               users: list[User], nodes: list[Node], policy: str | None = None,
               bcrypt_keys: int = 1) -> None:
    """Rows as headscale writes them; ``ph`` is the driver's placeholder, ``when`` its time."""

    def put(sql: str, values: Sequence[object]) -> None:
        db.execute(sql.replace("?", ph), values)

    old = version == "0.23"
    for u in users:
        if old:
            put("INSERT INTO users (id, name, created_at) VALUES (?, ?, ?)",
                (u.id, u.name, when(u.created_at)))
        else:
            put("INSERT INTO users (id, name, display_name, email, provider_identifier, "
                "provider, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (u.id, u.name, u.display_name, u.email, u.provider_id or None, u.provider,
                 when(u.created_at)))
    for i in range(bcrypt_keys):
        put("INSERT INTO pre_auth_keys (id, user_id, reusable, ephemeral, used) "
            "VALUES (?, ?, true, false, true)", (i + 1, users[0].id if users else None))
    for n in nodes:
        common = (n.id, "mkey:" + n.machine_key.hex(), "nodekey:" + n.node_key.hex(),
                  "discokey:" + n.disco_key.hex(), json.dumps(list(n.endpoints)),
                  json.dumps(n.hostinfo), n.ipv4, n.ipv6, n.hostname, n.given_name, n.user_id,
                  n.register_method, json.dumps(list(n.tags)), when(n.last_seen),
                  when(n.expiry), when(n.created_at))
        cols = ("id, machine_key, node_key, disco_key, endpoints, host_info, ipv4, ipv6, "
                "hostname, given_name, user_id, register_method, "
                + ("forced_tags" if old else "tags") + ", last_seen, expiry, created_at")
        if old:
            put(f"INSERT INTO nodes ({cols}) VALUES ({', '.join('?' * 16)})", common)
            for prefix in n.approved_routes:
                put("INSERT INTO routes (node_id, prefix, advertised, enabled, is_primary) "
                    "VALUES (?, ?, true, true, false)", (n.id, prefix))
        else:
            put(f"INSERT INTO nodes ({cols}, approved_routes) VALUES ({', '.join('?' * 17)})",
                (*common, json.dumps(list(n.approved_routes))))
    if policy is not None:
        put("INSERT INTO policies (data) VALUES (?)", (policy,))


def snapshot(config: Path) -> Snapshot:
    """Everything a stopped meshscale (SQLite) has stored, read through its storage plugin."""
    host = PluginHost()

    def sections(names: list[str]) -> list[object]:
        host.load(names)
        return list(host.hooks.config_sections())

    cfg = load_config(str(config), environ={}, sections_for=sections)
    (backend,) = [b for b in host.hooks.storage_backends() if b.name == "sqlite"]
    storage = backend.open(cfg)
    try:
        return storage.load()
    finally:
        storage.close()
