"""The typed facade (``host.hooks``) matches the contract, and is the only way core calls hooks.

Adding a hookspec without its HookCalls method, or with other arguments or types, fails here; so
does a call by string name anywhere in core or the built-in plugins.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from meshscale import hookimpl, hookspecs
from meshscale.config import Config
from meshscale.hookcalls import HookCalls
from meshscale.pluginhost import PluginHost

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(name for name in dir(hookspecs) if name.startswith("meshscale_"))


def method_of(spec: str) -> Any:
    return getattr(HookCalls, spec.removeprefix("meshscale_"), None)


def test_the_facade_has_nothing_but_the_specs() -> None:
    public = {n for n, _ in inspect.getmembers(HookCalls, inspect.isfunction)
              if not n.startswith("_")}
    assert public == {s.removeprefix("meshscale_") for s in SPECS}


@pytest.mark.parametrize("name", SPECS)
def test_every_spec_has_a_method_with_its_arguments_and_types(name: str) -> None:
    spec = getattr(hookspecs, name)
    method = method_of(name)
    assert method is not None, f"add HookCalls.{name.removeprefix('meshscale_')}"
    # ``server`` is the host's own context: the facade never takes it.
    wanted = [(p.name, p.annotation) for p in inspect.signature(spec).parameters.values()
              if p.name != "server"]
    params = list(inspect.signature(method).parameters.values())[1:]  # without self
    assert [(p.name, p.annotation) for p in params] == wanted
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
    doc = spec.__doc__ or ""
    assert inspect.iscoroutinefunction(method) == ("async allowed" in doc), name
    spec_ret, ret = spec.__annotations__["return"], method.__annotations__["return"]
    if "(collect" in doc:  # every implementation's result, concatenated
        inner = spec_ret.removeprefix("Sequence[").removesuffix("]") \
            if spec_ret.startswith("Sequence[") else spec_ret
        assert ret == f"list[{inner}]", (name, ret)
    else:
        assert ret == spec_ret, (name, ret)


def _recorder() -> tuple[object, list[tuple[str, dict[str, Any]]]]:
    """One plugin object implementing every hook: records its calls, returns a marker."""
    calls: list[tuple[str, dict[str, Any]]] = []
    namespace: dict[str, Any] = {}
    for name in SPECS:
        args = list(inspect.signature(getattr(hookspecs, name)).parameters)
        result = "None" if "(collect" not in (getattr(hookspecs, name).__doc__ or "") \
            else f"[{name!r}]"
        if name == "meshscale_admit_node":
            result = repr(name)
        src = (f"def {name}(self, {', '.join(args)}):\n"
               f"    calls.append(({name!r}, dict({', '.join(f'{a}={a}' for a in args)})))\n"
               f"    return {result}\n")
        exec(src, {"calls": calls}, namespace)
        namespace[name] = hookimpl(namespace[name])
    return type("Recorder", (), namespace)(), calls


async def test_each_method_calls_its_own_hook_with_its_arguments() -> None:
    plugin, calls = _recorder()
    host = PluginHost()
    host.register(plugin, "recorder")
    server = object()
    host.bind(server)  # type: ignore[arg-type]
    config = Config()
    for name in SPECS:
        method = getattr(host.hooks, name.removeprefix("meshscale_"))
        params = list(inspect.signature(method).parameters)
        args = {p: (config if p == "config" else f"{p}-value") for p in params}
        calls.clear()
        result = method(**args)
        if inspect.isawaitable(result):
            result = await result
        assert [c[0] for c in calls] == [name], name
        got = calls[0][1]
        assert {k: v for k, v in got.items() if k != "server"} == args, name
        if "server" in got:
            assert got["server"] is host.context  # stands for ``server`` once bound
        if result is not None:
            assert name in (result if isinstance(result, list) else [result]), name


def test_core_and_plugins_never_call_a_hook_by_name() -> None:
    # Over the whole text: a call's string argument may be on the next line.
    call = re.compile(r"""(\.(notify|collect_sync|collect|first|has_impl)\(\s*["']meshscale_"""
                      r"""|pm\.hook\b|getattr\([^)]*\bhook\b)""")
    offenders = []
    for folder in ("core", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name in ("pluginhost.py", "hookcalls.py"):
                continue
            text = path.read_text()
            for m in call.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)!r}")
    assert offenders == []
