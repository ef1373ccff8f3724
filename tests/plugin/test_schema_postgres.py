"""Schema versions on a real PostgreSQL: a headscale database is refused untouched, a version-1
meshscale database (no marker) is upgraded in one transaction with every row kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from meshscale.bench.pgserver import PgServer
from meshscale.errors import StorageError
from meshscale.state.models import ApiKey, PreAuthKey, User
from meshscale.storage.base import PutApiKey, PutKey, PutPolicy, PutUser
from meshscale.storage.versioning import CURRENT
from tests.conftest import Backend, new_pg_database

HEADSCALE_PG = """
CREATE TABLE migrations (id text PRIMARY KEY);
CREATE TABLE users (id bigserial PRIMARY KEY, name text, display_name text, email text,
  provider_identifier text, provider text, profile_pic_url text, created_at timestamptz,
  updated_at timestamptz, deleted_at timestamptz);
CREATE TABLE api_keys (id bigserial PRIMARY KEY, prefix text, hash bytea, expiration timestamptz,
  last_seen timestamptz, created_at timestamptz);
CREATE TABLE nodes (id bigserial PRIMARY KEY, machine_key text, node_key text, disco_key text,
  endpoints text, host_info text, ipv4 text, ipv6 text, hostname text, given_name varchar(63),
  user_id bigint, register_method text, created_at timestamptz);
CREATE TABLE database_versions (id bigint PRIMARY KEY, version text NOT NULL,
  updated_at timestamptz);
INSERT INTO migrations VALUES ('202312101416');
INSERT INTO users (name) VALUES ('alice');
INSERT INTO nodes (machine_key, hostname, given_name, user_id, ipv4)
  VALUES ('mkey:01', 'laptop', 'laptop', 1, '100.64.0.1');
"""


def dump(pg: PgServer, database: dict[str, Any]) -> dict[str, Any]:
    """Every table's columns and rows: the whole content, to compare before and after."""
    params = pg.params()
    with psycopg.connect(dbname=database["postgres"]["name"], **params) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "ORDER BY table_name")]
        out: dict[str, Any] = {}
        for t in tables:
            cols = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = %s ORDER BY ordinal_position", (t,)).fetchall()
            rows = conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall()
            out[t] = (cols, rows)
        out["indexes"] = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall()
    return out


def run(pg: PgServer, database: dict[str, Any], sql: str) -> None:
    with psycopg.connect(dbname=database["postgres"]["name"], **pg.params()) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def test_a_headscale_database_is_refused_untouched(pg_server: PgServer, tmp_path: Path) -> None:
    database = new_pg_database(pg_server)
    run(pg_server, database, HEADSCALE_PG)
    before = dump(pg_server, database)
    with pytest.raises(StorageError) as err:
        Backend("postgres", database, pg_server).storage(tmp_path)
    assert " is a headscale database (tables: api_keys, database_versions, migrations, nodes, " \
        "users); meshscale does not read or change headscale databases." in str(err.value)
    assert dump(pg_server, database) == before


def test_a_version_1_database_is_upgraded_keeping_every_row(pg_server: PgServer,
                                                            tmp_path: Path) -> None:
    database = new_pg_database(pg_server)
    backend = Backend("postgres", database, pg_server)
    storage = backend.storage(tmp_path)  # the current schema, with a user in it
    storage.apply([PutUser(User(1, "alice")), PutPolicy('{"acls": []}'),
                   PutKey(PreAuthKey(1, "p", b"h" * 32, 1))])
    storage.close()
    # Version 1 is the same tables without the marker, the ID counters (version 3), the
    # API keys (version 4), the users' picture and groups (version 5), the keys' hash
    # scheme (version 6), nodes.approved (version 7), the run-time settings (version 8), the
    # keys' form (version 9) and pre-approval (version 10).
    run(pg_server, database, "DROP TABLE meshscale_schema")
    run(pg_server, database, "DROP TABLE meshscale_settings")
    run(pg_server, database, "DROP TABLE id_counters")
    run(pg_server, database, "DROP TABLE meshscale_api_keys")
    run(pg_server, database, 'ALTER TABLE users DROP COLUMN picture, DROP COLUMN "groups"')
    run(pg_server, database, "ALTER TABLE pre_auth_keys DROP COLUMN hash_scheme, "
                             "DROP COLUMN key_form, DROP COLUMN preauthorized")
    run(pg_server, database, "ALTER TABLE nodes DROP COLUMN approved")  # version 7
    before = dump(pg_server, database)

    storage = backend.storage(tmp_path)
    snap = storage.load()
    storage.close()
    after = dump(pg_server, database)
    _, marker_rows = after.pop("meshscale_schema")
    assert marker_rows[0][0] == CURRENT
    _, counters = after.pop("id_counters")
    assert counters == [("key", 1), ("user", 1)]  # seeded from the highest IDs present
    assert after.pop("meshscale_api_keys")[1] == []
    assert after.pop("meshscale_settings")[1] == []
    cols, rows = after["users"]
    assert cols[-2:] == [("picture", "text"), ("groups", "text")]
    assert [r[-2:] for r in rows] == [("", "[]")]
    after["users"] = (cols[:-2], [r[:-2] for r in rows])
    cols, rows = after["pre_auth_keys"]
    assert cols[-3:] == [("hash_scheme", "character varying"),
                         ("key_form", "character varying"), ("preauthorized", "boolean")]
    assert [r[-3:] for r in rows] == [("sha256", "mskey-auth-", False)]
    after["pre_auth_keys"] = (cols[:-3], [r[:-3] for r in rows])
    node_cols, node_rows = after["nodes"]
    assert node_cols[-1] == ("approved", "boolean")  # as a new database has it
    after["nodes"] = (node_cols[:-1], node_rows)
    added = set(after.pop("indexes")) - set(before.pop("indexes"))
    assert {name for (name,) in added} == {"id_counters_pkey", "meshscale_api_keys_pkey",
                                          "apikeyrow_prefix", "meshscale_settings_pkey"}
    assert after == before
    assert [u.name for u in snap.users] == ["alice"] and snap.policy == '{"acls": []}'


def test_version_10_api_keys_gain_their_form(pg_server: PgServer, tmp_path: Path) -> None:
    """Version 11 on PostgreSQL: the column as a new database has it, and each key's form told
    from its prefix and hash scheme (ours, headscale 0.28+'s, headscale's older <7>.<32>)."""
    database = new_pg_database(pg_server)
    backend = Backend("postgres", database, pg_server)
    storage = backend.storage(tmp_path)
    storage.apply([PutApiKey(ApiKey(1, "0123456789ab", b"h")),
                   PutApiKey(ApiKey(2, "Ab_-CdEfGhIj", b"$2a$", hash_scheme="bcrypt",
                                    key_form="hskey-api-")),
                   PutApiKey(ApiKey(3, "aB-_9xZ", b"h", key_form=""))])
    storage.close()
    fresh = dump(pg_server, database)["meshscale_api_keys"]
    run(pg_server, database, "ALTER TABLE meshscale_api_keys DROP COLUMN key_form")
    run(pg_server, database, "UPDATE meshscale_schema SET version = 10")

    storage = backend.storage(tmp_path)
    snap = storage.load()
    storage.close()
    assert [k.key_form for k in snap.api_keys] == ["mskey-api-", "hskey-api-", ""]
    assert dump(pg_server, database)["meshscale_api_keys"] == fresh  # columns and rows
