"""core/ installs as `meshscale`, plugins/ as `meshscale.plugins`; a plain, non-editable install
works outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def packages_in_tree() -> set[str]:
    found = set()
    for top, name in (("core", "meshscale"), ("plugins", "meshscale.plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    return found


def test_package_list_matches_the_tree() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    assert listed == packages_in_tree()


def test_wheel_installs_and_imports_outside_the_checkout(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("meshscale-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("meshscale-")}
    assert tops == {"meshscale"}, tops  # no top-level core/ or plugins/
    assert "meshscale/py.typed" in names
    assert "meshscale/plugins/sqlite/__init__.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, cwd=tmp_path)
    code = ("import meshscale, meshscale.plugins.sqlite, meshscale.server; "
            "print(meshscale.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                         check=True)
    assert out.stdout.strip().startswith(str(target))
