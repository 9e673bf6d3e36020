"""The encoders: one request encoder per parser, and the one MBAP encoder every frame the gateway sends
goes through.

Parsing accepts a request PDU only as the canonical encoding of its fields (or replaces it with that
encoding), so the PDU the gateway forwards is what the encoder of its function code writes. Here that
is held for every function code, from the fields alone, and for the inputs the parser rewrites.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.modbus import ClientConnection, encode_adu, encode_exception, encode_request_pdu, parse_request
from protocols.modbus.pdu import REQUEST_ENCODERS, REQUEST_PARSERS
from tests.protocols.modbus.modbus_samples import (
    PDU_MAX,
    PUBLIC_FUNCTION_CODES,
    SAMPLES_BY_FUNCTION_CODE,
    Sample,
    fields_of,
    from_fields,
    mask_write_register,
    mbap,
    opaque_requests,
    write_multiple_coils,
)

EACH = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_parser_has_an_encoder_and_every_encoder_a_parser() -> None:
    assert set(REQUEST_ENCODERS) == set(REQUEST_PARSERS) == PUBLIC_FUNCTION_CODES
    assert set(SAMPLES_BY_FUNCTION_CODE) == PUBLIC_FUNCTION_CODES  # and every one is tested below


@pytest.mark.parametrize("fc", sorted(PUBLIC_FUNCTION_CODES))
@EACH
@given(data=st.data())
def test_every_function_code_encodes_what_it_parsed(fc: int, data: st.DataObject) -> None:
    sample = data.draw(SAMPLES_BY_FUNCTION_CODE[fc])
    assert sample.pdu[0] == fc
    request = parse_request(0x0102, 0x03, sample.pdu)
    assert fields_of(request) == sample.fields
    assert request.pdu == sample.pdu
    assert encode_request_pdu(request) == sample.pdu
    assert REQUEST_ENCODERS[fc](request) == sample.pdu
    # Written from the fields: the request's own bytes are not where the encoder took them from.
    assert encode_request_pdu(from_fields(request)) == sample.pdu


@EACH
@given(sample=opaque_requests())
def test_an_opaque_code_is_forwarded_as_received(sample: Sample) -> None:
    pdu = sample.pdu
    request = parse_request(1, 1, pdu)
    assert request.function_code not in REQUEST_ENCODERS
    assert encode_request_pdu(request) == request.pdu == pdu


@EACH
@given(
    sample=write_multiple_coils().filter(lambda s: s.fields.write_count % 8),  # unused bits in the last byte
    padding=st.integers(0, 0xFF),
)
def test_coil_padding_bits_are_forwarded_as_the_encoder_writes_them(sample: Sample, padding: int) -> None:
    canonical = sample.pdu
    unused = (0xFF << sample.fields.write_count % 8) & 0xFF  # the bits past the last coil
    received = canonical[:-1] + bytes((canonical[-1] | (padding & unused or unused),))
    request = parse_request(1, 1, received)
    assert request.received_pdu == received
    assert request.pdu == encode_request_pdu(request) == canonical
    assert parse_request(1, 1, request.pdu).pdu == request.pdu  # the canonical form is a fixed point


@EACH
@given(
    sample=mask_write_register().filter(lambda s: s.pdu[3:5] != b"\0\0"),  # an AND mask to put OR bits under
    extra=st.integers(0, 0xFFFF),
)
def test_mask_write_or_bits_under_the_and_mask_are_forwarded_as_the_encoder_writes_them(
    sample: Sample, extra: int
) -> None:
    canonical = sample.pdu
    _, address, and_mask, or_mask = struct.unpack(">BHHH", canonical)
    under = extra & and_mask or and_mask & -and_mask  # at least one OR bit under the AND mask
    received = struct.pack(">BHHH", 22, address, and_mask, or_mask | under)
    request = parse_request(1, 1, received)
    assert request.received_pdu == received
    assert request.pdu == encode_request_pdu(request) == canonical
    assert parse_request(1, 1, request.pdu).pdu == request.pdu


# ----------------------------------------------------------------------------------------------- MBAP


@pytest.mark.parametrize("size", [1, 2, 5, 100, PDU_MAX])
def test_one_mbap_encoder_frames_every_pdu_size(size: int) -> None:
    pdu = bytes(range(size))
    frame = encode_adu(0xBEEF, 0x11, pdu)
    assert frame == mbap(0xBEEF, 0x11, pdu)  # the implementation guide's layout, written independently
    client = ClientConnection()
    client.receive_data(frame)
    assert client.next_response() == (0xBEEF, 0x11, pdu)


def test_a_pdu_longer_than_253_bytes_cannot_be_framed() -> None:
    with pytest.raises(IndexError):
        encode_adu(1, 1, bytes(PDU_MAX + 1))


def test_an_exception_frame_is_an_mbap_frame_of_two_bytes() -> None:
    assert encode_exception(0x0A0B, 0x11, 0x03, 0x02) == mbap(0x0A0B, 0x11, b"\x83\x02")
