"""Issue 11, item 13: nothing the server holds is open to other local users.

The attacks: another user on the machine reads /debug/ pages on the loopback metrics port, or
reads the database and keys in a data directory that happens to be 0755.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshscale.plugins import metrics as metrics_plugin
from meshscale.redact import url as redact_url
from meshscale.server import Server
from tests.plugin.test_bad_input import still_serving

pytestmark = pytest.mark.asyncio

TOKEN_IN_URL = "s3cr3t-derp-token"
DOH_PROFILE = "abc123profile"
PASSWORD = "hunter2"


async def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    def run() -> tuple[int, bytes]:
        req = urllib.request.Request(url)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return await asyncio.to_thread(run)


def debug_url(server: Server, page: str) -> str:
    exporter = metrics_plugin.exporter_of(server)
    assert exporter is not None
    return f"http://127.0.0.1:{exporter.port}/debug/{page}"


async def test_item13_debug_pages_are_off_by_default(
        meshscale_server_factory: Callable[..., Any]) -> None:
    server: Server = await meshscale_server_factory(
        plugins=["sqlite", "metrics"], metrics_listen_addr="127.0.0.1:0")
    status, body = await get(debug_url(server, "config"))
    assert status == 403 and b"set metrics_debug_token" in body
    status, _ = await get(debug_url(server, "config"), token="anything")
    assert status == 403
    status, _ = await get(debug_url(server, "").replace("/debug/", "/metrics"))
    assert status == 200  # scrapes are unaffected
    await still_serving(server)


async def test_item13_debug_pages_need_the_token_and_show_no_secrets(
        meshscale_server_factory: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    token = "the-debug-token"
    derp_url = f"https://admin:{PASSWORD}@127.0.0.1:1/derpmap.json?token={TOKEN_IN_URL}"
    server: Server = await meshscale_server_factory(
        plugins=["sqlite", "metrics"], metrics_listen_addr="127.0.0.1:0",
        metrics_debug_token=token,
        derp={"urls": [derp_url], "auto_update_enabled": False,
              "server": {"enabled": False}},
        dns={"nameservers": {"global": [f"https://dns.nextdns.io/{DOH_PROFILE}"],
                             "split": {"corp.example": [f"https://dns.nextdns.io/{DOH_PROFILE}"]}}})
    for bad in (None, "wrong", token + "x", ""):
        status, body = await get(debug_url(server, "config"), token=bad)
        assert status == 401 and b"Authorization: Bearer" in body, (bad, status)
    status, body = await get(debug_url(server, "config"), token=token)
    assert status == 200
    for page in ("", "nodes", "sessions", "policy", "stats"):
        status, more = await get(debug_url(server, page), token=token)
        assert status == 200
        body += more
    for secret in (TOKEN_IN_URL, DOH_PROFILE, PASSWORD, token):
        assert secret.encode() not in body, secret
    assert b"dns.nextdns.io" in body and b"<redacted>" in body
    # The DERP map URL could not be fetched: the warning names it, without its secrets.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "127.0.0.1:1/derpmap.json" in logged
    for secret in (TOKEN_IN_URL, PASSWORD, DOH_PROFILE, token):
        assert secret not in logged, secret
    await still_serving(server)


async def test_item13_redact_url() -> None:
    assert redact_url("https://u:p@h.example:8443/x?token=abc&v=1") == (
        "https://<redacted>@h.example:8443/x?token=<redacted>&v=<redacted>")
    assert redact_url("https://dns.nextdns.io/abc123", secret_path=True) == (
        "https://dns.nextdns.io/<redacted>")
    assert redact_url("https://cloudflare-dns.com/dns-query", secret_path=True) == (
        "https://cloudflare-dns.com/dns-query")
    assert redact_url("1.1.1.1") == "1.1.1.1"
    assert redact_url("http://[::1") == "<redacted>"  # unparseable: all of it


async def test_item13_files_are_private_in_an_open_directory(
        meshscale_server_factory: Callable[..., Any], tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        data = tmp_path / "server0"  # the factory's first data directory, made 0755 first
        data.mkdir(mode=0o755)
        os.chmod(data, 0o755)
        server: Server = await meshscale_server_factory(
            plugins=["sqlite", "derp"],
            derp={"server": {"stun_listen_addr": "127.0.0.1:0"}, "auto_update_enabled": False})
        assert server.config.data_path == data
        await still_serving(server)  # writes to the database (WAL and SHM exist now)
    finally:
        os.umask(old_umask)
    seen = []
    for path in data.rglob("*"):
        mode = path.lstat().st_mode
        if stat.S_ISSOCK(mode):
            continue  # the admin socket: unix_socket_permission (0770) says who may connect
        seen.append(path.name)
        assert mode & 0o077 == 0, f"{path} is {oct(stat.S_IMODE(mode))}"
    for name in ("db.sqlite", "db.sqlite-wal", "noise_private.key",
                 "derp_server_private.key"):
        assert name in seen, (name, seen)
