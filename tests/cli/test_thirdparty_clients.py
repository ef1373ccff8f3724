"""Third-party headscale API clients nobody here wrote, run as their users run them (in their
own virtual environments, made by scripts/apiclients before the test namespace exists), against
a real ``meshscale serve``; every effect is checked through meshscale's own CLI.

- hsapi-client 0.9.9 (written for headscale v0.23): every call it offers. Those meshscale
  serves work; where the client cannot read headscale v0.29's answer (a pre-auth key's user is
  an object now) the call is still made and its effect checked; the calls of RPCs headscale
  v0.29.2 does not have either (get user, routes, move) are shown to be refused.
- headscale-api 0.2.0 (written for headscale v0.22): every RPC it offers whose path headscale
  still serves. Its client crashes after any 200 answer (betterproto, see the driver), so each
  call's effect is what the CLI shows; its "machine" and "routes" RPCs name paths headscale
  v0.29.2 does not have.

docs/api.md lists each operation and why any is not supported.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from meshscale.simclient import SimNode
from meshscale.simhandshake import fetch_server_key
from tests.cli.serverproc import Serve, meshscale_json, write_config


def client_python(name: str) -> str:
    root = os.environ.get("MESHSCALE_APICLIENTS")
    python = Path(root or "/nonexistent") / name / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{name} is not installed: run the tests with 'bash scripts/test' (it runs "
                    "scripts/apiclients), or run scripts/apiclients and set "
                    "MESHSCALE_APICLIENTS")
    return str(python)


def run_client(name: str, program: str, *args: str) -> Any:
    result = subprocess.run([client_python(name), "-c", PRELUDE + program, *args],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Each call's outcome: {"ok": its result} or {"error": "<exception type>: <detail>"}, where the
# detail of a pydantic error is the fields it could not read.
PRELUDE = r'''
import json, sys
def outcome(f):
    try:
        return {"ok": f()}
    except Exception as exc:
        errors = getattr(exc, "errors", None)
        if callable(errors):
            detail = sorted(".".join(map(str, e["loc"])) for e in errors())
        else:
            detail = str(exc)[:200]
        return {"error": f"{type(exc).__name__}: {detail}"}
'''

HSAPI_ADMIN = r'''
from hsapi_client.config import APISettings
from hsapi_client.users import User, v1CreateUserRequest
from hsapi_client.apikeys import APIKey as ApiKey, v1CreateApiKeyRequest, v1ExpireApiKeyRequest
from hsapi_client.policies import Policy
from hsapi_client.preauthkeys import (PreAuthKey, v1CreatePreAuthKeyRequest,
                                      v1ExpirePreAuthKeyRequest, v1ListPreAuthKeyRequest)

settings = APISettings(server=sys.argv[1], api_token=sys.argv[2])
out = {}
users = User(settings)
out["created"] = users.create(v1CreateUserRequest(name="alice")).user.name
users.create(v1CreateUserRequest(name="dave"))
out["renamed"] = users.rename("dave", "erin").user.name
users.delete("erin")
out["users"] = [u.name for u in users.list().users]
out["get_user"] = outcome(lambda: users.get("alice"))  # GetUser: not in headscale v0.29.2
apikeys = ApiKey(settings)
new = apikeys.create(v1CreateApiKeyRequest(expiration="2099-01-01T00:00:00Z")).apiKey
prefix = new.split("-")[2]
out["apikeys"] = [k.prefix for k in apikeys.list().apiKeys]  # masked: mskey-api-<prefix>-***
apikeys.expire(v1ExpireApiKeyRequest(prefix=prefix))
out["expired_apikey"] = [k.expired for k in apikeys.list().apiKeys if prefix in k.prefix]
listed = next(k.prefix for k in apikeys.list().apiKeys if prefix in k.prefix)
apikeys.delete(listed)  # the text the listing shows finds the key, as headscale 0.29's does
out["deleted_apikey"] = listed
policy = json.dumps({"tagOwners": {"tag:web": ["alice@"]},
                     "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]})
out["put_policy"] = sorted(Policy(settings).put(policy).policy)
out["policy"] = Policy(settings).get().policy  # the client parses the JSON text into a dict
keys = PreAuthKey(settings)
# Its pre-auth key models are headscale v0.23's (the key's user a name); v0.29 answers the user
# object, which the client cannot read: the calls are made, their effects checked by the CLI.
out["create_key"] = outcome(lambda: keys.create(v1CreatePreAuthKeyRequest(
    user="alice", reusable=True, expiration="2099-01-01T00:00:00Z", aclTags=["web"])))
out["list_keys"] = outcome(lambda: keys.list(v1ListPreAuthKeyRequest(user="alice")))
# Its expire posts to /api/v1/preauthkey (headscale's is /api/v1/preauthkey/expire): that is
# CreatePreAuthKey, on headscale as here, so it makes a key instead.
out["expire_key"] = outcome(lambda: keys.expire(v1ExpirePreAuthKeyRequest(user="alice",
                                                                          key="x")))
print(json.dumps(out))
'''

HSAPI_NODES = r'''
from hsapi_client.config import APISettings
from hsapi_client.nodes import Node, v1MoveNodeRequest, v1SetTagsNodeRequest
from hsapi_client.routes import Route

settings = APISettings(server=sys.argv[1], api_token=sys.argv[2])
a, b, c = (int(x) for x in sys.argv[3:6])
nodes = Node(settings)
out = {}
out["list"] = sorted(n.givenName for n in nodes.list().nodes)
out["by_user"] = sorted(n.id for n in nodes.byUser("alice").nodes)
out["get"] = nodes.get(a).name
out["_get"] = nodes._get(a).ipAddresses
out["rename"] = nodes.rename(a, "renamed").node.givenName
out["set_tags"] = outcome(lambda: nodes.setTags(a, v1SetTagsNodeRequest(tags=["web"])).node.id)
nodes.expire(b)
out["expired"] = nodes._get(b).expired
out["backfill"] = nodes.backfillips().changes
nodes.delete(c)
# Not in headscale v0.29.2: moving a node to another user, the old routes API.
out["move"] = outcome(lambda: nodes.move(a, v1MoveNodeRequest(user="alice")))
out["routes"] = outcome(lambda: nodes.routes(a))
out["route_list"] = outcome(lambda: Route(settings).list())
print(json.dumps(out))
'''

HEADSCALE_API = r'''
import asyncio, logging
from datetime import datetime, timezone
from headscale_api.headscale import Headscale
from headscale_api.schema.headscale import v1 as hs

async def main():
    api = Headscale(sys.argv[1], sys.argv[2], logger=logging.CRITICAL)
    out = {"key_ok": await api.test_api_key(), "bad_key_ok": await api.test_api_key("x.y"),
           "health": await api.health_check()}

    async def call(name, coro):
        # Every RPC the server answers 200 ends in betterproto's Message.from_dict called on
        # the class; the betterproto it pins (==2.0.0b5) has it as an instance method only,
        # so the call raises TypeError after the server acted. Refusals raise ResponseError.
        try:
            out[name] = {"ok": repr(await coro)}
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}

    await call("list_users", api.list_users(hs.ListUsersRequest()))
    await call("rename_user", api.rename_user(hs.RenameUserRequest(old_name="bob",
                                                                   new_name="bobby")))
    await call("delete_user", api.delete_user(hs.DeleteUserRequest(name="bobby")))
    await call("list_keys", api.list_pre_auth_keys(hs.ListPreAuthKeysRequest(user="alice")))
    await call("create_apikey", api.create_api_key(hs.CreateApiKeyRequest(
        expiration=datetime(2099, 1, 1, tzinfo=timezone.utc))))
    await call("list_apikeys", api.list_api_keys(hs.ListApiKeysRequest()))
    # It sends every field as a query parameter, also to the RPCs whose fields headscale reads
    # from the JSON body only (grpc-gateway's body "*"): they arrive empty, here as there.
    await call("create_user", api.create_user(hs.CreateUserRequest(name="zed")))
    await call("expire_apikey", api.expire_api_key(hs.ExpireApiKeyRequest(prefix=sys.argv[3])))
    await call("create_key", api.create_pre_auth_key(hs.CreatePreAuthKeyRequest(
        user="alice", reusable=True, ephemeral=False,
        expiration=datetime(2099, 1, 1, tzinfo=timezone.utc), acl_tags=[])))
    await call("expire_key", api.expire_pre_auth_key(hs.ExpirePreAuthKeyRequest(
        user="alice", key="x")))
    # Its machine RPCs: /api/v1/machine is /api/v1/node in headscale v0.29.2.
    await call("list_machines", api.list_machines(hs.ListMachinesRequest(user="alice")))
    print(json.dumps(out))

asyncio.run(main())
'''

CRASH = "TypeError: Message.from_dict() missing 1 required positional argument: 'value'"


async def _join(url: str, key: str, names: list[str]) -> None:
    """Nodes that register and stream once, as clients do: each then has a last-seen time."""
    host, port = urlsplit(url).hostname or "", urlsplit(url).port or 80
    server_pub = await fetch_server_key(host, port)
    for name in names:
        node = SimNode(name)
        await node.conn.connect(host, port, server_pub)
        assert (await node.register(key)).get("MachineAuthorized"), name
        assert await node.open_stream().next() is not None
        await node.conn.close()


def test_third_party_clients(tmp_path: Path) -> None:
    # node.expiry: hsapi-client's node model cannot read a node without an expiry (nor one
    # never seen), which headscale v0.29 sends as null too; see docs/api.md.
    config = write_config(tmp_path, policy={"mode": "database"}, node={"expiry": "180d"})
    base = yaml.safe_load(config.read_text())["server_url"]

    def cli(*args: str) -> Any:
        return meshscale_json(config, *args)

    server = Serve(config)
    try:
        key = cli("apikeys", "create")["key"]
        prefix = key.split("-")[2]

        # -- hsapi-client: users, API keys, policy, pre-auth keys
        out = run_client("hsapi-client", HSAPI_ADMIN, base, key)
        assert out["created"] == "alice" and out["renamed"] == "erin"
        assert out["users"] == ["alice"] and [u["name"] for u in cli("users", "list")] == ["alice"]
        assert out["get_user"]["error"].startswith("HTTPException: 405")
        assert out["expired_apikey"] == [True]
        assert out["deleted_apikey"] in out["apikeys"] and out["deleted_apikey"].endswith("-***")
        assert [k["prefix"] for k in cli("apikeys", "list")] == [f"mskey-api-{prefix}-***"]
        assert out["put_policy"] == ["acls", "tagOwners"]
        assert out["policy"]["tagOwners"] == {"tag:web": ["alice@"]}
        assert json.loads(cli("policy", "get")["policy"])["tagOwners"] == {"tag:web": ["alice@"]}
        # Both pre-auth key calls reach the server; only the answer's user is unreadable to it.
        assert out["create_key"] == {"error": "ValidationError: ['preAuthKey.user']"}
        assert out["list_keys"] == {"error": "ValidationError: ['preAuthKeys.0.user']"}
        assert out["expire_key"] == {"ok": None}
        keys = cli("preauthkeys", "list", "-u", "alice")
        assert len(keys) == 2  # the created one, and the one its "expire" created
        made = [k for k in keys if k["acl_tags"] == ["tag:web"]]
        assert len(made) == 1 and made[0]["reusable"] is True
        assert made[0]["expiration"]["seconds"] == 4070908800  # 2099-01-01T00:00:00Z

        # -- hsapi-client: nodes
        pak = cli("preauthkeys", "create", "-u", "alice", "--reusable")["key"]
        asyncio.run(_join(base, pak, ["n1", "n2", "n3"]))
        ids = {n["name"]: n["id"] for n in cli("nodes", "list")}
        out = run_client("hsapi-client", HSAPI_NODES, base, key,
                         *(str(ids[n]) for n in ("n1", "n2", "n3")))
        assert out["list"] == ["n1", "n2", "n3"] and out["get"] == "n1"
        assert out["by_user"] == sorted(ids.values()) and len(out["_get"]) == 2
        assert out["rename"] == "renamed" and out["set_tags"] == {"ok": ids["n1"]}
        assert out["expired"] is True and out["backfill"] == []
        for gone in ("move", "routes", "route_list"):
            assert out[gone]["error"].startswith("HTTPException: 404"), out[gone]
        nodes = {n["id"]: n for n in cli("nodes", "list")}
        assert sorted(nodes) == [ids["n1"], ids["n2"]]  # n3 deleted
        assert nodes[ids["n1"]]["given_name"] == "renamed"
        assert nodes[ids["n1"]]["tags"] == ["tag:web"]
        assert nodes[ids["n2"]]["expired"] is True and nodes[ids["n1"]]["expired"] is False

        # -- headscale-api
        cli("users", "create", "bob")
        out = run_client("headscale-api", HEADSCALE_API, base, key, prefix)
        assert out["key_ok"] is True and out["bad_key_ok"] is False and out["health"] is True
        # If its calls stop crashing (a fixed release), check their answers here instead.
        for name in ("list_users", "rename_user", "delete_user", "list_keys", "create_apikey",
                     "list_apikeys"):
            assert out[name] == {"error": CRASH}, (name, out[name])
        assert [u["name"] for u in cli("users", "list")] == ["alice"]  # bob renamed, deleted
        # create_apikey made one; its expiration was a query parameter, so the default, 90 days
        assert len(cli("apikeys", "list")) == 2
        assert out["create_user"]["error"].startswith("ResponseError: Response (code 3)")
        assert "zed" not in [u["name"] for u in cli("users", "list")]
        assert out["expire_apikey"]["error"].startswith("ResponseError: Response (code 5)")
        for name in ("create_key", "expire_key"):
            assert out[name]["error"].startswith("ResponseError: Response (code 3)"), out[name]
        masked = f"mskey-api-{prefix}-***"
        assert [k["expiration"]["seconds"] > time.time()
                for k in cli("apikeys", "list") if k["prefix"] == masked] == [True]
        assert len(cli("preauthkeys", "list", "-u", "alice")) == 3  # none made or expired
        assert "404 Not Found" in out["list_machines"]["error"]
    finally:
        rc, log = server.stop()
    assert rc == 0, log
