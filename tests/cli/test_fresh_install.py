"""The README's first command on a machine that has nothing but Python: the wheel, installed
with only its declared dependencies into a brand-new virtual environment (no site-packages of
this machine), serves, answers /key, takes an admin command, and stops cleanly.

Inside scripts/test there is no network (private namespace): the dependencies' wheels come from
$MESHSCALE_WHEELHOUSE, which scripts/test fills beforehand from the project's declared
dependencies (``pip download .``), so an undeclared one is simply not there. Without that
variable pip uses its normal index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.cli.serverproc import Serve, meshscale, write_config

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment holding the built wheel and its declared dependencies."""
    work = tmp_path_factory.mktemp("fresh")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "--disable-pip-version-check", "-w", str(work / "dist"), str(ROOT)],
                   check=True, cwd=work, capture_output=True)
    (wheel,) = (work / "dist").glob("meshscale-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    index: list[str] = []
    wheelhouse = os.environ.get("MESHSCALE_WHEELHOUSE")
    if wheelhouse:
        index = ["--no-index", "--find-links", wheelhouse]
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", *index, str(wheel)],
        cwd=work, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    check = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "check"],
                           capture_output=True, text=True, cwd=work)
    assert check.returncode == 0, check.stdout
    return venv


def test_fresh_install_serves_and_takes_admin_commands(fresh: Path, tmp_path: Path) -> None:
    cmd = [str(fresh / "bin" / "meshscale")]
    config = write_config(tmp_path)
    url = yaml.safe_load(config.read_text())["server_url"]
    server = Serve(config, cmd=cmd, cwd=tmp_path)  # cwd outside the checkout
    try:
        assert server.banner[0].startswith("meshscale ")
        with urllib.request.urlopen(f"{url}/key?v=113", timeout=10) as resp:
            key = json.loads(resp.read())
        assert key["publicKey"].startswith("mkey:")
        created = meshscale("-c", str(config), "users", "create", "alice", "-o", "json",
                            cmd=cmd, cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["name"] == "alice"
    finally:
        rc, log = server.stop()
    assert rc == 0, log
    assert "Traceback" not in log
    assert not (tmp_path / "data" / "meshscale.sock").exists()


def test_fresh_install_without_an_extra_names_the_install_command(fresh: Path,
                                                                  tmp_path: Path) -> None:
    # The metrics plugin ships in the wheel; prometheus-client comes only with [metrics].
    config = write_config(tmp_path, plugins=["sqlite", "policy", "metrics"])
    result = meshscale("-c", str(config), "serve", cmd=[str(fresh / "bin" / "meshscale")],
                       cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "meshscale: plugin 'metrics' needs prometheus-client, which is not installed: "
        "pip install 'meshscale[metrics]'\n")
    assert not (tmp_path / "data").exists()  # refused before anything was written
