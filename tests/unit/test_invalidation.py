"""The invalidation table is complete: every change event has a row, every row is reachable."""

from __future__ import annotations

import typing

from meshscale.mapper.invalidation import TABLE, Event, Output, events_of, patch_events, stale
from meshscale.policy import Affected
from meshscale.state import changes as ch


def test_every_event_has_a_row() -> None:
    assert set(TABLE) == set(Event)


def test_every_change_kind_maps_to_rows() -> None:
    samples: list[ch.Change] = [
        ch.NodeAdded(1), ch.NodeRemoved(1), ch.UserChanged(1), ch.DerpMapChanged(),
        ch.DnsChanged(),
        ch.PolicyChanged(Affected.all()),
        *(ch.NodeChanged(1, why) for why in ch.Why),
        *(ch.NodePatched(1, f) for f in ch.Patch if f),
    ]
    kinds = {type(c) for c in samples}
    assert kinds == set(typing.get_args(ch.Change)), "a change kind has no sample here"
    reached = {e for c in samples for e in events_of(c)}
    assert reached == set(Event), f"rows no change reaches: {set(Event) - reached}"
    for c in samples:
        assert events_of(c), c


def test_every_patch_field_is_some_event() -> None:
    for f in ch.Patch:
        if f:
            assert patch_events(f), f


def test_a_change_is_the_union_of_its_rows() -> None:
    both = stale(ch.NodePatched(1, ch.Patch.ENDPOINTS | ch.Patch.EXPIRY))
    assert both.viewers == Output.PATCH and both.own == Output.SELF


def test_owner_changes_send_the_owner_profile() -> None:
    """The regression the oracle found: a re-login may change owner or tags; the node's own
    stream needs its new owner's profile with its new self Node."""
    row = TABLE[Event.NODE_REAUTHED]
    assert Output.SELF in row.own and Output.PROFILE in row.own
    assert Output.PROFILE in row.viewers


def test_policy_relevant_events_refresh_the_nodes_own_policy_outputs() -> None:
    for event in (Event.NODE_JOINED, Event.NODE_REAUTHED, Event.ROUTES_ADVERTISED,
                  Event.ROUTES_APPROVED, Event.NODE_CHANGED):
        assert Output.POLICY in TABLE[event].own, event
