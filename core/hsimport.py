"""Reading a headscale database (schema of headscale 0.23 to 0.29) into meshscale's records.

Only reads: the connection is opened read-only by the caller, and every query here is a
SELECT. The column set is read from the database itself, so the differences between headscale
releases (``forced_tags`` before ``tags``, the ``routes`` table before ``approved_routes``, user
columns added with OIDC) are handled by what is there rather than by a version number.

What carries over: users (with their OIDC identity), nodes (machine, node and disco keys,
addresses, hostname and given name, tags, approved routes, expiry, last seen, creation time,
how they registered), pre-auth keys and API keys with the hashes headscale kept (so the keys
people hold go on working: meshscale.keyhash), the policy stored in the database. A row that
cannot be brought over is named in the plan with why.

Key forms by headscale release (its hscontrol/db/preauth_keys.go and api_key.go): pre-auth keys
up to 0.27 are 48 hex digits kept in plain text (``key``; 0.23 keeps their tags in the table
``pre_auth_key_acl_tags``, later releases in ``tags``); from 0.28 ``hskey-auth-<prefix>-<secret>``
with ``prefix`` and a bcrypt ``hash`` of the secret, old rows keeping ``key``. API keys are
``prefix`` and a bcrypt ``hash`` throughout: ``<7>.<32>`` up to 0.27, ``hskey-api-<12>-<64>``
from 0.28.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from meshscale import auth, keyhash
from meshscale.errors import MeshscaleError
from meshscale.state.models import ApiKey, Node, PreAuthKey, User


class Cursor(Protocol):
    description: Any

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    def cursor(self) -> Any: ...


@dataclass
class Plan:
    """What an import brings over, and what it leaves behind (with why)."""

    schema: str = ""
    users: list[User] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    keys: list[PreAuthKey] = field(default_factory=list)
    api_keys: list[ApiKey] = field(default_factory=list)
    policy: str | None = None
    left: list[str] = field(default_factory=list)  # one line per thing not imported

    def summary(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "users": [u.name for u in self.users],
            "nodes": [f"{n.id} {n.given_name} {' '.join(n.addresses)}" for n in self.nodes],
            "pre_auth_keys": [f"{k.id} {k.prefix} ({k.hash_scheme})" for k in self.keys],
            "api_keys": [f"{k.id} {k.prefix}" for k in self.api_keys],
            "policy": "imported" if self.policy else "none in the database",
            "not_imported": list(self.left),
        }


class Reader:
    """SELECTs against headscale's tables, SQLite or PostgreSQL (``dialect``)."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self._columns: dict[str, set[str]] = {}

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.conn.cursor()
        if self.dialect == "postgres":
            sql = sql.replace("?", "%s")
        cur.execute(sql, params)
        names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def columns(self, table: str) -> set[str]:
        if table not in self._columns:
            if self.dialect == "sqlite":
                rows = self._query(f"PRAGMA table_info({table})")  # a fixed table name
                self._columns[table] = {r["name"] for r in rows}
            else:
                rows = self._query("SELECT column_name FROM information_schema.columns "
                                   "WHERE table_name = ? AND table_schema = current_schema()",
                                   [table])
                self._columns[table] = {r["column_name"] for r in rows}
        return self._columns[table]

    def rows(self, table: str) -> list[dict[str, Any]]:
        cols = self.columns(table)
        if not cols:
            return []
        live = " WHERE deleted_at IS NULL" if "deleted_at" in cols else ""
        return self._query(f"SELECT * FROM {table}{live} ORDER BY id")  # noqa: S608 - fixed names

    def schema(self) -> str:
        """headscale's own record of its schema: the version it wrote, or its last migration."""
        if self.columns("database_versions"):
            rows = self._query("SELECT version FROM database_versions ORDER BY id DESC")
            if rows:
                return f"headscale {rows[0]['version']}"
        if self.columns("migrations"):
            rows = self._query("SELECT id FROM migrations ORDER BY id DESC")
            if rows:
                return f"headscale migration {rows[0]['id']}"
        return "headscale (no migration record)"


def _time(value: object) -> datetime | None:
    """GORM's SQLite text (``2025-01-01 10:00:00.123456789+00:00``) or a driver datetime; the
    zero time (``0001-01-01``) is None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        when = value
    else:
        text = str(value).strip().replace(" ", "T", 1).replace("Z", "+00:00")
        if text.startswith("0001-01-01"):
            return None
        head, dot, rest = text.partition(".")
        if dot:  # Go writes nanoseconds; Python reads at most microseconds
            digits = "".join(c for c in rest if c.isdigit())
            text = f"{head}.{digits[:6]}{rest[len(digits):]}"
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
    if when.year <= 1:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _key(value: object, prefix: str, what: str) -> bytes:
    text = str(value or "")
    raw = text.removeprefix(prefix)
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise MeshscaleError(f"{what} {text[:24]!r} is not a {prefix}<64 hex digits> key")
    return key


def _json_list(value: object) -> list[str]:
    if value in (None, "", b""):
        return []
    try:
        data = json.loads(value) if isinstance(value, (str, bytes)) else value
    except ValueError:
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _json_dict(value: object) -> dict[str, Any]:
    try:
        data = json.loads(value) if isinstance(value, (str, bytes)) else value
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _user(row: dict[str, Any]) -> User:
    provider = str(row.get("provider") or "")
    return User(
        id=int(row["id"]),
        name=str(row.get("name") or ""),
        display_name=str(row.get("display_name") or ""),
        email=str(row.get("email") or ""),
        provider="oidc" if provider == "oidc" else provider,
        provider_id=str(row.get("provider_identifier") or ""),
        created_at=_time(row.get("created_at")) or datetime.now(UTC),
    )


def _routes_table(reader: Reader) -> dict[int, list[str]]:
    """headscale < 0.26 kept approved routes in a table of their own (enabled = approved)."""
    out: dict[int, list[str]] = {}
    for r in reader.rows("routes"):
        if r.get("enabled") in (1, True, "1", "true") and r.get("prefix"):
            out.setdefault(int(r["node_id"]), []).append(str(r["prefix"]))
    return out


def _node(row: dict[str, Any], routes: dict[int, list[str]], keys: dict[int, PreAuthKey],
          ephemeral_keys: set[int]) -> Node:
    tags = _json_list(row.get("tags") if "tags" in row else row.get("forced_tags"))
    approved = (_json_list(row["approved_routes"]) if "approved_routes" in row
                else routes.get(int(row["id"]), []))
    disco = row.get("disco_key")
    key_id = _int(row.get("auth_key_id"))
    node = Node(
        id=int(row["id"]),
        machine_key=_key(row.get("machine_key"), "mkey:", "machine key"),
        node_key=_key(row.get("node_key"), "nodekey:", "node key"),
        hostname=str(row.get("hostname") or ""),
        given_name=str(row.get("given_name") or row.get("hostname") or ""),
        user_id=int(row["user_id"]) if row.get("user_id") is not None else None,
        ipv4=str(row["ipv4"]) if row.get("ipv4") else None,
        ipv6=str(row["ipv6"]) if row.get("ipv6") else None,
        tags=tuple(sorted(set(tags))),
        hostinfo=_json_dict(row.get("host_info")),
        endpoints=tuple(_json_list(row.get("endpoints"))),
        created_at=_time(row.get("created_at")) or datetime.now(UTC),
        last_seen=_time(row.get("last_seen")),
        expiry=_time(row.get("expiry")),
        auth_key_id=key_id if key_id in keys else None,
        ephemeral=key_id in ephemeral_keys,
        register_method=str(row.get("register_method") or "authkey"),
        approved_routes=tuple(approved),
    )
    if disco:
        node.disco_key = _key(disco, "discokey:", "disco key")
    return node


def _int(value: object) -> int:
    return int(value) if isinstance(value, (int, str)) and str(value).isdigit() else -1


def _flag(value: object) -> bool:
    return value in (1, True, "1", "true", "t")


def _hash(value: object) -> bytes:
    """A hash column: BLOB on SQLite, bytea (memoryview) on PostgreSQL, text if so written."""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value or "").encode()


_PREFIX = re.compile(r"[A-Za-z0-9_-]{12}")
_LEGACY_API_PREFIX = re.compile(r"[A-Za-z0-9_-]{7}")


def _acl_tags(reader: Reader) -> dict[int, list[str]]:
    """headscale 0.23 kept a pre-auth key's tags in a table of their own."""
    out: dict[int, list[str]] = {}
    if reader.columns("pre_auth_key_acl_tags"):
        for r in reader.rows("pre_auth_key_acl_tags"):
            out.setdefault(_int(r.get("pre_auth_key_id")), []).append(str(r.get("tag") or ""))
    return out


def _preauth_key(row: dict[str, Any], acl_tags: dict[int, list[str]],
                 user_ids: set[int]) -> PreAuthKey:
    kid = int(row["id"])
    if row.get("revoked"):
        raise MeshscaleError("revoked")
    prefix, stored = str(row.get("prefix") or ""), _hash(row.get("hash"))
    if prefix:
        if not _PREFIX.fullmatch(prefix) or not keyhash.is_bcrypt_hash(stored):
            raise MeshscaleError("its prefix and hash are not headscale's (12 characters and "
                                 "a bcrypt hash)")
        scheme, form = keyhash.BCRYPT, "hskey-auth-"
    else:
        parts = auth.legacy_headscale_key(str(row.get("key") or ""))
        if parts is None:
            raise MeshscaleError("its key is neither hskey-auth-... nor 48 hex digits")
        prefix, stored, scheme = parts[0], keyhash.sha256(parts[1]), keyhash.SHA256
        form = ""
    tags = _json_list(row["tags"]) if "tags" in row else acl_tags.get(kid, [])
    bad = [t for t in tags if not t.startswith("tag:") or len(t) <= 4]
    if bad:
        raise MeshscaleError(f"invalid tags {bad}")
    user_id = _int(row.get("user_id"))
    owner = user_id if user_id in user_ids else None  # headscale: ON DELETE SET NULL
    if owner is None and not tags:
        raise MeshscaleError("neither a user nor tags")
    return PreAuthKey(
        id=kid, prefix=prefix, secret_hash=stored, user_id=owner,
        reusable=_flag(row.get("reusable")), ephemeral=_flag(row.get("ephemeral")),
        used=_flag(row.get("used")), expiration=_time(row.get("expiration")),
        created_at=_time(row.get("created_at")) or datetime.now(UTC),
        tags=tuple(sorted(set(tags))), hash_scheme=scheme, key_form=form,
    )


def _api_key(row: dict[str, Any]) -> ApiKey:
    prefix, stored = str(row.get("prefix") or ""), _hash(row.get("hash"))
    if not (_PREFIX.fullmatch(prefix) or _LEGACY_API_PREFIX.fullmatch(prefix)) \
            or not keyhash.is_bcrypt_hash(stored):
        raise MeshscaleError("its prefix and hash are not headscale's (7 or 12 characters "
                             "and a bcrypt hash)")
    return ApiKey(id=int(row["id"]), prefix=prefix, secret_hash=stored,
                  expiration=_time(row.get("expiration")),
                  created_at=_time(row.get("created_at")) or datetime.now(UTC),
                  last_seen=_time(row.get("last_seen")), hash_scheme=keyhash.BCRYPT,
                  key_form="hskey-api-" if len(prefix) == 12 else "")


def _keys(reader: Reader, plan: Plan, user_ids: set[int]) -> set[int]:
    """The keys into ``plan``; returns the IDs of every ephemeral key (imported or not: its
    nodes are ephemeral all the same)."""
    acl_tags = _acl_tags(reader)
    prefixes: set[str] = set()
    rows = reader.rows("pre_auth_keys")
    for row in rows:
        try:
            key = _preauth_key(row, acl_tags, user_ids)
            if key.prefix in prefixes:
                raise MeshscaleError(f"a second key with the prefix {key.prefix}")
        except MeshscaleError as exc:
            plan.left.append(f"pre-auth key {row.get('id')}: {exc}")
            continue
        prefixes.add(key.prefix)
        plan.keys.append(key)
    for row in reader.rows("api_keys"):
        try:
            api_key = _api_key(row)
        except MeshscaleError as exc:
            plan.left.append(f"API key {row.get('id')}: {exc}")
            continue
        plan.api_keys.append(api_key)
    return {_int(r.get("id")) for r in rows if _flag(r.get("ephemeral"))}


def read_plan(reader: Reader) -> Plan:
    """Everything to import, checked; a broken row is named and left out, not guessed at."""
    if not reader.columns("nodes") or not reader.columns("users"):
        raise MeshscaleError("this is not a headscale database: it has no users and nodes "
                             "tables")
    plan = Plan(schema=reader.schema())
    plan.users = [_user(r) for r in reader.rows("users")]
    user_ids = {u.id for u in plan.users}
    ephemeral = _keys(reader, plan, user_ids)
    keys = {k.id: k for k in plan.keys}
    routes = _routes_table(reader) if reader.columns("routes") else {}
    for row in reader.rows("nodes"):
        try:
            node = _node(row, routes, keys, ephemeral)
        except MeshscaleError as exc:
            plan.left.append(f"node {row.get('id')} {row.get('hostname')!r}: {exc}")
            continue
        if node.user_id is not None and node.user_id not in user_ids:
            plan.left.append(f"node {node.id} {node.given_name!r}: its user {node.user_id} "
                             "is not in the database")
            continue
        if node.user_id is None and not node.tags:
            plan.left.append(f"node {node.id} {node.given_name!r}: neither a user nor tags")
            continue
        plan.nodes.append(node)
    policies = reader.rows("policies")
    if policies and policies[-1].get("data"):
        plan.policy = str(policies[-1]["data"])
    return plan
