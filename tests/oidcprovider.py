"""A real OpenID provider for the OIDC tests: tests/oidc/provider.mjs on npm ``oidc-provider``.

scripts/ensure-oidc-provider installs it (outside the network namespace); here it is only
started, on loopback, with the redirect URIs the test's servers will use. Users: alice
(alice@example.com, verified, groups admins+devs), bob (bob@example.com, verified, devs),
carol (carol@example.org, NOT verified, no groups); passwords ``<name>-pw``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

FOLDER = Path(__file__).resolve().parent / "oidc"


@contextmanager
def oidc_provider(redirect_uris: list[str], own_pages: bool = False,
                  tamper: str = "") -> Iterator[str]:
    """Starts the provider; yields its issuer URL. ``own_pages``: oidc-provider's own login and
    consent pages (its development interactions) instead of the minimal login form, for the
    test that logs in with a real browser. ``tamper``: a misbehaving provider for the refusal
    tests: "nonce" signs ID tokens with a nonce other than the one sent; "id_token" changes
    the ID token's subject after signing."""
    node = shutil.which("node")
    if node is None or not (FOLDER / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("the OpenID provider is not installed: run `bash scripts/ensure-oidc-provider`"
                    " (outside the network namespace; `bash scripts/test` runs it first)",
                    pytrace=False)
    proc = subprocess.Popen(
        [node, str(FOLDER / "provider.mjs")], cwd=FOLDER, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "OP_PORT": "0", "OP_REDIRECT_URIS": " ".join(redirect_uris),
             "OP_DEV_INTERACTIONS": "1" if own_pages else "0", "OP_TAMPER": tamper},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.match(r"READY (\S+)", line)
        assert m, f"the OpenID provider did not start: {line!r}"
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(10)


async def browser_login(browser: httpx.AsyncClient, auth_url: str, login: str,
                        callback_prefix: str) -> str:
    """Follow the AuthURL through the provider's login form, as a browser does, up to the
    callback URL (returned, not yet visited)."""
    r = await browser.get(auth_url)
    assert r.status_code == 302, (r.status_code, r.text[:300])
    for _ in range(20):
        loc = urljoin(str(r.url), r.headers.get("location", ""))
        if loc.startswith(callback_prefix):
            return loc
        if r.status_code in (302, 303):
            r = await browser.get(loc)
            continue
        assert r.status_code == 200, (r.status_code, r.text[:300])
        action = urljoin(str(r.url), re.search(r'action="([^"]+)"', r.text)[1])  # type: ignore[index]
        r = await browser.post(action, data={"login": login, "password": f"{login}-pw"})
    raise AssertionError("the login did not come back to the callback")


def confirm_token(page: str) -> str:
    m = re.search(r'name="token" value="([^"]+)"', page)
    assert m, page[:500]
    return m.group(1)
