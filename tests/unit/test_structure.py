"""The shape of the code, checked: no import circle in meshscale.*, the layers a request crosses
only ever import downwards, and no module is over the size where splitting pays unless it is
listed below with the reason it stays whole.

The import graph is built from the installed package's source with ``ast``: every import
statement counts, also those inside functions and under ``TYPE_CHECKING``, since a circle there
is still two modules that each need to know the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import meshscale

PACKAGE = Path(meshscale.__file__).resolve().parent
MAX_LINES = 400

# Modules allowed over MAX_LINES, each with why it stays one module. Remove an entry when the
# module is split; an entry for a module that is no longer too long fails the test too.
LONG_MODULES: dict[str, str] = {
    "meshscale.plugins.derp.relay": "the sans-IO DERP relay state machine; its frame handlers "
    "share the connection tables",
    "meshscale.plugins.policy.engine": "the PolicyEngine protocol's one implementation: each "
    "per-node answer next to the compiled grants it reads (views.py holds the per-class "
    "bitsets and the policy diff)",
}


# The layers a MapRequest crosses, lowest first (docs/architecture.md): transport -> noise ->
# control -> state/mapper. A module may import its own layer and lower ones, never a higher one,
# so following a request never climbs back into a module it left. Modules outside these folders
# are the shared vocabulary (config, errors, events, tailcfg, policy, clientinput, hookcalls).
LAYERS: list[tuple[str, ...]] = [
    ("meshscale.noise",),
    ("meshscale.storage", "meshscale.state"),
    ("meshscale.mapper",),
    ("meshscale.control",),
    ("meshscale.transport", "meshscale.web", "meshscale.api", "meshscale.tls",
     "meshscale.workers"),
    ("meshscale.server", "meshscale.serverparts", "meshscale.assembly"),
    ("meshscale.cli", "meshscale.bench"),
]


def layer(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(["meshscale", *parts])] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in known:  # from package import module
                    yield f"{source}.{alias.name}"
                elif source in known:
                    yield source


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imports(name, path, known)) - {name} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_sees_imports() -> None:
    """The checker itself: it finds the edges it must (else "no circle" proves nothing)."""
    graph = import_graph()
    assert "meshscale.pluginhost" in graph["meshscale.server"]
    assert "meshscale.state.store" in graph["meshscale.control.poll"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle() -> None:
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_layers_import_only_downwards() -> None:
    upward = [
        f"{a} -> {b}"
        for a, deps in sorted(import_graph().items())
        for b in sorted(deps)
        if (rb := layer(b)) is not None and (ra := layer(a)) is not None and rb > ra
    ]
    assert not upward, f"imports climbing back up a layer: {upward}"
    # The checker sees the layers it checks.
    assert layer("meshscale.control.poll") == 3 and layer("meshscale.state.lifecycle") == 1


def test_no_long_module_without_a_reason() -> None:
    lengths = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in modules().items()
    }
    too_long = sorted(n for n, size in lengths.items() if size > MAX_LINES)
    unexplained = [f"{n} ({lengths[n]} lines)" for n in too_long if n not in LONG_MODULES]
    assert not unexplained, f"over {MAX_LINES} lines with no stated reason: {unexplained}"
    stale = [n for n in LONG_MODULES if lengths.get(n, 0) <= MAX_LINES]
    assert not stale, f"listed as long but no longer are (remove them): {stale}"
