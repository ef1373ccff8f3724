"""Meta-tests for the plugin contract (as datasette does it): every hook is exercised by a named
test and documented in docs/plugins.md, every plugin we ship passes ``check_pending()``, and
``meshscale plugins list`` reports them. (That core never imports ``meshscale.plugins`` is
tests/unit/test_pluginhost.py's job; docs/hooks.md is tests/unit/test_hooks_doc.py's.)
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

from meshscale import hookspecs
from meshscale.cli.main import main
from meshscale.pluginhost import PluginHost, plugin_hooks

ROOT = Path(__file__).resolve().parents[2]

# Which test exercises each hook through a running server (in-process, real plugin host). Adding a
# hook without a test here fails test_every_hook_has_a_test, and so does naming a test that does
# not exercise the hook (see exercised_hooks).
HOOK_TESTS: dict[str, str] = {
    "meshscale_config_sections":
        "tests/plugin/test_plugin_hooks.py::test_config_section_and_http_route",
    "meshscale_storage_backends":
        "tests/plugin/test_plugin_hooks.py::test_storage_backend_is_picked_by_database_type",
    "meshscale_policy_engines":
        "tests/plugin/test_plugin_hooks.py::test_policy_engine_is_picked_by_name_and_used",
    "meshscale_http_upgrades":
        "tests/plugin/test_metrics.py::test_derp_clients_and_relayed_bytes",
    "meshscale_http_routes":
        "tests/plugin/test_plugin_hooks.py::test_config_section_and_http_route",
    "meshscale_derp_regions":
        "tests/plugin/test_plugin_hooks.py::test_derp_regions_reach_the_clients_map",
    "meshscale_startup":
        "tests/plugin/test_two_servers.py::test_two_servers_with_different_plugins_share_nothing",
    "meshscale_shutdown":
        "tests/plugin/test_two_servers.py::test_two_servers_with_different_plugins_share_nothing",
    "meshscale_admit_node":
        "tests/plugin/test_plugin_hooks.py::test_admit_node_veto_reaches_the_client",
    "meshscale_node_event":
        "tests/plugin/test_plugin_hooks.py::test_a_raising_hook_is_named_and_the_server_keeps_serving",
    "meshscale_user_event":
        "contrib_plugins/meshscale-webhooks/tests/test_webhooks.py"
        "::test_delivers_signed_events_in_order",
    "meshscale_policy_event":
        "tests/plugin/test_metrics.py::test_values_move_with_registrations_streams_and_policy",
    "meshscale_registration":
        "tests/plugin/test_metrics.py::test_values_move_with_registrations_streams_and_policy",
    "meshscale_map_sent":
        "tests/plugin/test_metrics.py::test_values_move_with_registrations_streams_and_policy",
    "meshscale_map_stream":
        "tests/plugin/test_metrics.py::test_values_move_with_registrations_streams_and_policy",
    "meshscale_stats": "tests/plugin/test_metrics.py::test_derp_clients_and_relayed_bytes",
    "meshscale_auth_providers":
        "tests/plugin/test_auth_providers.py::test_a_plugin_login_provider_registers_the_node",
    "meshscale_dns01_providers":
        "tests/plugin/test_set_dns.py::test_a_node_sets_its_own_challenge",
}

CONTRIB = sorted(p for p in (ROOT / "contrib_plugins").iterdir() if (p / "pyproject.toml").exists())


def spec_names() -> set[str]:
    return {name for name in dir(hookspecs) if name.startswith("meshscale_")}


def installed_plugin_hooks() -> dict[str, set[str]]:
    """The hooks of every installed plugin (built-in and contrib), by entry-point name."""
    out: dict[str, set[str]] = {}
    for name in sorted(ep.name for ep in metadata.entry_points(group="meshscale")):
        host = PluginHost()
        host.load([name])
        out[name] = set(host.hooks_of(name))
    return out


def exercised_hooks(path: Path, test: str, installed: dict[str, set[str]]) -> set[str]:
    """Hooks the test ``test`` in ``path`` runs through a server: those implemented by a plugin it
    names (an installed plugin's entry-point name, or a class of its module it passes), plus
    any it names itself."""
    tree = ast.parse(path.read_text())
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    (fn,) = [f for f in tree.body
             if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name == test]
    hooks: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            hooks |= installed.get(node.value, set())
            if node.value.startswith("meshscale_"):
                hooks.add(node.value)
        elif isinstance(node, ast.Name) and node.id in classes:
            hooks |= {f.name for f in classes[node.id].body
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and f.name.startswith("meshscale_")}
    return hooks


def test_every_hook_has_a_test() -> None:
    assert set(HOOK_TESTS) == spec_names()
    installed = installed_plugin_hooks()
    for hook, ref in HOOK_TESTS.items():
        path, _, name = ref.partition("::")
        text = (ROOT / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", text, re.M), f"{hook}: no test {ref}"
        # The test must run a plugin that implements the hook (or name the hook itself).
        assert hook in exercised_hooks(ROOT / path, name, installed), \
            f"{hook}: {ref} does not exercise it"


def test_every_hook_is_in_the_plugin_guide_with_its_arguments() -> None:
    doc = (ROOT / "docs" / "plugins.md").read_text()
    rows = dict(re.findall(r"^\| `(meshscale_\w+)\(([^)]*)\)` \|", doc, re.M))
    assert set(rows) == spec_names()
    for name, args in rows.items():
        params = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert [a.strip() for a in args.split(",") if a.strip()] == params, name


def test_the_config_value_helpers_the_guide_names_have_one_home() -> None:
    """The guide's helpers import from ``meshscale.configvalues``, and still from
    ``meshscale.config`` (where plugins written before the split found them) as the same
    functions, not copies."""
    import meshscale.config
    import meshscale.configvalues

    doc = (ROOT / "docs" / "plugins.md").read_text()
    named = set(re.findall(r"`(parse_\w+|split_\w+)\(", doc))
    assert named == {"parse_duration", "parse_host_port", "split_host_port"}
    assert "`meshscale.configvalues`" in doc
    for name in named:
        helper = getattr(meshscale.configvalues, name)
        assert helper.__module__ == "meshscale.configvalues"
        assert getattr(meshscale.config, name) is helper
    assert meshscale.config.parse_duration("5m", "x.timeout") == 300.0


def builtin_plugin_modules() -> list[str]:
    names = []
    for p in sorted((ROOT / "plugins").iterdir()):
        if p.name.startswith("_"):
            continue
        if (p / "__init__.py").exists() or p.suffix == ".py":
            names.append(p.stem)
    return names


def test_builtin_plugins_are_entry_points() -> None:
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    declared = eps["meshscale"]
    assert set(declared) == set(builtin_plugin_modules())
    # Each names its plugin class, in the plugin's own module: meshscale.plugins.<name>:<Class>.
    for k, v in declared.items():
        module, _, attr = v.partition(":")
        assert module == f"meshscale.plugins.{k}" and attr, v
        assert inspect.isclass(getattr(importlib.import_module(module), attr)), v


@pytest.mark.parametrize("name", builtin_plugin_modules())
def test_builtin_plugin_passes_check_pending(name: str) -> None:
    host = PluginHost()
    host.load([name])  # makes the object, runs check_pending(): no unknown or unprefixed hooks
    plugin = host.plugin(name)
    assert plugin is not None and not isinstance(plugin, ModuleType), f"{name}: not an object"
    assert plugin_hooks(plugin), f"{name} implements no hooks"
    assert host.hooks_of(name) == plugin_hooks(plugin)


MUTABLE_FACTORIES = {"dict", "list", "set", "defaultdict", "deque", "OrderedDict", "Counter",
                     "WeakValueDictionary", "WeakKeyDictionary", "WeakSet"}


def plugin_sources() -> list[Path]:
    return sorted([*(ROOT / "plugins").rglob("*.py"),
                   *(ROOT / "contrib_plugins").glob("*/src/**/*.py")])


def test_no_plugin_keeps_module_global_state() -> None:
    """Per-server state lives on the plugin object: no module-level mutable container (except
    UPPER_CASE constants), no ``global``, no registry keyed by ``id(server)``/``id(config)``."""
    offenders = []
    for path in plugin_sources():
        text = path.read_text()
        where = path.relative_to(ROOT)
        tree = ast.parse(text)
        offenders += [f"{where}:{n.lineno}: global" for n in ast.walk(tree)
                      if isinstance(n, ast.Global)]
        for node in tree.body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            func = value.func if isinstance(value, ast.Call) else None
            called = getattr(func, "id", None) or getattr(func, "attr", None)
            mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp,
                                         ast.ListComp, ast.SetComp)) or called in MUTABLE_FACTORIES
            for t in targets:
                name = t.id if isinstance(t, ast.Name) else ast.unparse(t)
                constant = name.isupper() or (name.startswith("__") and name.endswith("__"))
                if mutable and not constant:
                    offenders.append(f"{where}:{node.lineno}: module-level {name}")
        for n, line in enumerate(text.splitlines(), 1):
            if "id(server" in line or "id(config" in line:
                offenders.append(f"{where}:{n}: keyed by id(): {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("folder", CONTRIB, ids=lambda p: p.name)
def test_contrib_plugin_is_installed_and_passes_check_pending(folder: Path) -> None:
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"]["meshscale"]
    installed = {ep.name: ep for ep in metadata.entry_points(group="meshscale")}
    for name, target in declared.items():
        ep = installed.get(name)
        assert ep is not None, f"{project['name']} is not installed (scripts/test installs it)"
        assert ep.value == target
        assert ep.dist is not None and ep.dist.name == project["name"]
        host = PluginHost()
        host.load([name])  # loads through the entry point, then check_pending()
        assert host.hooks_of(name)
        assert not isinstance(host.plugin(name), ModuleType), f"{name}: not a per-server object"


def test_plugins_list_reports_our_plugins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\n"
        "plugins: [sqlite, metrics, webhooks]\n"
        "webhooks:\n  urls: [http://127.0.0.1:9/hook]\n  secret: s\n"
    )
    assert main(["-c", str(config), "plugins", "list", "-o", "json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    metrics = listed["metrics"]
    assert metrics["enabled"] is True and metrics["distribution"] == "meshscale"
    assert metrics["version"] == metadata.version("meshscale")
    assert "meshscale_map_sent" in metrics["hooks"] and "error" not in metrics
    webhooks = listed["webhooks"]
    assert webhooks["enabled"] is True and webhooks["distribution"] == "meshscale-webhooks"
    assert webhooks["version"] == metadata.version("meshscale-webhooks")
    assert "meshscale_config_sections" in webhooks["hooks"]
    assert listed["derp"]["enabled"] is False and listed["derp"]["hooks"] == []
    # The table form names the same plugins.
    assert main(["-c", str(config), "plugins", "list"]) == 0
    table = capsys.readouterr().out
    assert "metrics" in table and "meshscale-webhooks" in table


def test_admin_commands_accept_plugin_sections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path}\nplugins: [sqlite, webhooks]\n"
                      "webhooks:\n  urls: [http://127.0.0.1:9/hook]\n  secret: s\n")
    # No server runs: the command gets as far as the socket, past config validation.
    assert main(["-c", str(config), "users", "list"]) == 1
    err = capsys.readouterr().err
    assert "invalid config" not in err and "webhooks" not in err, err
