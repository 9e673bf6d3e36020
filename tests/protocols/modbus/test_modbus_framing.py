"""MBAP framing: however a stream is cut into reads, the same requests come out; a bad PDU costs only
its own frame; a bad header ends the connection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.modbus import ClientConnection, ModbusProtocolError, Request, ServerConnection
from tests.protocols.modbus.modbus_samples import (
    Fields,
    Sample,
    drain_requests,
    fields_of,
    mbap,
    split,
    valid_requests,
)
from tests.protocols.modbus.test_vectors import VECTORS

Outcome = tuple[int, int, Fields | int]  # transaction id, unit id, the request's fields or the exception


def summary(outcomes: list[Request | ModbusProtocolError]) -> list[Outcome]:
    out: list[Outcome] = []
    for item in outcomes:
        if isinstance(item, Request):
            out.append((item.transaction_id, item.unit_id, fields_of(item)))
        else:
            assert item.exception_code is not None, "this stream has no framing error"
            out.append((item.transaction_id, item.unit_id, item.exception_code))
    return out


def spec_stream() -> tuple[bytes, list[Outcome]]:
    stream, expected = b"", list[Outcome]()
    for index, vector in enumerate(VECTORS.values()):
        tid, unit = 0x0100 + index, index % 3 + 1
        stream += mbap(tid, unit, vector.request_pdu())
        expected.append((tid, unit, vector.fields))
    return stream, expected


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_spec_requests_byte_at_a_time_equal_one_coalesced_read() -> None:
    stream, expected = spec_stream()
    assert summary(drain_requests([stream])) == expected
    assert summary(drain_requests(bytewise(stream))) == expected


def test_a_request_comes_out_exactly_when_its_last_byte_arrives() -> None:
    frame = mbap(5, 1, VECTORS["fc16 write multiple registers"].request_pdu())
    connection = ServerConnection()
    for byte in frame[:-1]:
        connection.receive_data(bytes((byte,)))
        assert connection.next_request() is None
    assert connection.buffered_bytes == len(frame) - 1
    connection.receive_data(frame[-1:])
    request = connection.next_request()
    assert request is not None and request.values == (0x000A, 0x0102)
    assert connection.buffered_bytes == 0
    assert connection.next_request() is None


def test_a_read_may_end_inside_the_next_frame() -> None:
    first = mbap(1, 1, VECTORS["fc03 read holding registers"].request_pdu())
    second = mbap(2, 1, VECTORS["fc06 write single register"].request_pdu())
    connection = ServerConnection()
    connection.receive_data(first + second[:3])
    request = connection.next_request()
    assert request is not None and request.transaction_id == 1
    assert connection.next_request() is None
    connection.receive_data(second[3:])
    request = connection.next_request()
    assert request is not None and request.transaction_id == 2


@settings(max_examples=150, deadline=None)
@given(
    samples=st.lists(valid_requests, min_size=1, max_size=8),
    ids=st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFF)), min_size=8, max_size=8),
    cuts=st.lists(st.integers(0, 8 * 260), max_size=40),
)
def test_any_cutting_of_a_stream_gives_the_same_requests(
    samples: list[Sample], ids: list[tuple[int, int]], cuts: list[int]
) -> None:
    stream = b"".join(mbap(tid, unit, sample.pdu) for sample, (tid, unit) in zip(samples, ids, strict=False))
    expected = [(tid, unit, sample.fields) for sample, (tid, unit) in zip(samples, ids, strict=False)]
    assert summary(drain_requests([stream])) == expected
    assert summary(drain_requests(split(stream, cuts))) == expected
    assert summary(drain_requests(bytewise(stream))) == expected


# Well-framed requests the codec refuses, with the exception code they get.
REFUSED: list[tuple[bytes, int]] = [
    (bytes.fromhex("03 0000 007E"), 0x03),  # 126 registers
    (bytes.fromhex("05 0000 1234"), 0x03),  # coil value neither 0 nor FF00
    (bytes.fromhex("01 FFFF 0002"), 0x02),  # span past 0xFFFF
    (bytes.fromhex("14 07 05 0001 0000 0001"), 0x02),  # reference type 5
    (bytes.fromhex("2B 0E 07 00"), 0x03),  # read device id code 7
    (bytes.fromhex("90 0001"), 0x01),  # an exception function code as a request
    (bytes.fromhex("10 0000 0002 04 0001"), 0x03),  # data shorter than the byte count
]


def test_a_malformed_pdu_costs_only_its_own_frame() -> None:
    good = [VECTORS["fc03 read holding registers"], VECTORS["fc15 write multiple coils"]]
    stream = (
        mbap(1, 1, good[0].request_pdu())
        + mbap(2, 7, REFUSED[0][0])
        + mbap(3, 1, good[1].request_pdu())
        + mbap(4, 8, REFUSED[1][0])
        + mbap(5, 1, good[0].request_pdu())
    )
    expected = [
        (1, 1, good[0].fields),
        (2, 7, 0x03),
        (3, 1, good[1].fields),
        (4, 8, 0x03),
        (5, 1, good[0].fields),
    ]
    assert summary(drain_requests([stream])) == expected
    assert summary(drain_requests(bytewise(stream))) == expected


@settings(max_examples=100, deadline=None)
@given(
    plan=st.lists(st.one_of(valid_requests, st.sampled_from(REFUSED)), min_size=1, max_size=10),
    cuts=st.lists(st.integers(0, 10 * 260), max_size=30),
)
def test_refused_frames_anywhere_in_a_stream(plan: list[Sample | tuple[bytes, int]], cuts: list[int]) -> None:
    stream, expected = b"", list[Outcome]()
    for tid, item in enumerate(plan):
        if isinstance(item, Sample):
            stream += mbap(tid, 1, item.pdu)
            expected.append((tid, 1, item.fields))
        else:
            pdu, code = item
            stream += mbap(tid, 2, pdu)
            expected.append((tid, 2, code))
    assert summary(drain_requests(split(stream, cuts))) == expected


def test_after_a_framing_error_the_connection_is_unusable() -> None:
    """A close=True error means the byte stream has lost its frame boundaries: nothing after the bad
    header can be told apart from garbage, and no transaction id in it can be trusted. The caller closes
    the connection (the gateway aborts it without answering). The codec keeps refusing: every later call
    raises again, whatever arrives, so a caller that forgot to close cannot resynchronise by accident."""
    good = mbap(1, 1, VECTORS["fc03 read holding registers"].request_pdu())
    broken = mbap(2, 1, VECTORS["fc03 read holding registers"].request_pdu(), protocol_id=1)
    connection = ServerConnection()
    connection.receive_data(good + broken + good)
    first = connection.next_request()
    assert first is not None and first.transaction_id == 1  # what came before is still delivered
    for _ in range(3):
        with pytest.raises(ModbusProtocolError) as caught:
            connection.next_request()
        assert caught.value.close is True
        connection.receive_data(good)


def test_client_side_framing_error_is_sticky_too() -> None:
    connection = ClientConnection()
    connection.receive_data(mbap(1, 1, b"\x83\x02") + mbap(2, 1, b"\x83\x02", length=0))
    assert connection.next_response() == (1, 1, b"\x83\x02")
    for _ in range(2):
        with pytest.raises(ModbusProtocolError) as caught:
            connection.next_response()
        assert caught.value.close is True
        connection.receive_data(mbap(3, 1, b"\x83\x02"))


@settings(max_examples=100, deadline=None)
@given(
    pdus=st.lists(st.binary(min_size=1, max_size=253), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 8 * 260), max_size=30),
)
def test_responses_come_out_whole_however_they_are_cut(pdus: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(mbap(tid, tid % 256, pdu) for tid, pdu in enumerate(pdus))
    connection = ClientConnection()
    frames = []
    for chunk in split(stream, cuts):
        connection.receive_data(chunk)
        while (frame := connection.next_response()) is not None:
            frames.append(frame)
    assert frames == [(tid, tid % 256, pdu) for tid, pdu in enumerate(pdus)]
