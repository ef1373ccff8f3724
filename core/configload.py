"""YAML file and environment -> a checked ``Config`` (the schema in ``config.py``).

Where the file is looked for (meshscale's places, then headscale's), reading it, the
``MESHSCALE_<PATH>`` environment overrides (``MESHSCALE_LISTEN_ADDR``,
``MESHSCALE_DATABASE_SQLITE_PATH``, ...), and the one generic converter that walks the schema's
dataclasses: every key is checked, an unknown or invalid one is refused with its dotted path and
the reason, and one run reports every problem. Plugins' sections go through the same converter
(``build_section``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from meshscale import hsconfig
from meshscale.config import Config
from meshscale.configcheck import check_config
from meshscale.configvalues import (
    Duration,
    HostPort,
    Prefix,
    SslMode,
    Url,
    parse_duration,
    parse_host_port,
    parse_ssl_mode,
)
from meshscale.errors import ConfigError, ConfigErrors

T = TypeVar("T")

CONFIG_ENV = "MESHSCALE_CONFIG"
ENV_PREFIX = "MESHSCALE_"


_RENAMED = {"global": "global_", "pass": "password"}
# Config fields that are not YAML keys.
_INTERNAL = ("plugin_sections", "source", "notices")


# -- generic conversion with paths ------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, errors: list[ConfigError]) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], path, errors)
    if tp is Duration:
        return parse_duration(value, path)
    if tp is SslMode:
        return parse_ssl_mode(value, path)
    if tp is HostPort:
        if not isinstance(value, str):
            raise ConfigError(path, "expected a string host:port")
        return parse_host_port(value, path)
    if tp is Prefix:
        if not isinstance(value, str):
            raise ConfigError(path, "expected an IP prefix such as 100.64.0.0/10")
        try:
            return Prefix(str(ipaddress.ip_network(value, strict=True)))
        except ValueError as exc:
            raise ConfigError(path, f"invalid IP prefix {value!r}: {exc}") from None
    if tp is Url:
        if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
            raise ConfigError(path, f"expected an http:// or https:// URL, got {value!r}")
        return Url(value.rstrip("/"))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(path, f"expected a string, got {value!r}")
    if origin is tuple:
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(path, "expected a list")
        return tuple(_convert(v, item, f"{path}[{i}]", errors) for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is dict:
        key_t, val_t = typing.get_args(tp) or (str, Any)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(path, "expected a mapping")
        return {
            _convert(k, key_t, path, errors): _convert(v, val_t, f"{path}.{k}", errors)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, path, errors)
    raise ConfigError(path, f"unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type[T], raw: Any, path: str, errors: list[ConfigError]) -> T:
    """Build ``cls`` from ``raw``; a bad key is added to ``errors`` and keeps its default, so
    one run reports every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, "expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else str(key)
        attr = _RENAMED.get(str(key), str(key))
        if attr not in names or attr in _INTERNAL:
            errors.append(ConfigError(sub, "unknown key"))
            continue
        try:
            kwargs[attr] = _convert(value, hints[attr], sub, errors)
        except ConfigError as exc:
            errors.append(exc)
    try:
        return cls(**kwargs)
    except TypeError:
        missing = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise ConfigError(path, f"missing {', '.join(missing)}") from None


def build_section(cls: type[T], raw: Any, path: str) -> T:
    """One section (a config dataclass) from raw values, checked key by key exactly as in the
    config file; every problem at once (ConfigErrors), named by its dotted path."""
    errors: list[ConfigError] = []
    try:
        out = _build(cls, raw, path, errors)
    except ConfigError as exc:
        errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return out


# -- loading ------------------------------------------------------------------------------------


def default_locations() -> list[Path]:
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [
        Path("config.yaml"),
        Path(xdg) / "meshscale" / "config.yaml",
        Path("/etc/meshscale/config.yaml"),
    ]


def headscale_locations() -> list[Path]:
    """Where headscale keeps its config: read when meshscale's own locations have none."""
    return [Path("/etc/headscale/config.yaml"), Path.home() / ".headscale" / "config.yaml"]


def find_config_file(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    for candidate in [*default_locations(), *headscale_locations()]:
        if candidate.is_file():
            return candidate
    return None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(where, f"invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "the top level must be a mapping")
    return data


def _env_paths(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Map MESHSCALE_A_B_C names to the key path ("a", "b", "c") for every scalar key."""
    out: dict[str, tuple[str, ...]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in _INTERNAL:
            continue
        yaml_name = "global" if f.name == "global_" else f.name
        key = (*prefix, yaml_name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out.update(_env_paths(tp, key))
        else:
            out[ENV_PREFIX + "_".join(key).upper()] = key
    return out


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    paths = _env_paths(Config)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV, "MESHSCALE_DATA_DIR"):
            continue
        key = paths.get(name)
        if key is None:
            continue  # other MESHSCALE_* variables (tests, tools) are not config keys
        node = raw
        for part in key[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        node[key[-1]] = parsed
    return raw


def build_config(
    raw: Mapping[str, Any],
    sections: Sequence[Any] = (),
    source: str = "",
) -> Config:
    """Validate a raw mapping. ``sections`` are ConfigSection objects from plugins."""
    raw = dict(raw)
    owned = {s.name: s for s in sections}
    plugin_raw = {k: raw.pop(k) for k in list(raw) if k in owned}
    # headscale's own keys first: old names read as the new ones, keys for features meshscale
    # lacks taken out (a warning, or a problem when the feature is switched on).
    raw, notices, errors = hsconfig.translate(raw)
    cfg = _build(Config, raw, "", errors)
    errors += check_config(cfg)
    parsed: dict[str, object] = {}
    for name, section in owned.items():
        value = plugin_raw.get(name) or {}
        if not isinstance(value, dict):
            errors.append(ConfigError(name, "expected a mapping"))
            continue
        try:
            parsed[name] = section.parse(value, name)
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return dataclasses.replace(cfg, plugin_sections=parsed, source=source,
                               notices=tuple(notices))


def load_raw(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> tuple[
    dict[str, Any], str
]:
    """Read the config file (if any) and apply environment overrides."""
    environ = os.environ if environ is None else environ
    path = find_config_file(explicit)
    raw: dict[str, Any] = {}
    source = ""
    if path is not None:
        if not path.is_file():
            raise ConfigError(str(path), "config file not found")
        raw = read_yaml(path)
        source = str(path)
    return apply_env(raw, environ), source


SectionsFn = Callable[[list[str]], Sequence[Any]]


def load_config(
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    sections_for: SectionsFn | None = None,
) -> Config:
    """Read, override and validate. ``sections_for(plugin_names)`` yields plugin sections."""
    raw, source = load_raw(explicit, environ)
    plugins = raw.get("plugins", list(Config.plugins))
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError("plugins", "expected a list of plugin names")
    sections = sections_for(plugins) if sections_for else ()
    config = build_config(raw, sections, source)
    if source and Path(source) in headscale_locations():
        ours = ", ".join(str(p) for p in default_locations())
        config = dataclasses.replace(config, notices=(
            f"config: none of meshscale's files ({ours}) exists; read headscale's {source}",
            *config.notices))
    return config
