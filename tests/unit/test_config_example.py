"""config/config.example.yaml says it lists every key with its default: it loads, its values
are the code's defaults, and no key of the schema is missing from it."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from meshscale.config import Config
from meshscale.configload import build_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "config.example.yaml"

# Schema fields that are not YAML keys, and the YAML names of renamed fields.
INTERNAL = {"plugin_sections", "source", "notices"}
YAML_NAME = {"global_": "global", "password": "pass"}
# Keys the example leaves out on purpose, with why.
LEFT_OUT = {
    # headscale's SQL query log: accepted from a headscale file, does nothing here (a warning
    # when it is switched on), so the example does not offer it.
    "database.debug",
}


def schema_keys(cls: type, prefix: str = "") -> set[str]:
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in INTERNAL:
            continue
        key = prefix + YAML_NAME.get(f.name, f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out |= schema_keys(tp, key + ".")
        else:
            out.add(key)
    return out


def example_keys(raw: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in raw.items():
        path = prefix + str(key)
        # A mapping with keys of its own is a section; {} (dns.nameservers.split) is a value.
        out |= example_keys(value, path + ".") if isinstance(value, dict) and value else {path}
    return out


def load_example() -> dict[str, Any]:
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(raw, dict)
    return raw


def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return {prefix.rstrip("."): obj}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        out |= flat(getattr(obj, f.name), f"{prefix}{f.name}.")
    return out


def test_the_example_loads_without_a_warning_and_holds_the_defaults() -> None:
    cfg = build_config(load_example(), source=str(EXAMPLE))
    assert cfg.notices == ()
    got, default = flat(dataclasses.replace(cfg, source="")), flat(Config())
    differ = {k: (got[k], default[k]) for k in default if got[k] != default[k]}
    assert not differ, f"config.example.yaml (value, default): {differ}"


def test_every_key_is_in_the_example() -> None:
    missing = schema_keys(Config) - example_keys(load_example()) - LEFT_OUT
    assert not missing, f"config.example.yaml lacks {sorted(missing)}"


def test_the_walk_sees_nested_keys() -> None:
    # The two walks must agree on spelling, or the test above would pass by comparing nothing.
    keys = schema_keys(Config)
    assert {"dns.nameservers.global", "database.postgres.pass", "limits.max_streams",
            "taildrop.enabled", "plugins"} <= keys
    assert example_keys({"a": {"b": 1, "c": {}}}) == {"a.b", "a.c"}
