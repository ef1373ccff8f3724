"""Printing results: a human table by default, or ``-o json`` / ``-o yaml``.

The table is laid out as headscale's CLI lays out its own (pterm's DefaultTable with a header
row, as cmd/headscale/cli renders it): cells left-aligned and padded to the column's width,
columns joined by `` | ``, no rule under the header, and a cell holding several values (tags, IP
addresses, routes) one value per line, the row growing as high as its tallest cell. Each
command names its columns with headscale's headers, in headscale's order, and says how a value is
written (times as ``2006-01-02 15:04:05`` UTC, booleans as ``true``/``false``...); columns
meshscale adds come after headscale's, so scripts that cut by position keep working.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any

import yaml

from meshscale.tailcfg import parse_gotime

Cell = Callable[[dict[str, Any]], str]
# (header, the row's key or how the cell is written)
Column = tuple[str, str | Cell]

SEPARATOR = " | "  # pterm's DefaultTable
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # headscale's HeadscaleDateTimeFormat


def emit(data: Any, fmt: str, columns: Sequence[Column] = ()) -> str:
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
        return "true" if value else "false"  # Go's strconv.FormatBool
    if isinstance(value, list):
        return "\n".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return str(value.get("name", ""))
    return str(value)


# -- how headscale writes a cell ----------------------------------------------------------------


def when(key: str, missing: str = "") -> Cell:
    """A time as headscale prints it (``2006-01-02 15:04:05``, UTC); ``missing`` if none."""

    def cell(row: dict[str, Any]) -> str:
        t = parse_gotime(row.get(key))
        return t.astimezone(UTC).strftime(TIME_FORMAT) if t is not None else missing

    return cell


def short_key(key: str) -> Cell:
    """A key as Tailscale's ShortString writes it: the first five base64 digits in brackets
    (empty for the zero key)."""

    def cell(row: dict[str, Any]) -> str:
        text = str(row.get(key) or "")
        try:
            raw = bytes.fromhex(text.partition(":")[2])
        except ValueError:
            return ""
        if len(raw) != 32 or raw == bytes(32):
            return ""
        return f"[{base64.b64encode(raw).decode()[:5]}]"

    return cell


def choice(key: str, yes: str, no: str) -> Cell:
    return lambda row: yes if row.get(key) else no


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    head = [title for title, _ in columns]
    body = [[how(row) if callable(how) else _cell(row.get(how)) for _, how in columns]
            for row in rows]
    grid = [[cell.split("\n") for cell in r] for r in [head, *body]]
    widths = [max(len(line) for r in grid for line in r[i]) for i in range(len(columns))]
    out = []
    for r in grid:
        for i in range(max(len(cell) for cell in r)):
            out.append(SEPARATOR.join((cell[i] if i < len(cell) else "").ljust(w)
                                      for cell, w in zip(r, widths, strict=True)))
    return "\n".join(out)
