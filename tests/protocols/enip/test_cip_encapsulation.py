"""Encapsulation framing (Vol 2 chapter 2) and CPF items: header layout, byte-at-a-time and coalesced
feeding, the length cap, unknown commands and options, command bodies, and the replies the gateway
builds itself (ListIdentity, ListServices, ListInterfaces)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.enip import (
    CipLimits,
    CipProtocolError,
    ConnectedAddressItem,
    ConnectedDataItem,
    CpfItem,
    EncapsulationConnection,
    EncapsulationMessage,
    IdentityItem,
    NullAddressItem,
    SendData,
    ServiceItem,
    SockaddrItem,
    UnconnectedDataItem,
    UnknownItem,
    check_empty_request,
    connected_message,
    encode_cpf,
    list_identity_data,
    list_interfaces_data,
    list_services_data,
    parse_cpf,
    parse_register_session,
    parse_send_data,
    register_session_data,
    send_rr_data,
    send_unit_data,
    unconnected_message,
    with_session,
)
from tests.protocols.enip.cip_samples import captured_frames, cpf_items, frame

INVALID_COMMAND, INCORRECT_DATA, INVALID_LENGTH, UNSUPPORTED_VERSION = 0x0001, 0x0003, 0x0065, 0x0069


def stream_of(*scenarios: str, direction: str = "request") -> list[bytes]:
    return [data for _, d, data in captured_frames(*scenarios) if d == direction]


def test_header_layout() -> None:
    # Vol 2 §2-3: command, length, session handle, status, sender context, options; little-endian.
    message = EncapsulationMessage(0x0065, 0, 0, b"_pycomm_", 0, register_session_data())
    assert message.encode().hex() == "6500040000000000000000005f7079636f6d6d5f0000000001000000"
    assert message.length == 4


def test_register_session() -> None:
    data = bytes.fromhex("6500040000000000000000005f7079636f6d6d5f0000000001000000")
    connection = EncapsulationConnection()
    connection.receive_data(data)
    request = connection.next_message()
    assert request is not None and parse_register_session(request) == 1
    reply = request.reply(request.data, session_handle=0x12345678)
    assert (reply.command, reply.session_handle, reply.sender_context) == (0x65, 0x12345678, b"_pycomm_")
    assert with_session(request, 7).session_handle == 7


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (struct.pack("<HH", 2, 0), UNSUPPORTED_VERSION),
        (struct.pack("<HH", 1, 1), INCORRECT_DATA),
        (struct.pack("<H", 1), INVALID_LENGTH),
        (struct.pack("<HHB", 1, 0, 0), INVALID_LENGTH),
    ],
)
def test_register_session_refusals(data: bytes, status: int) -> None:
    message = EncapsulationMessage(0x65, 0, 0, b"abcdefgh", 0, data)
    with pytest.raises(CipProtocolError) as caught:
        parse_register_session(message)
    error = caught.value
    assert (error.encapsulation_status, error.command, error.sender_context, error.close) == (
        status,
        0x65,
        b"abcdefgh",
        False,
    )


def test_byte_at_a_time_and_coalesced_feeding_give_the_same_messages() -> None:
    stream = b"".join(stream_of("pycomm3_logix", "pylogix"))
    whole = EncapsulationConnection()
    whole.receive_data(stream)
    expected = []
    while (message := whole.next_message()) is not None:
        expected.append(message)
    assert len(expected) == len(stream_of("pycomm3_logix", "pylogix"))

    trickle = EncapsulationConnection()
    got = []
    for byte in stream:
        trickle.receive_data(bytes((byte,)))
        while (message := trickle.next_message()) is not None:
            got.append(message)
    assert got == expected and trickle.buffered_bytes == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2000), max_size=30))
def test_arbitrary_cuts_give_the_same_messages(cuts: list[int]) -> None:
    stream = b"".join(stream_of("pylogix"))
    connection = EncapsulationConnection()
    got = []
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        connection.receive_data(stream[start:end])
        while (message := connection.next_message()) is not None:
            got.append(message.encode())
    assert got == stream_of("pylogix")


def test_length_above_the_cap_closes() -> None:
    connection = EncapsulationConnection(limits=CipLimits(max_data_bytes=100))
    connection.receive_data(frame(0x6F, bytes(100)))
    assert connection.next_message() is not None
    connection.receive_data(frame(0x6F, bytes(101))[:24])  # the header alone is enough to know
    with pytest.raises(CipProtocolError) as caught:
        connection.next_message()
    assert caught.value.close and caught.value.encapsulation_status == INVALID_LENGTH


def test_the_default_cap_takes_a_large_forward_open_connection() -> None:
    connection = EncapsulationConnection()
    connection.receive_data(frame(0x70, send_unit_data(1, 1, bytes(4002))))
    assert connection.next_message() is not None
    connection.receive_data(frame(0x70, bytes(8193)))
    with pytest.raises(CipProtocolError):
        connection.next_message()


def test_unknown_command_is_consumed_and_answerable() -> None:
    connection = EncapsulationConnection()
    connection.receive_data(frame(0x0001) + frame(0x0066))  # legacy ListTargets, then UnRegisterSession
    with pytest.raises(CipProtocolError) as caught:
        connection.next_message()
    error = caught.value
    assert (error.encapsulation_status, error.command, error.session_handle, error.sender_context) == (
        INVALID_COMMAND,
        0x0001,
        0x11223344,
        b"ctx45678",
    )
    assert not error.close and not error.discard
    message = connection.next_message()
    assert message is not None and message.command == 0x0066


def test_nonzero_options_discard_the_frame() -> None:
    bad = bytearray(frame(0x0000, b"xyz"))
    bad[20] = 1
    connection = EncapsulationConnection()
    connection.receive_data(bytes(bad) + frame(0x0000))
    with pytest.raises(CipProtocolError) as caught:
        connection.next_message()
    assert caught.value.discard
    assert connection.next_message() == EncapsulationMessage(0, 0x11223344, 0, b"ctx45678", 0, b"")


def test_list_requests_carry_no_data() -> None:
    check_empty_request(EncapsulationMessage(0x63))
    check_empty_request(EncapsulationMessage(0x70, data=b"x"))  # not a list request
    with pytest.raises(CipProtocolError) as caught:
        check_empty_request(EncapsulationMessage(0x04, data=b"x"))
    assert caught.value.encapsulation_status == INVALID_LENGTH


def test_encoding_refuses_what_cannot_be_framed() -> None:
    with pytest.raises(ValueError):
        EncapsulationMessage(0x6F, data=bytes(65512)).encode()
    with pytest.raises(ValueError):
        EncapsulationMessage(0x6F, sender_context=b"short").encode()


# ------------------------------------------------------------------------------------- command bodies


def test_send_rr_data_and_send_unit_data_round_trip() -> None:
    rr = EncapsulationMessage(0x6F, 1, data=send_rr_data(b"\x01\x02\x20\x01\x24\x01", timeout=10))
    assert rr.data.hex() == "000000000a00020000000000b2000600010220012401"
    assert unconnected_message(rr, parse_send_data(rr)) == bytes.fromhex("010220012401")
    unit = EncapsulationMessage(0x70, 1, data=send_unit_data(0xDEADBEEF, 7, b"\x4c\x02"))
    assert connected_message(unit, parse_send_data(unit)) == (0xDEADBEEF, 7, b"\x4c\x02")
    with_sockaddr = send_rr_data(b"\x00\x00", sockaddrs=(SockaddrItem(0x8000, 2, 2222, 0x7F000001),))
    message = EncapsulationMessage(0x6F, data=with_sockaddr)
    assert unconnected_message(message, parse_send_data(message)) == b"\x00\x00"


@pytest.mark.parametrize(
    "data",
    [
        bytes(5),  # shorter than handle + timeout
        struct.pack("<IH", 1, 0) + encode_cpf((NullAddressItem(), UnconnectedDataItem(b"ab"))),  # handle 1
        struct.pack("<IH", 0, 0) + b"\x01",  # no item count
    ],
)
def test_send_data_refusals(data: bytes) -> None:
    with pytest.raises(CipProtocolError) as caught:
        parse_send_data(EncapsulationMessage(0x6F, data=data))
    assert caught.value.encapsulation_status == INCORRECT_DATA and not caught.value.close


@pytest.mark.parametrize(
    "items",
    [
        (),
        (NullAddressItem(),),
        (UnconnectedDataItem(b"ab"), NullAddressItem()),
        (ConnectedAddressItem(1), UnconnectedDataItem(b"ab")),
        (NullAddressItem(), UnconnectedDataItem(b"ab"), UnknownItem(0x1234, b"")),
    ],
)
def test_unconnected_message_needs_its_items(items: tuple[CpfItem, ...]) -> None:
    message = EncapsulationMessage(0x6F, data=SendData(items).encode())
    with pytest.raises(CipProtocolError) as caught:
        unconnected_message(message, parse_send_data(message))
    assert caught.value.encapsulation_status == INCORRECT_DATA


@pytest.mark.parametrize(
    "items",
    [
        (ConnectedAddressItem(1),),
        (NullAddressItem(), ConnectedDataItem(1, b"")),
        (ConnectedAddressItem(1), ConnectedDataItem(1, b""), NullAddressItem()),
    ],
)
def test_connected_message_needs_its_items(items: tuple[CpfItem, ...]) -> None:
    message = EncapsulationMessage(0x70, data=SendData(items).encode())
    with pytest.raises(CipProtocolError):
        connected_message(message, parse_send_data(message))


# ------------------------------------------------------------------------------------------------ CPF


@pytest.mark.parametrize(
    ("hex_data", "why"),
    [
        ("0100", "count 1 without items"),
        ("01000000", "item header cut short"),
        ("0100b2000400aabb", "item longer than the data"),
        ("0100000000000000", "trailing bytes"),
        ("0100a1000200aabb", "connected address of 2 bytes"),
        ("01000000 0100 aa".replace(" ", ""), "null address with data"),
        ("0100b1000100aa", "connected data without a sequence count"),
        ("010000801000" + "0002af127f0000010000000000000001", "sockaddr zero not zero"),
        ("01000080 0f00".replace(" ", "") + "00" * 15, "sockaddr of 15 bytes"),
        ("09" + "00" + "00000000" * 9, "more items than the cap"),
    ],
)
def test_cpf_refusals(hex_data: str, why: str) -> None:
    with pytest.raises(CipProtocolError) as caught:
        parse_cpf(bytes.fromhex(hex_data))
    assert caught.value.encapsulation_status == INCORRECT_DATA, why


@settings(max_examples=200, deadline=None)
@given(st.lists(cpf_items, max_size=8))
def test_cpf_items_round_trip(items: list[CpfItem]) -> None:
    data = encode_cpf(items)
    assert parse_cpf(data) == tuple(items)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_cpf_parses_or_refuses(data: bytes) -> None:
    try:
        items = parse_cpf(data)
    except CipProtocolError as error:
        assert error.encapsulation_status == INCORRECT_DATA
        return
    assert encode_cpf(items) == data


# ---------------------------------------------------------------------------- what the gateway answers


def test_list_identity_reply_round_trips_cpppos() -> None:
    replies = (data for _, d, data in captured_frames("pycomm3_logix") if d == "reply")
    captured = next(data for data in replies if data[0] == 0x63)
    connection = EncapsulationConnection()
    connection.receive_data(captured)
    message = connection.next_message()
    assert message is not None
    (identity,) = parse_cpf(message.data)
    assert isinstance(identity, IdentityItem)
    assert list_identity_data(identity) == message.data


def test_list_identity_reply_layout() -> None:
    identity = IdentityItem(1, 0x0E, 0x36, 20, 11, 0x0030, 0x00C0FFEE, "ztgate", 3, sin_addr=0x7F000001)
    assert list_identity_data(identity).hex() == (
        "0100" "0c00" "2800"  # one item: ListIdentity, 40 bytes
        "0100" "0002af127f0000010000000000000000"  # protocol 1, sockaddr 127.0.0.1:44818 (big-endian)
        "0100" "0e00" "3600" "140b" "3000" "eeffc000"  # vendor, type, product, revision 20.11, status, serial
        "067a7467617465" "03"  # "ztgate", state 3
    )  # fmt: skip


def test_list_services_and_list_interfaces_replies() -> None:
    # Vol 2 §2-4.6: one "Communications" item of 20 bytes, version 1, CIP over TCP (bit 5).
    assert list_services_data().hex() == "01000001140001002000" + b"Communications\0\0".hex()
    assert parse_cpf(list_services_data()) == (ServiceItem(0x0020),)
    assert list_interfaces_data() == b"\x00\x00"
