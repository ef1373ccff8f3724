"""Table colours: the cells headscale colours (pterm LightGreen/LightRed), only when asked, laid
out by their visible width so a coloured table lines up as the plain one does."""

from __future__ import annotations

import io
import os
import re
from datetime import UTC, datetime, timedelta

import pytest

from meshscale.cli.output import GREEN, RED, Painted, choice, table, use_colour, when
from meshscale.tailcfg import gotime

ANSI = re.compile(r"\x1b\[[0-9;]*m")
COLUMNS = [("ID", "id"), ("Connected", choice("online", "online", "offline", (GREEN, RED))),
           ("Tags", lambda row: Painted("\n".join(row["tags"]), RED)), ("Name", "name")]
ROWS = [{"id": 1, "online": True, "tags": ["tag:a", "tag:longer"], "name": "laptop"},
        {"id": 22, "online": False, "tags": [], "name": "x"}]


def test_plain_unless_asked_and_the_same_text_when_coloured() -> None:
    plain = table(ROWS, COLUMNS)
    assert "\x1b" not in plain
    assert plain == table([{**r, "online": r["online"]} for r in ROWS],
                          [COLUMNS[0], ("Connected", choice("online", "online", "offline")),
                           ("Tags", lambda row: "\n".join(row["tags"])), COLUMNS[3]])
    coloured = table(ROWS, COLUMNS, colour=True)
    assert ANSI.sub("", coloured) == plain  # every column as wide as in the plain table
    lines = coloured.splitlines()
    assert lines[0] == plain.splitlines()[0]  # the header is never coloured
    # The colour wraps the text only; the padding follows it (as pterm writes it).
    assert lines[1] == "1  | \x1b[92monline\x1b[0m    | \x1b[91mtag:a\x1b[0m      | laptop"
    assert lines[2] == "   |           | \x1b[91mtag:longer\x1b[0m |       "  # each line
    assert lines[3] == "22 | \x1b[91moffline\x1b[0m   | " + " " * 10 + " | x     "  # empty: none


def test_times_are_green_until_they_pass_as_headscales_colour_time() -> None:
    now = datetime.now(UTC)
    cell = when("expiration", "-", coloured=True)
    future, past = cell({"expiration": gotime(now + timedelta(days=1))}), cell(
        {"expiration": gotime(now - timedelta(seconds=5))})
    assert isinstance(future, Painted) and future.sgr == GREEN
    assert isinstance(past, Painted) and past.sgr == RED
    assert future == (now + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert cell({}) == "-" and not isinstance(cell({}), Painted)
    assert not isinstance(when("expiration")({"expiration": gotime(now)}), Painted)


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert use_colour(tty)
            assert not use_colour(io.StringIO())  # a pipe or a file
            for value in ("1", ""):  # set at all, as headscale reads it
                monkeypatch.setenv("NO_COLOR", value)
                assert not use_colour(tty)
            monkeypatch.delenv("NO_COLOR")
            monkeypatch.setenv("TERM", "dumb")
            assert not use_colour(tty)
    finally:
        os.close(leader)
        os.close(follower)
