"""Printing results: a human table by default, or ``-o json`` / ``-o yaml``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml


def emit(data: Any, fmt: str, columns: Sequence[tuple[str, str]] = ()) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False).rstrip()
    if isinstance(data, list) and columns:
        return table(data, columns)
    if isinstance(data, dict) and columns:
        return table([data], columns)
    return json.dumps(data, indent=2)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return str(value.get("name", ""))
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = [title for title, _ in columns]
    body = [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
             for r in [head, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
