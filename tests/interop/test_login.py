"""Interactive login with the real Tailscale client (v1.102.5): ``tailscale up`` without a key.

The client prints the AuthURL and waits; the admin runs ``meshscale auth register`` (or headscale's
``nodes register``) or ``auth reject``; the waiting ``tailscale up`` finishes by itself.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from meshscale.ports import free_port
from tests.interop.realclients import MeshscaleProcess, stop_process, wait_for
from tests.interop.tailscaled import Tailscaled
from tests.oidcprovider import browser_login, confirm_token, oidc_provider

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

Make = Callable[..., Tailscaled]
AUTH_URL = re.compile(r"(https?://\S+/register/([A-Za-z0-9_-]{24}))")


def make_server(tmp_path: Path, extra: str = "") -> MeshscaleProcess:
    srv = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun"], extra)
    srv.start()
    srv.cli("users", "create", "alice")
    return srv


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MeshscaleProcess]:
    srv = make_server(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


class InteractiveUp:
    """``tailscale up`` without a key, running in the background; its output goes to a file."""

    def __init__(self, node: Tailscaled, login_server: str) -> None:
        self.out = node.dir / "up.out"
        self.proc = subprocess.Popen(
            [str(node.cli_binary), f"--socket={node.socket}", "up",
             f"--login-server={login_server}", f"--hostname={node.name}", "--timeout=120s"],
            stdout=self.out.open("wb"), stderr=subprocess.STDOUT, env=node.env,
        )

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def auth_url(self) -> tuple[str, str]:
        """(AuthURL, auth id) as the client printed them."""
        m = wait_for(lambda: AUTH_URL.search(self.text()), 30, "tailscale up to print its AuthURL")
        return m.group(1), m.group(2)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        stop_process(self.proc)  # type: ignore[arg-type]


def page(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_interactive_register_then_running_and_traffic(server: MeshscaleProcess,
                                                       tailscaled: Make) -> None:
    """No key: AuthURL; its page tells the admin the command; `auth register` lets the waiting
    client proceed by itself within a second; it reaches Running and pings a peer."""
    a, b = tailscaled("alpha"), tailscaled("beta")
    a.start()
    b.start()
    key = server.cli("preauthkeys", "create", "--user", "alice", "-o", "json")["key"]
    a.up(server.url, key)
    up = InteractiveUp(b, server.url)
    try:
        url, auth_id = up.auth_url()
        assert url == f"{server.url}/register/{auth_id}"
        status, text = page(url)
        assert status == 200
        assert f"meshscale auth register --auth-id {auth_id} --user USERNAME" in text
        assert "beta" in text
        assert up.proc.poll() is None  # still waiting
        # The client holds its follow-up request open: nothing is registered yet.
        assert "beta" not in server.nodes()
        server.cli("auth", "register", "--auth-id", auth_id, "--user", "alice")
        started = time.monotonic()
        assert up.wait(10) == 0, up.text()
        assert time.monotonic() - started < 1.5, "the waiting client did not proceed at once"
    finally:
        up.stop()
    assert b.status()["BackendState"] == "Running"
    node = server.nodes()["beta"]
    assert node["user"]["name"] == "alice" and node["register_method"] == 2  # headscale: CLI
    # Used: the page and the id are gone.
    assert page(url)[0] == 404
    wait_for(lambda: "alpha" in b.peers(), 20, "beta to see alpha")
    assert "pong from alpha" in b.cli("ping", "--until-direct=false", "-c", "3", "alpha").stdout


def test_headscale_nodes_register_spelling(server: MeshscaleProcess, tailscaled: Make) -> None:
    """headscale's older `nodes register --user U --key ID` does the same."""
    b = tailscaled("beta")
    b.start()
    up = InteractiveUp(b, server.url)
    try:
        _url, auth_id = up.auth_url()
        server.cli("nodes", "register", "--user", "alice", "--key", auth_id)
        assert up.wait(10) == 0, up.text()
    finally:
        up.stop()
    assert b.status()["BackendState"] == "Running"


def test_auth_reject(server: MeshscaleProcess, tailscaled: Make) -> None:
    """`auth reject`: the waiting client is told and fails; nothing is registered."""
    b = tailscaled("beta")
    b.start()
    up = InteractiveUp(b, server.url)
    try:
        url, auth_id = up.auth_url()
        server.cli("auth", "reject", "--auth-id", auth_id)
        assert up.wait(10) != 0
        assert "refused" in up.text()
    finally:
        up.stop()
    assert "beta" not in server.nodes()
    assert page(url)[0] == 404
    with pytest.raises(AssertionError, match="no login is waiting"):
        server.cli("auth", "register", "--auth-id", auth_id, "--user", "alice")


def test_unused_auth_id_expires(tmp_path: Path, tailscaled: Make) -> None:
    """node.auth_id_expiry: an unused id stops working, and the waiting client is told."""
    srv = make_server(tmp_path, "node:\n  auth_id_expiry: 3s\n")
    b = tailscaled("beta")
    b.start()
    up = InteractiveUp(b, srv.url)
    try:
        url, auth_id = up.auth_url()
        assert up.wait(15) != 0
        assert "expired" in up.text()
        assert page(url)[0] == 404
        with pytest.raises(AssertionError, match="expired"):
            srv.cli("auth", "register", "--auth-id", auth_id, "--user", "alice")
        assert "beta" not in srv.nodes()
    finally:
        up.stop()
        srv.stop()


def test_oidc_login_with_the_real_client(tmp_path: Path, tailscaled: Make) -> None:
    """`tailscale up` without a key against a server with OIDC: its AuthURL leads to a real
    OpenID provider; the test logs in over HTTP with a cookie jar and confirms; the client
    proceeds by itself, reaches Running and pings a peer."""
    port = free_port()
    with oidc_provider([f"http://127.0.0.1:{port}/oidc/callback"]) as issuer:
        srv = MeshscaleProcess(
            tmp_path, ["sqlite", "derp", "stun", "oidc"],
            f"oidc:\n  issuer: {issuer}\n  client_id: meshscale\n"
            "  client_secret: meshscale-secret\n  scope: [openid, email, profile]\n",
            port=port)
        srv.start()
        a, b = tailscaled("alpha"), tailscaled("beta")
        up = None
        try:
            srv.cli("users", "create", "ops")
            a.start()
            b.start()
            a.up(srv.url, srv.cli("preauthkeys", "create", "--user", "ops", "-o", "json")["key"])
            up = InteractiveUp(b, srv.url)
            url, _ = up.auth_url()
            assert url.startswith(f"{srv.url}/oidc/register/")

            async def browse() -> httpx.Response:
                async with httpx.AsyncClient(timeout=10) as browser:
                    callback = await browser_login(browser, url, "bob", f"{srv.url}/oidc/callback")
                    page = await browser.get(callback)
                    assert page.status_code == 200 and "beta" in page.text, page.text
                    return await browser.post(f"{srv.url}/oidc/confirm",
                                              data={"token": confirm_token(page.text)})

            done = asyncio.run(browse())
            assert done.status_code == 200, done.text
            assert up.wait(10) == 0, up.text()
            assert b.status()["BackendState"] == "Running"
            node = srv.nodes()["beta"]
            assert node["user"]["name"] == "bob" and node["user"]["email"] == "bob@example.com"
            assert node["user"]["provider"] == "oidc"
            wait_for(lambda: "alpha" in b.peers(), 20, "beta to see alpha")
            assert "pong from alpha" in b.cli("ping", "--until-direct=false", "-c", "3",
                                              "alpha").stdout
        finally:
            if up is not None:
                up.stop()
            srv.stop()
