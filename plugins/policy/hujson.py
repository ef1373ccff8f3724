"""HuJSON ("human JSON"): JSON plus ``//`` and ``/* */`` comments and trailing commas.

Tailscale policy files are written in it. We blank comments and trailing commas out in place
(keeping every newline) and hand the result to the standard JSON parser, so its line and column
numbers still point into the original text.
"""

from __future__ import annotations

import json
from typing import Any

from meshscale.errors import PolicyError


def standardize(text: str) -> str:
    """Return ``text`` as plain JSON of the same length and line structure."""
    out = list(text)
    i = 0
    n = len(text)
    last_comma: int | None = None  # index of a comma not yet followed by a value
    while i < n:
        c = text[i]
        if c == '"':
            last_comma = None
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
            continue
        if c == "/" and i + 1 < n and text[i + 1] == "*":
            end = text.find("*/", i + 2)
            if end < 0:
                line = text.count("\n", 0, i) + 1
                raise PolicyError(f"line {line}", "unterminated /* comment")
            for j in range(i, end + 2):
                if out[j] != "\n":
                    out[j] = " "
            i = end + 2
            continue
        if c == ",":
            last_comma = i
        elif c in "]}":
            if last_comma is not None:
                out[last_comma] = " "
            last_comma = None
        elif not c.isspace():
            last_comma = None
        i += 1
    return "".join(out)


def loads(text: str) -> Any:
    """Parse HuJSON; a syntax error is a PolicyError located by line and column."""
    try:
        return json.loads(standardize(text))
    except json.JSONDecodeError as exc:
        raise PolicyError(f"line {exc.lineno}, column {exc.colno}", exc.msg) from None
