"""headscale's /api/v1 on the main listener of a real ``meshscale serve``: API-key refusals,
the operations, their effect seen through the CLI, and every route of the OpenAPI document
answering."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from meshscale.api.openapi import document
from tests.cli.serverproc import Serve, meshscale, meshscale_json, write_config


class Api:
    def __init__(self, base: str, key: str | None) -> None:
        self.base, self.key = base, key

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             key: str | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        token = key if key is not None else self.key
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")


def test_rest_api(tmp_path: Path) -> None:
    config = write_config(tmp_path, policy={"mode": "database"})
    base = yaml.safe_load(config.read_text())["server_url"]

    def cli(*args: str) -> Any:
        return meshscale_json(config, *args)

    server = Serve(config)
    try:
        key = meshscale("-c", str(config), "apikeys", "create").stdout.strip()
        api = Api(base, key)
        # -- refusals: 401 and nothing else
        expired = meshscale("-c", str(config), "apikeys", "create").stdout.strip()
        cli("apikeys", "expire", "--prefix", expired.split("-")[2])
        deleted = meshscale("-c", str(config), "apikeys", "create").stdout.strip()
        cli("apikeys", "delete", "--prefix", deleted.split("-")[2])
        wrong_secret = key[:23] + ("A" if key[23] != "A" else "B") + key[24:]
        for bad in ("", "nonsense", expired, deleted, wrong_secret, key + "x"):
            status, body = api.call("POST", "/api/v1/user", {"name": "mallory"}, key=bad or "-")
            assert status == 401, (bad, body)
            assert body == {"code": 16, "message": "Unauthorized", "details": []}
        assert api.call("GET", "/api/v1/user", key="")[0] == 401
        assert cli("users", "list") == []
        # -- bad bodies: a clear 400, nothing changed
        assert api.call("POST", "/api/v1/user", raw=b"{not json")[0] == 400
        assert api.call("POST", "/api/v1/user", raw=b"[1]")[0] == 400
        status, body = api.call("POST", "/api/v1/user", raw=b'{"name": "' + b"a" * (300 << 10)
                                + b'"}')
        assert status == 400 and "over" in body["message"]
        assert cli("users", "list") == []

        # -- users
        status, body = api.call("POST", "/api/v1/user", {"name": "alice", "email": "a@x.org"})
        assert status == 200 and body["user"]["name"] == "alice"
        uid = body["user"]["id"]
        assert isinstance(uid, str)
        assert api.call("GET", "/api/v1/user?name=alice")[1]["users"][0]["id"] == uid
        assert api.call("POST", f"/api/v1/user/{uid}/rename/bob")[0] == 200
        assert [u["name"] for u in cli("users", "list")] == ["bob"]
        assert api.call("DELETE", "/api/v1/user/999")[1]["code"] == 5

        # -- pre-auth keys
        when = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        status, body = api.call("POST", "/api/v1/preauthkey",
                                {"user": uid, "reusable": True, "expiration": when})
        assert status == 200 and body["preAuthKey"]["key"].startswith("mskey-auth-"), body
        pak = body["preAuthKey"]
        listed = api.call("GET", "/api/v1/preauthkey")[1]["preAuthKeys"]
        assert [k["id"] for k in listed] == [pak["id"]]
        # listed masked, as headscale 0.28+ lists its keys; the secret is never shown again
        assert listed[0]["key"] == "mskey-auth-" + pak["key"].split("-")[2] + "-***"
        assert api.call("POST", "/api/v1/preauthkey/expire", {"id": pak["id"]}) == (200, {})
        (shown,) = cli("preauthkeys", "list")
        # the CLI prints headscale's Timestamp shape: {"seconds": ..., "nanos": ...}
        assert datetime.fromtimestamp(shown["expiration"]["seconds"], UTC) <= \
            datetime.now(UTC)
        assert api.call("DELETE", f"/api/v1/preauthkey?id={pak['id']}") == (200, {})
        assert cli("preauthkeys", "list") == []

        # -- API keys
        status, body = api.call("POST", "/api/v1/apikey", {"expiration": when})
        assert status == 200 and body["apiKey"].startswith("mskey-api-")
        assert api.call("GET", "/api/v1/user", key=body["apiKey"])[0] == 200
        prefixes = [k["prefix"] for k in api.call("GET", "/api/v1/apikey")[1]["apiKeys"]]
        new_prefix = body["apiKey"].split("-")[2]
        masked = f"mskey-api-{new_prefix}-***"  # listed as headscale 0.29 lists its keys
        assert masked in prefixes and new_prefix not in prefixes
        assert api.call("POST", "/api/v1/apikey/expire", {"prefix": new_prefix})[0] == 200
        assert api.call("GET", "/api/v1/user", key=body["apiKey"])[0] == 401
        assert api.call("DELETE", f"/api/v1/apikey/{masked}")[0] == 200  # as listed
        assert masked not in [k["prefix"] for k in cli("apikeys", "list")]

        # -- policy and health
        policy = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
        assert api.call("PUT", "/api/v1/policy", {"policy": policy})[0] == 200
        assert api.call("GET", "/api/v1/policy")[1]["policy"] == policy
        assert api.call("POST", "/api/v1/policy/check", {"policy": "{bad"})[0] == 400
        assert api.call("GET", "/api/v1/health") == (200, {"databaseConnectivity": True})
        assert api.call("GET", "/api/v1/node") == (200, {"nodes": []})
        assert api.call("GET", "/api/v1/node/7")[1]["code"] == 5

        # -- every route in the document answers (with the API's own shapes, never a 404 page
        # or a 405 from the router)
        for path, ops in document()["paths"].items():
            concrete = (path.replace("{old_id}", "999").replace("{new_name}", "x")
                        .replace("{id}", "999").replace("{node_id}", "999")
                        .replace("{prefix}", "nosuchprefix"))
            for method in ops:
                status, body = api.call(method.upper(), concrete, {})
                assert status in (200, 400, 404, 501), (method, path, status, body)
                assert isinstance(body, dict) and (status == 200 or "code" in body)
        assert api.call("GET", "/api/v1/openapi.json", key="")[0] == 200
    finally:
        rc, log = server.stop()
    assert rc == 0, log
    assert key[23:] not in log
