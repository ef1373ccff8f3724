"""Smaller HTTP/2 settings books: about 10 KB less per connection (issue 19).

``h2`` keeps each setting of each side in its own ``collections.deque`` (the values waiting for
an ACK, then the one in force): a deque is about 760 bytes however short, and a connection has
fourteen or more of them, for values that change once, at the start. After the first request
(both sides' SETTINGS are in by then) they become one-item lists with the two deque methods
``h2.settings.Settings`` uses (``append`` and ``popleft``); a setting first seen later gets
h2's own deque, which works as before.
"""

from __future__ import annotations

from typing import Any

import h2.connection


class _Values(list[Any]):
    """What ``h2.settings.Settings`` does with a setting's values: ``[0]``, ``len``,
    ``append``, ``popleft`` (all a deque offers that it uses)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def slim_settings(conn: h2.connection.H2Connection) -> None:
    """Replace ``conn``'s per-setting deques (both sides) by one-item lists, values kept."""
    for settings in (conn.local_settings, conn.remote_settings):
        books = settings._settings
        for key, values in books.items():
            if not isinstance(values, _Values):
                books[key] = _Values(values)  # type: ignore[assignment]
