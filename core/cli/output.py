"""Printing results: a human table by default, or ``-o json`` / ``-o yaml``.

The table is laid out as headscale's CLI lays out its own (pterm's DefaultTable with a header
row, as cmd/headscale/cli renders it): cells left-aligned and padded to the column's width,
columns joined by `` | ``, no rule under the header, and a cell holding several values (tags, IP
addresses, routes) one value per line, the row growing as high as its tallest cell. Each
command names its columns with headscale's headers, in headscale's order, and says how a value is
written (times as ``2006-01-02 15:04:05`` UTC, booleans as ``true``/``false``...); columns
meshscale adds come after headscale's, so scripts that cut by position keep working.

The cells headscale colours are coloured the same (``Painted``): a node's Connected and Expired
(cmd/headscale/cli/nodes.go) and the keys' Expiration (pterm_style.go ColourTime), light green
or light red. Only on a terminal and without ``NO_COLOR`` (no-color.org): a pipe or a file gets
plain text, byte for byte what a script parsed before.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml

from meshscale.tailcfg import parse_gotime

Cell = Callable[[dict[str, Any]], str]
# (header, the row's key or how the cell is written)
Column = tuple[str, str | Cell]

SEPARATOR = " | "  # pterm's DefaultTable
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # headscale's HeadscaleDateTimeFormat
GREEN, RED = 92, 91  # SGR codes of pterm's LightGreen and LightRed


class Painted(str):
    """A cell's text and the colour (SGR code) a coloured table writes it in."""

    sgr: int

    def __new__(cls, text: str, sgr: int) -> Painted:
        cell = super().__new__(cls, text)
        cell.sgr = sgr
        return cell


def use_colour(stream: TextIO) -> bool:
    """Colour on a terminal only, and never with NO_COLOR set (as headscale: set at all) or on
    a dumb terminal."""
    return ("NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
            and stream.isatty())


def emit(data: Any, fmt: str, columns: Sequence[Column] = (), colour: bool = False) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False).rstrip()
    if isinstance(data, list) and columns:
        return table(data, columns, colour)
    if isinstance(data, dict) and columns:
        return table([data], columns, colour)
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


def when(key: str, missing: str = "", coloured: bool = False) -> Cell:
    """A time as headscale prints it (``2006-01-02 15:04:05``, UTC); ``missing`` if none.
    ``coloured``: green while in the future, red once past (headscale's ColourTime)."""

    def cell(row: dict[str, Any]) -> str:
        t = parse_gotime(row.get(key))
        if t is None:
            return missing
        text = t.astimezone(UTC).strftime(TIME_FORMAT)
        return Painted(text, GREEN if t > datetime.now(UTC) else RED) if coloured else text

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


def choice(key: str, yes: str, no: str, colours: tuple[int, int] | None = None) -> Cell:
    """``yes`` or ``no`` by the row's ``key``; ``colours``: theirs in a coloured table."""
    if colours is None:
        return lambda row: yes if row.get(key) else no
    return lambda row: Painted(yes, colours[0]) if row.get(key) else Painted(no, colours[1])


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column],
          colour: bool = False) -> str:
    head = [title for title, _ in columns]
    body = [[how(row) if callable(how) else _cell(row.get(how)) for _, how in columns]
            for row in rows]
    grid = [[cell.split("\n") for cell in r] for r in [head, *body]]
    paint = [[getattr(cell, "sgr", 0) if colour else 0 for cell in r] for r in [head, *body]]
    widths = [max(len(line) for r in grid for line in r[i]) for i in range(len(columns))]
    out = []
    for r, sgrs in zip(grid, paint, strict=True):
        for i in range(max(len(cell) for cell in r)):
            parts = []
            for cell, w, sgr in zip(r, widths, sgrs, strict=True):
                text = cell[i] if i < len(cell) else ""
                # Padded by the visible width, the padding after the colour (as pterm does).
                parts.append(f"\x1b[{sgr}m{text}\x1b[0m{' ' * (w - len(text))}"
                             if sgr and text else text.ljust(w))
            out.append(SEPARATOR.join(parts))
    return "\n".join(out)
