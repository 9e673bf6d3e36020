"""take_repeat against the general path: what one read brings, given to take_repeat on one connection and
to receive_data + next_event on its twin, gives the same events and leaves both in the same state; when
take_repeat declines, it has changed nothing and the general path carries on as if it had not been asked."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from asyncua import ua
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.opcua import CloseChannel, Event, OpcUaProtocolError, OpcUaServerConnection, ServiceRequest
from protocols.opcua.messages import Repeat
from tests.protocols.opcua.opcua_canned_server import VALUE_NODES, hello
from tests.protocols.opcua.opcua_peer import CHANNEL, NOW, Peer

DAY_S = 86_400.0


@dataclass
class Twins:
    """Two connections fed the same bytes: ``taking`` is offered each read through take_repeat first."""

    peer: Peer  # makes the bytes; its own connection is ``taking``
    general: OpcUaServerConnection
    repeat: Repeat

    @property
    def taking(self) -> OpcUaServerConnection:
        return self.peer.conn


def twins() -> Twins:
    peer = Peer()
    general = OpcUaServerConnection(CHANNEL)
    data = peer.handshake_bytes() + peer.read_bytes(VALUE_NODES, 2, handle=1)
    events = {}
    for name, conn in (("taking", peer.conn), ("general", general)):
        conn.receive_data(data)
        events[name] = outcome(conn, NOW)
    taken = events["taking"][-1]
    assert isinstance(taken, ServiceRequest) and taken.repeat is not None
    return Twins(peer, general, taken.repeat)


def outcome(conn: OpcUaServerConnection, now: float) -> list[object]:
    """Every event the connection has, then the error that ended them, if one did."""
    found: list[object] = []
    try:
        while (event := conn.next_event(now)) is not None:
            found.append(event)
    except OpcUaProtocolError as error:
        found.append(("error", error.status))
    return found


def same(event: object) -> object:
    """What must agree between the twins: a request's ids, service and bytes, and which entry it repeats
    (each connection has its own cache, so entries compare by their bytes)."""
    if isinstance(event, ServiceRequest):
        key = None if event.repeat is None else event.repeat.key
        return ("request", event.request_id, event.request_handle, event.name, event.body, key)
    return event if isinstance(event, tuple) else type(event)


def state(conn: OpcUaServerConnection) -> tuple[object, ...]:
    return (conn.state, conn._peer_sequence_number, conn.buffered_bytes, conn.repeats.hits)


def both(twins: Twins, data: bytes, now: float = NOW) -> tuple[bool, list[object]]:
    """Whether take_repeat took ``data``, and the events (the same on both twins)."""
    taken: Event | None = twins.taking.take_repeat(data, now, twins.repeat)
    if taken is None:
        twins.taking.receive_data(data)
        taking = outcome(twins.taking, now)
    else:
        taking = [taken, *outcome(twins.taking, now)]
    twins.general.receive_data(data)
    general = outcome(twins.general, now)
    assert [same(e) for e in taking] == [same(e) for e in general]
    assert state(twins.taking) == state(twins.general)
    return taken is not None, taking


def _repeat(t: Twins) -> bytes:
    return t.peer.read_bytes(VALUE_NODES, 3, handle=77)


def _patch(offset: int, value: int) -> Callable[[Twins], bytes]:
    def damaged(t: Twins) -> bytes:
        data = bytearray(_repeat(t))
        struct.pack_into("<I", data, offset, value)
        return bytes(data)

    return damaged


READS: dict[str, tuple[Callable[[Twins], bytes], bool]] = {
    # name: (what one read brings, whether take_repeat takes it)
    "the repeat": (_repeat, True),
    "another Read": (lambda t: t.peer.read_bytes(VALUE_NODES[:3], 3), False),
    "two repeats in one read": (lambda t: _repeat(t) + t.peer.read_bytes(VALUE_NODES, 4, handle=78), False),
    "half a repeat": (lambda t: _repeat(t)[:100], False),
    "a sequence number skipped": (lambda t: (t.peer.next_sequence(), _repeat(t))[1], False),
    "an unknown token": (_patch(12, 99), False),
    "another channel": (_patch(8, CHANNEL + 1), False),
    "an intermediate chunk": (lambda t: b"MSGC" + _repeat(t)[4:], False),
    "a chunk size that lies": (_patch(4, 1 << 20), False),
}


@pytest.mark.parametrize("case", sorted(READS))
def test_take_repeat_gives_what_the_general_path_gives(case: str) -> None:
    t = twins()
    make, expected = READS[case]
    taken, _events = both(t, make(t))
    assert taken == expected
    # And on together: whatever is left pending or failed, the next read gives the same on both.
    both(t, _repeat(t))


def test_an_expired_token_and_a_closed_channel_are_not_taken() -> None:
    t = twins()
    hits = t.taking.repeats.hits
    expired = both(t, _repeat(t), now=NOW + DAY_S)
    assert expired == (False, [("error", ua.StatusCodes.BadSecureChannelTokenUnknown)])
    assert t.taking.repeats.hits == hits
    t = twins()
    closed = both(t, t.peer.close_bytes())
    assert closed == (False, [CloseChannel(99)])
    assert t.taking.take_repeat(_repeat(t), NOW, t.repeat) is None


def test_not_before_the_channel_is_open() -> None:
    peer = Peer()
    t = twins()
    peer.conn.receive_data(hello())
    assert peer.conn.take_repeat(_repeat(t), NOW, t.repeat) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_any_byte_changed_is_taken_only_as_the_general_path_would(position: int, value: int) -> None:
    t = twins()
    data = bytearray(_repeat(t))
    data[position % len(data)] = value
    both(t, bytes(data))


def test_nothing_is_taken_while_part_of_a_chunk_is_held() -> None:
    """A whole repeat on its own would be taken; after half a chunk it is the rest of that chunk."""
    t = twins()
    first = _repeat(t)
    t.peer.sequence -= 1
    second = _repeat(t)  # the same sequence number: the one the client is due to send
    assert both(t, first[:100]) == (False, [])
    taken, _events = both(t, second)
    assert not taken
