"""Third-party headscale API clients nobody here wrote, run as their users run them (in their
own virtual environments, made by scripts/apiclients before the test namespace exists), against
a real ``meshscale serve``; every effect is checked through meshscale's own CLI.

- hsapi-client 0.9.9 (written for headscale v0.23): users, API keys, node list, policy (not its
  pre-auth keys: see the driver).
- headscale-api 0.2.0 (written for headscale v0.22): its API-key test and health check. Its RPC
  calls fail on any server with the betterproto it pins (the driver shows it), and its machine
  and route calls name paths headscale itself has since removed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli.serverproc import Serve, meshscale, write_config


def client_python(name: str) -> str:
    root = os.environ.get("MESHSCALE_APICLIENTS")
    python = Path(root or "/nonexistent") / name / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{name} is not installed: run the tests with 'bash scripts/test' (it runs "
                    "scripts/apiclients), or run scripts/apiclients and set "
                    "MESHSCALE_APICLIENTS")
    return str(python)


def run_client(name: str, program: str, *args: str) -> Any:
    result = subprocess.run([client_python(name), "-c", program, *args], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


HSAPI = r'''
import json, sys
from hsapi_client.config import APISettings
from hsapi_client.users import User, v1CreateUserRequest
from hsapi_client.apikeys import APIKey as ApiKey, v1CreateApiKeyRequest, v1ExpireApiKeyRequest
from hsapi_client.nodes import Node
from hsapi_client.policies import Policy

settings = APISettings(server=sys.argv[1], api_token=sys.argv[2])
out = {}
users = User(settings)
out["created"] = users.create(v1CreateUserRequest(name="carol")).user.name
users.create(v1CreateUserRequest(name="dave"))
users.rename("dave", "erin")
users.delete("erin")
out["users"] = [u.name for u in users.list().users]
# Not its pre-auth keys: their models are headscale v0.23's (the key's user a string; v0.29
# sends the user object), so create and list cannot read the answers, and its expire POSTs to
# /api/v1/preauthkey (no /expire), which creates a key on headscale as it does here.
apikeys = ApiKey(settings)
new = apikeys.create(v1CreateApiKeyRequest(expiration="2099-01-01T00:00:00Z")).apiKey
prefix = new.split("-")[2]
out["apikeys"] = [k.prefix for k in apikeys.list().apiKeys]
apikeys.expire(v1ExpireApiKeyRequest(prefix=prefix))
apikeys.delete(prefix)
out["deleted_apikey"] = prefix
out["nodes"] = Node(settings).list().nodes
policy = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
Policy(settings).put(policy)
got = Policy(settings).get().policy  # the client parses the JSON text into a dict
out["policy"] = got if isinstance(got, str) else json.dumps(got)
print(json.dumps(out))
'''

HEADSCALE_API = r'''
import asyncio, json, logging, sys
from headscale_api.headscale import Headscale
from headscale_api.schema.headscale import v1 as hs

async def main():
    api = Headscale(sys.argv[1], sys.argv[2], logger=logging.WARNING)
    out = {"key_ok": await api.test_api_key(), "bad_key_ok": await api.test_api_key("x.y"),
           "health": await api.health_check()}
    # Its RPC calls all end in betterproto's Message.from_dict called on the class, which the
    # betterproto it pins (2.0.0b5) does not allow: they fail on any server. Shown, not hidden:
    try:
        await api.list_users(hs.ListUsersRequest())
    except TypeError as exc:
        out["rpc_error"] = str(exc)
    print(json.dumps(out))

asyncio.run(main())
'''


def test_third_party_clients(tmp_path: Path) -> None:
    config = write_config(tmp_path, policy={"mode": "database"})
    base = yaml.safe_load(config.read_text())["server_url"]

    def cli(*args: str) -> Any:
        result = meshscale("-c", str(config), *args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    server = Serve(config)
    try:
        key = cli("apikeys", "create")["key"]

        out = run_client("hsapi-client", HSAPI, base, key)
        assert out["created"] == "carol" and out["users"] == ["carol"]
        assert [u["name"] for u in cli("users", "list")] == ["carol"]
        assert out["deleted_apikey"] in out["apikeys"]
        assert [k["prefix"] for k in cli("apikeys", "list")] == [key.split("-")[2]]
        assert out["nodes"] == [] and "accept" in out["policy"]
        assert "accept" in cli("policy", "get")["policy"]

        out = run_client("headscale-api", HEADSCALE_API, base, key)
        assert out["key_ok"] is True and out["bad_key_ok"] is False and out["health"] is True
        # If this starts passing (a fixed release), exercise its user and key calls here.
        assert "from_dict() missing 1 required positional argument" in out["rpc_error"]
    finally:
        rc, log = server.stop()
    assert rc == 0, log
