"""docs/hooks.md documents exactly the hooks in core/hookspecs.py."""

from __future__ import annotations

import re
from pathlib import Path

from meshscale import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def spec_names() -> set[str]:
    return {name for name in dir(hookspecs) if name.startswith("meshscale_")}


def test_every_hook_is_documented_and_nothing_else() -> None:
    documented = set(re.findall(r"^## (meshscale_\w+)\s*$", DOC.read_text(), re.M))
    assert documented == spec_names()


def test_every_spec_is_prefixed_typed_and_explained() -> None:
    for name in spec_names():
        fn = getattr(hookspecs, name)
        assert fn.__doc__, f"{name} has no docstring"
        assert "return" in fn.__annotations__, f"{name} has no return annotation"
