"""h2's settings books as one-item lists: same values, same changes, less memory."""

from __future__ import annotations

import tracemalloc

import h2.config
import h2.connection
import h2.events
from h2.settings import SettingCodes

from meshscale.control.h2slim import slim_settings


def _pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server.initiate_connection()
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 64})
    client.initiate_connection()
    client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 4 << 20})
    _exchange(server, client)
    return server, client


def _exchange(server: h2.connection.H2Connection, client: h2.connection.H2Connection) -> list[
        h2.events.Event]:
    events = []
    for _ in range(3):
        events += server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    return events


def test_settings_still_change_after_slimming() -> None:
    server, client = _pair()
    slim_settings(server)
    assert server.remote_settings.initial_window_size == 4 << 20
    assert server.local_settings.max_concurrent_streams == 64
    # The client changes a setting and sends one the server had not seen; the server changes
    # one of its own, which takes effect when the client acknowledges it.
    client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                            SettingCodes.MAX_HEADER_LIST_SIZE: 8192})
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 32})
    assert server.local_settings.max_concurrent_streams == 64  # not acknowledged yet
    events = _exchange(server, client)
    assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
    assert server.remote_settings.initial_window_size == 1 << 20
    assert server.remote_settings.max_header_list_size == 8192
    assert server.local_settings.max_concurrent_streams == 32


def test_slimming_saves_most_of_the_settings_memory() -> None:
    tracemalloc.start()
    try:
        servers = [_pair()[0] for _ in range(50)]
        before = tracemalloc.get_traced_memory()[0]
        for s in servers:
            slim_settings(s)
        saved = (before - tracemalloc.get_traced_memory()[0]) / len(servers)
    finally:
        tracemalloc.stop()
    books = len(servers[0].local_settings._settings) + len(servers[0].remote_settings._settings)
    assert books >= 14
    assert saved > books * 500, (saved, books)  # a deque ~760 bytes, a one-item list ~70
