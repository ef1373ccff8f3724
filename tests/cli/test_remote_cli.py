"""The remote CLI: ``MESHSCALE_CLI_ADDRESS`` / ``MESHSCALE_CLI_API_KEY`` point the admin commands
at a real ``meshscale serve`` over HTTPS (a certificate from a test CA), from a machine with no
server of its own, and every command prints exactly what the same command prints on the server's
own unix socket. Refusals (no key, a wrong key, plain HTTP, an untrusted certificate, a
local-only command) are one line and exit 1."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from meshscale.simclient import SimNode
from tests.cli.serverproc import IN_TREE, Serve, write_config
from tests.tlsca import TestCA

POLICY = """{
  "tagOwners": {"tag:web": ["alice@"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}"""


def run(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MESHSCALE_CLI_", "HEADSCALE_CLI_"))}
    result = subprocess.run([*IN_TREE, "-c", str(config), *args], capture_output=True,
                            text=True, timeout=60, env={**base, **(env or {})})
    return result.returncode, result.stdout, result.stderr


async def _join(port: int, key: str) -> None:
    for name, routes in (("web1", ["10.1.0.0/24"]), ("db1", [])):
        node = SimNode(name)
        node.hostinfo["RoutableIPs"] = routes
        await node.conn.connect("127.0.0.1", port)
        resp = await node.register(key)
        assert resp.get("MachineAuthorized") is True, resp
        await node.conn.close()


def test_remote_cli_prints_what_the_local_one_does(tmp_path: Path) -> None:
    config = write_config(tmp_path, policy={"mode": "database"})
    raw: dict[str, Any] = yaml.safe_load(config.read_text())
    port = int(raw["listen_addr"].rsplit(":", 1)[1])

    def local(*args: str) -> str:
        rc, out, err = run(config, *args)
        assert rc == 0, err
        return out

    # Nodes first, over plain HTTP (the simulated client speaks no TLS); they stay registered.
    server = Serve(config)
    try:
        local("users", "create", "alice")
        key = local("preauthkeys", "create", "-u", "alice", "--reusable").strip()
        asyncio.run(_join(port, key))
    finally:
        rc, log = server.stop()
    assert rc == 0, log

    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("meshscale", "127.0.0.1", "localhost")
    raw.update(tls_cert_path=str(leaf.cert), tls_key_path=str(leaf.key),
               server_url=f"https://127.0.0.1:{port}")
    config.write_text(yaml.safe_dump(raw))
    policy_file = tmp_path / "policy.hujson"
    policy_file.write_text(POLICY)

    # The "laptop": its own config and data directory, where no server and no socket exist.
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    laptop_config = laptop / "config.yaml"
    laptop_config.write_text(yaml.safe_dump({"data_dir": str(laptop / "data")}))

    server = Serve(config)
    try:
        apikey = local("apikeys", "create").strip()
        env = {"MESHSCALE_CLI_ADDRESS": f"127.0.0.1:{port}", "MESHSCALE_CLI_API_KEY": apikey,
               "MESHSCALE_CLI_TIMEOUT": "30s", "SSL_CERT_FILE": str(ca.pem)}

        def remote(*args: str, **extra: str) -> str:
            rc, out, err = run(laptop_config, *args, env={**env, **extra})
            assert rc == 0, err
            return out

        def refused(*args: str, **extra: str) -> str:
            rc, out, err = run(laptop_config, *args, env={**env, **extra})
            assert rc == 1 and out == "" and len(err.strip().splitlines()) == 1, (rc, out, err)
            assert "Traceback" not in err
            return err

        # Changes made remotely, seen locally.
        remote("users", "create", "bob", "--email", "bob@example.com")
        remote("users", "rename", "-n", "bob", "-r", "carol")
        remote("policy", "set", "-f", str(policy_file))
        remote("nodes", "rename", "-i", "2", "database")
        remote("nodes", "approve-routes", "-i", "1", "-r", "10.1.0.0/24")
        remote("nodes", "tag", "-i", "1", "-t", "tag:web")
        pak = remote("preauthkeys", "create", "-u", "carol", "-e", "1h").strip()
        assert pak.startswith("mskey-auth-")
        remote("preauthkeys", "expire", "-i", "2")
        made = remote("apikeys", "create", "-e", "1h").strip()
        remote("apikeys", "expire", "--prefix", made.split("-")[2], "--force")
        assert "carol" in local("users", "list")
        assert "tag:web" in local("nodes", "list")

        # Every read, in every format: remote first (using the key may note its lastSeen),
        # then local, byte for byte the same.
        reads = [("users", "list"), ("nodes", "list"), ("nodes", "list-routes"),
                 ("nodes", "list-routes", "-i", "1"), ("preauthkeys", "list"),
                 ("apikeys", "list"), ("policy", "get"), ("health",)]
        for args in reads:
            for fmt in ("table", "json", "yaml"):
                assert remote(*args, "-o", fmt) == local(*args, "-o", fmt), (args, fmt)
        # A change's own output, too: the same rename twice prints the same node.
        assert remote("nodes", "rename", "-i", "2", "db", "-o", "json") == \
            local("nodes", "rename", "-i", "2", "db", "-o", "json")
        remote("nodes", "delete", "-i", "2", "--force")
        assert [n["id"] for n in json.loads(local("nodes", "list", "-o", "json"))] == [1]
        # An error the server gives reads the same, too.
        rc, _, err = run(config, "users", "destroy", "-n", "nosuch", "--force")
        assert refused("users", "destroy", "-n", "nosuch", "--force") == err and rc == 1

        # headscale's variable names work as well.
        del env["MESHSCALE_CLI_ADDRESS"], env["MESHSCALE_CLI_API_KEY"]
        assert remote("users", "list", HEADSCALE_CLI_ADDRESS=f"127.0.0.1:{port}",
                      HEADSCALE_CLI_API_KEY=apikey) == local("users", "list")

        env.update(MESHSCALE_CLI_ADDRESS=f"https://127.0.0.1:{port}",
                   MESHSCALE_CLI_API_KEY=apikey)
        assert remote("users", "list") == local("users", "list")
        # -- refusals, one line each, nothing changed
        assert "no API key" in refused("users", "list", MESHSCALE_CLI_API_KEY="")
        wrong = apikey[:-1] + ("A" if apikey[-1] != "A" else "B")
        assert "refused the API key" in refused("users", "create", "mallory",
                                                MESHSCALE_CLI_API_KEY=wrong)
        assert "refused the API key" in refused("users", "list", MESHSCALE_CLI_API_KEY=made)
        assert "mallory" not in local("users", "list")
        assert "not trusted" in refused("users", "list", SSL_CERT_FILE=str(laptop_config))
        # cli.insecure: still TLS, the certificate not checked (headscale's meaning).
        assert remote("users", "list", SSL_CERT_FILE=str(laptop_config),
                      MESHSCALE_CLI_INSECURE="true") == local("users", "list")
        assert "server's own machine" in refused("policy", "set", "--offline", "-f",
                                                 str(policy_file))
        rc, _, err = run(laptop_config, "users", "list",
                           env={**env, "MESHSCALE_CLI_ADDRESS": f"http://127.0.0.1:{port}"})
        assert rc == 2 and "HTTPS only" in err and len(err.strip().splitlines()) == 1, err
        # The routes themselves: a key is required, a body has a limit.
        ctx = ssl.create_default_context(cafile=str(ca.pem))
        url = f"https://127.0.0.1:{port}/api/meshscale/v1/users"
        for headers, body, status in (
                ({}, None, 401), ({"Authorization": f"Bearer {made}"}, None, 401),
                ({"Authorization": f"Bearer {apikey}"}, b'{"name": "' + b"a" * (300 << 10)
                 + b'"}', 413)):
            req = urllib.request.Request(url, data=body, headers=headers,
                                         method="POST" if body else "GET")
            try:
                urllib.request.urlopen(req, context=ctx, timeout=30)
                raise AssertionError("accepted")
            except urllib.error.HTTPError as exc:
                assert exc.code == status and "error" in json.loads(exc.read())
        assert [u["name"] for u in json.loads(local("users", "list", "-o", "json"))] == \
            ["alice", "carol"]
        down = f"127.0.0.1:{port + 1 if port < 65535 else port - 1}"
        assert "cannot reach" in refused("users", "list", MESHSCALE_CLI_ADDRESS=down)
    finally:
        rc, log = server.stop()
    assert rc == 0, log
    assert apikey.split("-", 3)[3] not in log  # the secret may hold "-"
