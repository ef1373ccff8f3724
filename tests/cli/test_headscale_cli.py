"""headscale's command lines (its latest release's command tree: names, aliases, flags) run
against a real ``meshscale serve`` and print the fields headscale's ``-o json | json-line |
yaml`` prints, with the same value types (ids as numbers, times as {seconds, nanos},
register_method as the enum's number). Errors under ``-o json`` are JSON; destructive commands
ask first unless ``--force``; every command and flag has a description in ``--help``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshscale.cli.main import build_parser
from meshscale.simclient import SimNode
from tests.cli.serverproc import IN_TREE, Serve, meshscale, write_config

# headscale's proto field names (gen/go/headscale/v1/*.pb.go json tags) and value types.
TIME = dict  # google.protobuf.Timestamp: {"seconds": int, "nanos": int}
TIMES = {"createdat", "lastseen", "expiry", "expiration"}
USER = {"id": int, "name": str, "created_at": TIME, "display_name": str, "email": str,
        "provider_id": str, "provider": str, "profile_pic_url": str}
NODE = {"id": int, "machine_key": str, "node_key": str, "disco_key": str, "ip_addresses": list,
        "name": str, "user": dict, "last_seen": (TIME, type(None)),
        "expiry": (TIME, type(None)), "created_at": TIME, "register_method": int,
        "given_name": str, "online": bool, "approved_routes": list, "available_routes": list,
        "subnet_routes": list, "tags": list}
KEY = {"user": dict, "id": int, "key": str, "reusable": bool, "ephemeral": bool, "used": bool,
       "expiration": (TIME, type(None)), "created_at": TIME, "acl_tags": list}


class Env:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.port = int(yaml.safe_load(config.read_text())["listen_addr"].rpartition(":")[2])
        self.key = ""  # alice's reusable pre-auth key

    def join(self, name: str, routes: list[str]) -> None:
        """A simulated node registers with alice's key, announcing ``routes``."""

        async def go() -> None:
            node = SimNode(name)
            node.hostinfo["RoutableIPs"] = routes
            await node.conn.connect("127.0.0.1", self.port)
            assert (await node.register(self.key)).get("MachineAuthorized") is True
            await node.conn.close()

        asyncio.run(go())

    def run(self, *args: str) -> tuple[int, str, str]:
        result = meshscale("-c", str(self.config), *args)
        return result.returncode, result.stdout, result.stderr

    def json(self, *args: str) -> Any:
        rc, out, err = self.run(*args)
        assert rc == 0, err
        if "yaml" in args:
            return yaml.safe_load(out)
        if "json-line" in args:
            assert out.count("\n") == 1  # one line
        return json.loads(out)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("hscli")
    config = write_config(workdir)
    server = Serve(config)
    e = Env(config)
    try:
        e.json("users", "create", "alice", "-e", "alice@example.com", "-o", "json")
        e.json("user", "new", "bob", "-d", "Bob", "-o", "json")
        e.key = e.json("preauthkeys", "create", "-u", "alice", "--reusable", "-o", "json")["key"]
        e.json("authkey", "c", "-u", "bob", "-o", "json")
        e.json("pre", "new", "-u", "bob", "--pre-approved", "-o", "json")
        e.join("laptop", ["10.0.0.0/8"])
        yield e
    finally:
        rc, log = server.stop()
        assert rc == 0, log


def check_fields(item: dict[str, Any], fields: dict[str, Any]) -> None:
    for name, kind in fields.items():
        assert name in item, f"{name} missing from {sorted(item)}"
        assert isinstance(item[name], kind), f"{name}: {item[name]!r}"
        if name.replace("_", "") in TIMES and item[name] is not None:
            assert set(item[name]) == {"seconds", "nanos"}
            assert all(isinstance(v, int) for v in item[name].values())


def yaml_names(fields: dict[str, Any]) -> dict[str, Any]:
    """yaml.v3 names headscale's fields by the lower-cased Go name."""
    return {k.replace("_", ""): v for k, v in fields.items()}


# (command line, the fields every item printed must have, how many items)
TABLE: list[tuple[list[str], dict[str, Any], int]] = [
    (["users", "list", "-o", "json"], USER, 2),
    (["user", "ls", "-o", "json-line"], USER, 2),
    (["users", "show", "--name", "alice", "-o", "json"], USER, 1),
    (["users", "list", "--email", "alice@example.com", "-o", "json"], USER, 1),
    (["users", "list", "-i", "2", "-o", "json"], USER, 1),
    (["users", "list", "-o", "yaml"], yaml_names(USER), 2),
    (["nodes", "list", "-o", "json"], NODE, 1),
    (["node", "ls", "-u", "alice", "-o", "json-line"], NODE, 1),
    (["nodes", "show", "-o", "yaml"], yaml_names(NODE), 1),
    (["nodes", "list-routes", "-o", "json"], NODE, 1),
    (["nodes", "routes", "-i", "1", "-o", "json"], NODE, 1),
    (["node", "lsr", "-o", "json"], NODE, 1),
    (["preauthkeys", "list", "-o", "json"], KEY, 3),
    (["preauthkey", "ls", "-u", "bob", "-o", "json"], KEY, 2),
    (["authkey", "show", "-o", "yaml"], yaml_names(KEY), 3),
    (["nodes", "tag", "-i", "1", "-t", "tag:web,tag:db", "-o", "json"], NODE, 1),
    (["nodes", "approve-routes", "-i", "1", "-r", "10.0.0.0/8", "-o", "json"], NODE, 1),
    (["nodes", "rename", "-i", "1", "laptop-2", "-o", "json"], NODE, 1),
]


@pytest.mark.parametrize(("argv", "fields", "count"), TABLE, ids=[" ".join(t[0]) for t in TABLE])
def test_headscale_command_lines_print_headscale_fields(
    env: Env, argv: list[str], fields: dict[str, Any], count: int,
) -> None:
    data = env.json(*argv)
    items = data if isinstance(data, list) else [data]
    assert len(items) == count
    for item in items:
        check_fields(item, fields)


# -- tables: headscale's layout ----------------------------------------------------------------
# Headers as cmd/headscale/cli prints them (v0.29.2 and main: nodes.go, users.go,
# preauthkeys.go, api_key.go), in order; meshscale's own columns may only follow.
USERS_T = ["ID", "Name", "Username", "Email", "Created"]
NODES_T = ["ID", "Hostname", "Name", "MachineKey", "NodeKey", "User", "Tags", "IP addresses",
           "Ephemeral", "Last seen", "Expiration", "Connected", "Expired"]
ROUTES_T = ["ID", "Hostname", "Approved", "Available", "Serving (Primary)"]
KEYS_T = ["ID", "Key/Prefix", "Reusable", "Ephemeral", "Used", "Expiration", "Created", "Owner"]
APIKEYS_T = ["ID", "Prefix", "Expiration", "Created"]

# (command line as typed, headscale's headers, how many rows)
TABLES: list[tuple[list[str], list[str], int]] = [
    (["users", "list"], USERS_T, 2),
    (["user", "ls"], USERS_T, 2),
    (["users", "show", "--name", "bob"], USERS_T, 1),
    (["nodes", "list"], NODES_T, 1),
    (["node", "ls", "-u", "alice"], NODES_T, 1),
    (["nodes", "show"], NODES_T, 1),
    (["nodes", "list-routes"], ROUTES_T, 1),
    (["node", "lsr", "-i", "1"], ROUTES_T, 1),
    (["preauthkeys", "list"], KEYS_T, 3),
    (["preauthkey", "ls", "-u", "bob"], KEYS_T, 2),
    (["authkey", "show"], KEYS_T, 3),
    (["apikeys", "list"], APIKEYS_T, 1),
    (["api", "ls"], APIKEYS_T, 1),
]
CLOCK = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # 2006-01-02 15:04:05


def read_table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """A pterm table as headscale prints it: every line as many cells as the header, joined by
    " | " at the same places (cells padded to their column); a row whose cell holds several
    values goes on over the next lines with its other cells blank. The rows' cells come back
    one value a line."""
    lines = text.rstrip("\n").split("\n")
    width = len(lines[0].split(" | "))
    bars = {tuple(i for i in range(len(line)) if line.startswith(" | ", i)) for line in lines}
    assert len(bars) == 1, f"columns not aligned:\n{text}"
    grid = [[cell.strip() for cell in line.split(" | ")] for line in lines]
    assert {len(r) for r in grid} == {width}, text
    head, rows = grid[0], []
    for cells in grid[1:]:
        if cells[0] or not rows:
            rows.append(cells)
        else:  # a continuation line
            rows[-1] = [f"{a}\n{b}" if b else a for a, b in zip(rows[-1], cells, strict=True)]
    return head, [dict(zip(head, r, strict=True)) for r in rows]


@pytest.mark.parametrize(("argv", "headers", "count"), TABLES,
                         ids=[" ".join(t[0]) for t in TABLES])
def test_headscale_command_lines_print_headscale_tables(
    env: Env, argv: list[str], headers: list[str], count: int,
) -> None:
    if argv[0] in ("apikeys", "api") and not env.json("apikeys", "list", "-o", "json"):
        env.run("apikeys", "create")
    rc, out, err = env.run(*argv)
    assert rc == 0, err
    head, rows = read_table(out)
    assert head[:len(headers)] == headers
    assert len(rows) == count, out


def test_table_cells_are_written_as_headscale_writes_them(env: Env) -> None:
    (node,) = env.json("nodes", "list", "-o", "json")
    _, (row,) = read_table(env.run("nodes", "list")[1])
    raw = bytes.fromhex(node["machine_key"].removeprefix("mkey:"))
    assert row["MachineKey"] == "[" + base64.b64encode(raw).decode()[:5] + "]"  # ShortString
    assert re.fullmatch(r"\[[A-Za-z0-9+/]{5}\]", row["NodeKey"])
    assert row["IP addresses"] == "\n".join(node["ip_addresses"])  # one a line
    assert row["Tags"] == "\n".join(node["tags"]) and node["tags"] == ["tag:db", "tag:web"]
    assert (row["ID"], row["Hostname"], row["Name"]) == ("1", "laptop", node["given_name"])
    assert row["User"] == "tagged-devices"  # tagged: headscale's ListNodes pseudo-user
    assert (row["Ephemeral"], row["Connected"], row["Expired"]) == ("false", "offline", "no")
    assert row["Approved"] == "yes"  # meshscale's column, after headscale's
    assert row["Expiration"] == "N/A" or CLOCK.fullmatch(row["Expiration"])
    assert CLOCK.fullmatch(row["Last seen"]) or row["Last seen"] == ""
    _, routes = read_table(env.run("nodes", "list-routes")[1])
    assert routes[0]["Approved"] == "10.0.0.0/8" and routes[0]["Hostname"] == node["given_name"]

    _, users = read_table(env.run("users", "list")[1])
    assert [(u["ID"], u["Name"], u["Username"], u["Email"]) for u in users] == [
        ("1", "", "alice", "alice@example.com"), ("2", "Bob", "bob", "")]
    assert all(CLOCK.fullmatch(u["Created"]) for u in users)

    _, keys = read_table(env.run("preauthkeys", "list")[1])
    first = keys[0]
    assert (first["Reusable"], first["Used"], first["Owner"]) == ("true", "true", "alice")
    assert CLOCK.fullmatch(first["Expiration"]) and CLOCK.fullmatch(first["Created"])
    listed = env.json("preauthkeys", "list", "-o", "json")
    assert [k["Key/Prefix"] for k in keys] == [k["key"] for k in listed]
    # masked as headscale 0.28+ lists its keys (hskey-auth-<prefix>-***); the secret never
    assert all(re.fullmatch(r"mskey-auth-[0-9a-f]{12}-\*\*\*", k["key"]) for k in listed)
    assert keys[0]["Key/Prefix"] == env.key[:len("mskey-auth-") + 12] + "-***"
    # meshscale's column after headscale's: the third key was made --pre-approved
    assert [k["Pre-approved"] for k in keys] == ["false", "false", "true"]
    assert [k["preauthorized"] for k in listed] == [False, False, True]

    _, (api,) = read_table(env.run("apikeys", "list")[1])
    assert CLOCK.fullmatch(api["Expiration"]) and CLOCK.fullmatch(api["Created"])
    # masked as headscale 0.29 lists its API keys (hskey-api-<prefix>-***)
    assert re.fullmatch(r"mskey-api-[0-9a-f]{12}-\*\*\*", api["Prefix"])


def test_tables_are_coloured_on_a_terminal_as_headscales(env: Env) -> None:
    """On a terminal, the cells headscale colours (Connected, Expired, the keys' Expiration)
    are light green or red; NO_COLOR, or a pipe (every other test here), prints them plain."""

    def on_a_terminal(*args: str, **env_vars: str) -> str:
        leader, follower = os.openpty()
        try:
            proc = subprocess.run([*IN_TREE, "-c", str(env.config), *args], stdout=follower,
                                  stderr=subprocess.PIPE, timeout=60, check=True,
                                  env={**{k: v for k, v in os.environ.items()
                                          if k != "NO_COLOR"}, "TERM": "xterm", **env_vars})
            assert proc.returncode == 0
            return os.read(leader, 1 << 16).decode().replace("\r\n", "\n")
        finally:
            os.close(leader)
            os.close(follower)

    nodes = on_a_terminal("nodes", "list")
    assert "\x1b[91moffline\x1b[0m" in nodes and "\x1b[92mno\x1b[0m" in nodes  # not expired
    plain = re.sub(r"\x1b\[[0-9;]*m", "", nodes)
    assert plain == env.run("nodes", "list")[1]  # the same table, column for column
    unexpired = r"\x1b\[92m\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\x1b\[0m"
    assert re.search(unexpired, on_a_terminal("preauthkeys", "list"))
    env.json("apikeys", "create", "-e", "1h", "-o", "json")
    assert re.search(unexpired, on_a_terminal("apikeys", "list"))
    assert "\x1b" not in on_a_terminal("nodes", "list", NO_COLOR="1")


def test_values_are_what_headscale_prints(env: Env) -> None:
    (node,) = env.json("nodes", "list", "-o", "json")
    # Tagged (by the table test): listed as headscale's ListNodes does, the tag its identity.
    assert (node["user"]["id"], node["user"]["name"]) == (2147455555, "tagged-devices")
    assert node["register_method"] == 1  # AUTH_KEY
    assert node["ip_addresses"] == ["100.64.0.1", "fd7a:115c:a1e0::1"]
    assert node["machine_key"].startswith("mkey:") and node["node_key"].startswith("nodekey:")
    tagged = env.json("nodes", "tags", "-i", "1", "-t", "tag:web", "-t", "tag:db", "-o", "json")
    assert tagged["tags"] == ["tag:db", "tag:web"]
    expired = env.json("nodes", "expire", "-i", "1", "-e", "2030-01-01T00:00:00Z", "-o", "json")
    assert expired["expiry"] == {"seconds": 1893456000, "nanos": 0}
    never = env.json("node", "logout", "-i", "1", "--disable", "-o", "json")
    assert never["expiry"] is None and never["expired"] is False
    keys = env.json("preauthkeys", "list", "-o", "json")
    assert [k["id"] for k in keys] == [1, 2, 3] and keys[0]["reusable"] is True
    revoked = env.json("preauthkeys", "expire", "-i", "2", "-o", "json")
    assert revoked["id"] == 2
    assert env.json("preauthkeys", "expire", keys[1]["key"], "-o", "json")["id"] == 2  # as listed
    gone = env.json("preauthkeys", "del", "-i", "3", "-o", "json")
    assert gone["id"] == 3
    assert [k["id"] for k in env.json("preauthkeys", "list", "-o", "json")] == [1, 2]


def test_health_generate_dump_config_version(env: Env) -> None:
    assert env.json("health", "-o", "json") == {"database_connectivity": True}
    assert env.json("generate", "private-key", "-o", "json")["private_key"].startswith(
        "privkey:")
    rc, out, _ = env.run("gen", "private-key")
    assert rc == 0 and len(out.strip()) == len("privkey:") + 64
    dumped = env.json("dump-config", "-o", "json")
    assert dumped["listen_addr"] and dumped["dns"]["nameservers"]["global"] == []
    rc, out, _ = env.run("dumpConfig")
    assert rc == 0 and "server_url:" in out
    assert "version" in env.json("version", "-o", "json")


def test_errors_as_json_and_confirmation(env: Env) -> None:
    rc, out, err = env.run("nodes", "delete", "--force", "-i", "99", "-o", "json")
    assert rc == 1 and out == ""
    assert json.loads(err) == {"error": "node 99 not found"}
    rc, _, err = env.run("nodes", "delete", "-i", "99", "-o", "json-line")
    assert rc == 1 and err.count("\n") == 1 and "--force" in json.loads(err)["error"]
    rc, _, err = env.run("users", "destroy", "--name", "bob")
    assert rc == 1 and "add --force" in err
    assert len(env.json("users", "list", "-o", "json")) == 2  # nothing was changed
    rc, _, err = env.run("users", "destroy", "--name", "bob", "--force")
    assert rc == 0, err
    rc, _, err = env.run("nodes", "register", "-u", "alice", "-k", "abc", "-o", "json")
    assert rc == 1 and "no login is waiting with auth id 'abc'" in json.loads(err)["error"]


def _actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if name in helps:  # aliases share their command's parser
                    assert helps[name], f"{path} {name}: no description"
                    yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_command_and_flag_has_a_description() -> None:
    seen = list(_actions(build_parser(), "meshscale"))
    assert len(seen) > 50
    missing = [f"{path} {a.option_strings or a.dest}" for path, a in seen if not a.help]
    assert missing == []


def test_list_routes_shows_only_nodes_with_routes(env: Env) -> None:
    """headscale's list-routes leaves out nodes with no route served, approved or announced
    (in the table and in -o json); -i of such a node prints nothing."""
    env.join("router", ["10.2.0.0/24"])
    env.join("plain", [])
    ids = {n["given_name"]: n["id"] for n in env.json("nodes", "list", "-o", "json")}
    assert len(ids) == 3
    routed = sorted(i for name, i in ids.items() if name != "plain")
    assert sorted(n["id"] for n in env.json("nodes", "list-routes", "-o", "json")) == routed
    _, rows = read_table(env.run("nodes", "list-routes")[1])
    assert sorted(int(r["ID"]) for r in rows) == routed
    router = next(r for r in rows if int(r["ID"]) == ids["router"])
    assert (router["Approved"], router["Available"]) == ("", "10.2.0.0/24")
    plain = str(ids["plain"])
    assert env.json("node", "lsr", "-i", plain, "-o", "json") == []
    rc, out, err = env.run("node", "lsr", "-i", plain)
    assert rc == 0, err
    head, none = read_table(out)
    assert head[0] == "ID" and none == []
    # An approved route alone (nothing announced) is enough, as in headscale's filter.
    env.json("nodes", "approve-routes", "-i", plain, "-r", "10.3.0.0/24", "-o", "json")
    assert [n["id"] for n in env.json("node", "lsr", "-i", plain, "-o", "json")] == [ids["plain"]]
    env.json("nodes", "approve-routes", "-i", plain, "-r", "", "-o", "json")
    assert env.json("node", "lsr", "-i", plain, "-o", "json") == []
