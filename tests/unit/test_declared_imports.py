"""Every third-party import is declared: an undeclared one is a failing test, not a user's
``ModuleNotFoundError``.

Each import statement of the shipped code (core/, plugins/, contrib_plugins/*/src), including
the ones inside functions, is mapped to the distribution that provides it in this environment
(``importlib.metadata.packages_distributions()``) and checked against pyproject.toml:

- core/ may use the core dependencies;
- plugins/NAME may also use the extra named like the plugin (plugins/metrics -> ``[metrics]``);
- each contrib plugin may use what its own pyproject declares;
- tests/ may use everything meshscale declares, the ``test`` extra included.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Modules only ever imported by a program that is itself the provider: meshscale.testing is a
# pytest plugin (entry point pytest11), loaded by pytest and nothing else.
LOADED_BY = {(ROOT / "core" / "testing.py"): {"pytest"}}
# Core modules that serve one optional backend only, and may use its extra: the throw-away
# PostgreSQL for tests and benchmarks of the postgres backend (which needs [postgres] anyway).
EXTRA_OF_FILE = {(ROOT / "core" / "bench" / "pgserver.py"): "postgres",
                 # import-headscale reading headscale's PostgreSQL database
                 (ROOT / "core" / "cli" / "hspg.py"): "postgres"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert match, req
    return canonical(match.group(1))


def declared(requirements: list[str]) -> set[str]:
    return {requirement_name(r) for r in requirements}


CORE = declared(PYPROJECT["project"]["dependencies"])
EXTRAS = {name: declared(reqs)
          for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()}


def imported_modules(path: Path) -> Iterator[tuple[str, int]]:
    """Top-level names of absolute imports, with their line; relative imports are our own."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def undeclared(files: list[Path], allowed: set[str], own: set[str]) -> list[str]:
    providers = metadata.packages_distributions()
    problems = []
    for path in files:
        for module, line in imported_modules(path):
            if module in sys.stdlib_module_names or module in own:
                continue
            if module in LOADED_BY.get(path, set()):
                continue
            dists = {canonical(d) for d in providers.get(module, [])}
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{line}"
            if not dists:
                problems.append(f"{where}: imports {module!r}, which no installed "
                                "distribution provides")
            elif not dists & allowed:
                problems.append(f"{where}: imports {module!r} (from {', '.join(sorted(dists))}),"
                                f" not declared for this code")
    return sorted(problems)


def py_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_core_imports_only_core_dependencies() -> None:
    problems = []
    for path in py_files(ROOT / "core"):
        allowed = CORE | EXTRAS.get(EXTRA_OF_FILE.get(path, ""), set())
        problems += undeclared([path], allowed, {"meshscale"})
    assert problems == []


def test_each_plugin_imports_core_dependencies_or_its_own_extra() -> None:
    problems = []
    for folder in sorted(p for p in (ROOT / "plugins").iterdir() if p.is_dir()):
        allowed = CORE | EXTRAS.get(folder.name, set())
        problems += undeclared(py_files(folder), allowed, {"meshscale"})
    problems += undeclared([p for p in (ROOT / "plugins").glob("*.py")], CORE, {"meshscale"})
    assert problems == []


def test_contrib_plugins_import_what_they_declare() -> None:
    dirs = sorted(p.parent for p in (ROOT / "contrib_plugins").glob("*/pyproject.toml"))
    assert dirs, "no contrib plugins found"
    problems = []
    for folder in dirs:
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        allowed = declared(project.get("dependencies", []))
        own = {p.name for p in (folder / "src").iterdir() if p.is_dir()}
        problems += undeclared(py_files(folder / "src"), allowed, own)
        test_deps = allowed | declared(project.get("optional-dependencies", {}).get("test", []))
        # Test helpers next to the tests are imported by their module name (rootdir on sys.path).
        helpers = {p.stem for p in (folder / "tests").glob("*.py")}
        problems += undeclared(py_files(folder / "tests"), test_deps, own | helpers)
    assert problems == []


def test_tests_import_only_declared_distributions() -> None:
    everything = CORE.union(*EXTRAS.values())
    assert undeclared(py_files(ROOT / "tests"), everything, {"meshscale", "tests"}) == []


def test_the_check_catches_an_undeclared_import(tmp_path: Path) -> None:
    # The check itself can fail: pytest is installed here but is no core dependency.
    bad = tmp_path / "probe.py"
    bad.write_text("import os\ndef f():\n    import pytest\nimport no_such_module_anywhere\n")
    assert undeclared([bad], CORE, {"meshscale"}) == [
        "probe.py:3: imports 'pytest' (from pytest), "
        "not declared for this code",
        "probe.py:4: imports 'no_such_module_anywhere', which no installed "
        "distribution provides",
    ]
