"""The OIDC login in a real browser: headless Chromium (Debian's chromium and chromedriver,
scripts/ensure-chromium), driven with Selenium, inside the test network namespace.

The real ``tailscale up`` without a key prints its AuthURL; Chromium opens it, is sent to the
OpenID provider (npm oidc-provider with its own login and consent pages), signs in, comes back to
meshscale's confirmation page and presses its button; the waiting client proceeds by itself to
Running. Every page is kept as a screenshot: ``$MESHSCALE_TEST_ARTEFACTS/browser-login/``
(default ``test-artefacts/`` in the checkout; docs/testing.md), the path printed by the test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from meshscale.ports import free_port
from tests.interop.realclients import MeshscaleProcess, wait_for
from tests.interop.tailscaled import Tailscaled
from tests.interop.test_login import InteractiveUp
from tests.oidcprovider import oidc_provider

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

Make = Callable[..., Tailscaled]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# No GPU, no sandbox (root in a user namespace), and nothing that phones home: the namespace
# has no route out, and these keep the browser from waiting on one.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1000,800")


def artefacts() -> Path:
    root = Path(os.environ.get("MESHSCALE_TEST_ARTEFACTS")
                or Path(__file__).resolve().parents[2] / "test-artefacts")
    folder = root / "browser-login"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile, through the Debian chromedriver (Selenium is
    given both paths, so it never looks for or downloads a driver of its own)."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("Chromium is not installed: run `bash scripts/ensure-chromium` (outside the "
                    "network namespace; `bash scripts/test` runs it first)", pytrace=False)
    profile = tempfile.mkdtemp(prefix="meshscale-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Pages:
    """Numbered screenshots of each page the browser shows."""

    def __init__(self, driver: WebDriver, folder: Path) -> None:
        self.driver, self.folder, self.shots = driver, folder, 0

    def shoot(self, name: str) -> None:
        self.shots += 1
        path = self.folder / f"{self.shots:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        (self.folder / f"{self.shots:02d}-{name}.html").write_text(self.driver.page_source)

    def submit(self) -> None:
        """Press the page's button and wait until the browser has left that page: the next
        step's readyState check would otherwise see the old page, still "complete", and its
        elements go stale under it (a flake on a loaded machine)."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.find_element(By.CSS_SELECTOR, "button[type=submit], button").click()
        WebDriverWait(self.driver, 10).until(expected_conditions.staleness_of(old))


def log_in_at_provider(pages: Pages, server_url: str, login: str) -> None:
    """From the AuthURL through the provider's own login and consent pages, back to
    meshscale's confirmation page."""
    driver = pages.driver
    for step in range(6):
        wait_for(lambda: driver.execute_script("return document.readyState") == "complete",
                 10, "the page to load")
        if driver.current_url.startswith(f"{server_url}/oidc/callback"):
            return
        fields = driver.find_elements(By.NAME, "login")
        if fields:
            pages.shoot("provider-login")
            fields[0].clear()
            fields[0].send_keys(login)
            driver.find_element(By.NAME, "password").send_keys(f"{login}-pw")
        else:
            pages.shoot(f"provider-step-{step}")
        pages.submit()
    raise AssertionError(f"the browser did not come back to meshscale: {driver.current_url}")


def test_oidc_login_in_headless_chromium(tmp_path: Path, tailscaled: Make) -> None:
    port = free_port()
    folder = artefacts()
    print(f"\nscreenshots of the browser login: {folder}")
    with oidc_provider([f"http://127.0.0.1:{port}/oidc/callback"], own_pages=True) as issuer:
        srv = MeshscaleProcess(
            tmp_path, ["sqlite", "derp", "stun", "oidc"],
            f"oidc:\n  issuer: {issuer}\n  client_id: meshscale\n"
            "  client_secret: meshscale-secret\n  scope: [openid, email, profile]\n",
            port=port)
        srv.start()
        node = tailscaled("laptop")
        up = None
        try:
            node.start()
            up = InteractiveUp(node, srv.url)
            url, _ = up.auth_url()
            with chromium() as driver:
                pages = Pages(driver, folder)
                try:
                    driver.get(url)
                    assert driver.current_url.startswith(f"{issuer}/"), driver.current_url
                    log_in_at_provider(pages, srv.url, "alice")
                    pages.shoot("meshscale-confirm")
                    body = driver.find_element(By.TAG_NAME, "body").text
                    assert "Register the device laptop" in body, body
                    assert "Alice Admin (alice@example.com)" in body, body
                    assert up.proc.poll() is None  # nothing registered before the button
                    pages.submit()
                    wait_for(lambda: "Device registered" in driver.title + driver.page_source,
                             10, "the registration page")
                    pages.shoot("meshscale-registered")
                    assert "is now registered to alice" in driver.find_element(
                        By.TAG_NAME, "body").text
                except (AssertionError, WebDriverException):
                    pages.shoot("failure")
                    raise
            assert up.wait(15) == 0, up.text()
            assert node.status()["BackendState"] == "Running"
            registered = srv.nodes()["laptop"]
            assert registered["user"]["name"] == "alice"
            assert registered["user"]["provider"] == "oidc"
        finally:
            if up is not None:
                up.stop()
            srv.stop()
    shots = sorted(p.name for p in folder.glob("*.png"))
    assert any("provider-login" in s for s in shots), shots
    assert shots[-2:] == [f"{len(shots) - 1:02d}-meshscale-confirm.png",
                          f"{len(shots):02d}-meshscale-registered.png"], shots
