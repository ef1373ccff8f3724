"""The mapper hands a flush's messages to streams a slice at a time (mapper/delivery.py): other work
runs between slices, each stream's messages stay in order, and a full map built meanwhile
is not followed by what it already holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshscale.mapper import delivery
from meshscale.mapper.frames import Message
from meshscale.mapper.mapper import Mapper
from meshscale.mapper.session import MapSession
from meshscale.policy import AllowAllEngine
from tests.unit.test_mapper_chunks import tailnet


def streaming(mapper: Mapper, ids: range) -> list[MapSession]:
    out = []
    for i in ids:
        s = mapper.open(i, True)
        mapper.full_map(s)
        s.needs_full = False  # as after its full map went out
        out.append(s)
    return out


async def until_idle(mapper: Mapper) -> int:
    turns = 0
    while mapper.delivering():
        await asyncio.sleep(0)
        turns += 1
        assert turns < 1000
    return turns


def bodies(s: MapSession) -> list[bytes]:
    return [m.body for m in s.queue]


@pytest.fixture
def sliced(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every look at the clock finds the slice used up: DELIVER_STEP streams per loop turn.
    monkeypatch.setattr(delivery, "SLICE", 0.0)
    monkeypatch.setattr(delivery, "STEP", 10)


async def test_a_flush_reaches_many_streams_over_several_turns_with_other_work_between(
        tmp_path: Path, sliced: None) -> None:
    st = tailnet(tmp_path, 60)
    m = Mapper(st.config, st, AllowAllEngine(), dict)
    sessions = streaming(m, range(1, 61))
    between: list[int] = []

    def other_work() -> None:  # a handshake, a request: runs while the flush is delivered
        between.append(sum(1 for s in sessions if s.queue))

    st.client_update(st.nodes[1], ("127.0.0.2:1",), None, None)
    asyncio.get_running_loop().call_soon(other_work)
    await asyncio.sleep(0)  # the flush (its first slice), then other_work
    turns = await until_idle(m)
    assert turns >= 5
    assert between and 0 < between[0] < 59  # some streams had the message, not all
    assert all(b'"127.0.0.2:1"' in bodies(s)[0] for s in sessions[1:])


async def test_each_stream_gets_its_messages_in_order(tmp_path: Path, sliced: None) -> None:
    st = tailnet(tmp_path, 40)
    m = Mapper(st.config, st, AllowAllEngine(), dict)
    sessions = streaming(m, range(1, 41))
    first, second = Message(b'{"n":1}'), Message(b'{"n":2}')
    m.deliver(sessions, first)
    m.deliver(sessions[::-1], second)  # handed over while the first is still going out
    await until_idle(m)
    assert all(bodies(s) == [b'{"n":1}', b'{"n":2}'] for s in sessions)


async def test_a_full_map_built_meanwhile_is_not_followed_by_older_messages(
        tmp_path: Path, sliced: None) -> None:
    st = tailnet(tmp_path, 40)
    m = Mapper(st.config, st, AllowAllEngine(), dict)
    sessions = streaming(m, range(1, 41))
    m.deliver(sessions, Message(b'{"n":1}'))
    late = sessions[-1]
    assert not late.queue  # not reached in the first slice
    late.resync()
    m.full_map(late)  # what a stream's writer does: the map holds every change so far
    late.needs_full = False
    m.deliver(sessions, Message(b'{"n":2}'))
    await until_idle(m)
    assert bodies(late) == [b'{"n":2}']
    assert bodies(sessions[0]) == [b'{"n":1}', b'{"n":2}']


def test_without_a_loop_everything_is_delivered_at_once(tmp_path: Path,
                                                       sliced: None) -> None:
    st = tailnet(tmp_path, 30)
    m = Mapper(st.config, st, AllowAllEngine(), dict)
    sessions = streaming(m, range(1, 31))
    m.deliver(sessions, Message(b'{"n":1}'))
    assert not m.delivering() and all(bodies(s) == [b'{"n":1}'] for s in sessions)


async def test_a_push_that_fails_resyncs_that_stream_and_the_rest_still_get_it(
        tmp_path: Path, sliced: None, monkeypatch: pytest.MonkeyPatch) -> None:
    st = tailnet(tmp_path, 30)
    m = Mapper(st.config, st, AllowAllEngine(), dict)
    sessions = streaming(m, range(1, 31))
    broken = sessions[15]

    def fail(_msg: Message) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(broken, "push", fail)
    m.deliver(sessions, Message(b'{"n":1}'))
    await until_idle(m)
    m.deliver(sessions, Message(b'{"n":2}'))
    await until_idle(m)
    assert broken.needs_full
    assert all(bodies(s) == [b'{"n":1}', b'{"n":2}'] for s in sessions if s is not broken)
