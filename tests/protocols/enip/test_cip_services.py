"""Service data: message router framing, Unconnected Send, Multiple Service Packet, (Large) Forward Open
and Forward Close, Logix tag services (vectors from 1756-PM020), common services, atomic values, and the
(class, service) name table. The numbers are held against pycomm3's tables, an independent transcription
of the same specs."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.enip import (
    AttributeList,
    CipLimits,
    CipProtocolError,
    ConnectionParameters,
    DataType,
    EPath,
    ForwardClose,
    ForwardCloseReply,
    ForwardOpen,
    ForwardOpenFailure,
    ForwardOpenReply,
    MessageRouterRequest,
    MessageRouterResponse,
    NoData,
    Opaque,
    PortSegment,
    ReadModifyWrite,
    ReadTag,
    ReadTagReply,
    UnconnectedSend,
    WriteTag,
    decode_values,
    join_requests,
    parse_forward_close,
    parse_forward_close_reply,
    parse_forward_open,
    parse_forward_open_reply,
    parse_payload,
    parse_read_tag_reply,
    parse_request,
    parse_response,
    parse_unconnected_send,
    reply_to,
    service_name,
    spec,
    split_multiple_service_packet,
)
from protocols.enip.logix import TRAILING_BYTES_IGNORED
from tests.protocols.enip.cip_samples import (
    MESSAGE_ROUTER,
    forward_closes,
    forward_opens,
    leaf_requests,
    object_path,
    read_tag,
)

NOT_ENOUGH_DATA, TOO_MUCH_DATA, INVALID_PARAMETER_VALUE = 0x13, 0x15, 0x03


def refused(status: int, call: object, *args: object, **kwargs: object) -> CipProtocolError:
    with pytest.raises(CipProtocolError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    assert caught.value.general_status == status, caught.value
    assert not caught.value.close
    return caught.value


# ------------------------------------------------------------------------------------ message router


def test_message_router_request_and_reply_layout() -> None:
    # 1756-PM020 Read-Modify-Write example: set bit 2 and reset bit 5 of the DINT ControlWord.
    data = bytes.fromhex("4e07910b436f6e74726f6c576f726400040004000000dfffffff")
    request = parse_request(data)
    assert (request.service, request.path.tag) == (0x4E, "ControlWord")
    assert request.encode() == data
    assert parse_payload(0x6B, 0x4E, request.data) == ReadModifyWrite(4, 0x04, 0xFFFFFFDF)
    assert parse_response(bytes.fromhex("ce000000")) == MessageRouterResponse(0xCE)
    error = parse_response(bytes.fromhex("cc00050200000121aa"))
    assert (error.request_service, error.general_status, error.extended_status, error.data) == (
        0x4C,
        0x05,
        (0x0000, 0x2101),
        b"\xaa",
    )
    assert error.encode().hex() == "cc00050200000121aa" and not error.ok
    assert reply_to(0x4D, 0x0F).encode() == bytes.fromhex("cd000f00")


@pytest.mark.parametrize(
    ("hex_data", "status"),
    [
        ("", NOT_ENOUGH_DATA),
        ("4c", NOT_ENOUGH_DATA),
        ("4c04910454656d70", 0x26),  # path size past the data
        ("cc0020012401", 0x08),  # a reply code as a request
        ("4c00", 0x04),  # empty path
        ("4c02e0000000", 0x04),
    ],
)
def test_message_router_request_refusals(hex_data: str, status: int) -> None:
    refused(status, parse_request, bytes.fromhex(hex_data))


@pytest.mark.parametrize("hex_data", ["", "cc00", "4c000000", "cc010000", "cc000001", "cc000002aabb"])
def test_message_router_reply_refusals(hex_data: str) -> None:
    refused(0x22, parse_response, bytes.fromhex(hex_data))


# ---------------------------------------------------------------------------------- Unconnected Send


def test_unconnected_send_as_pycomm3_sends_it() -> None:
    # pycomm3 generic_message(unconnected_send=True, route_path="1/0"): Get_Attribute_Single 1/1/7.
    data = bytes.fromhex("0a0508000e0320012401300701000100")
    send = parse_unconnected_send(data)
    assert (send.priority_time_tick, send.timeout_ticks) == (0x0A, 0x05)
    assert (send.request.service, send.request.path.attribute_id) == (0x0E, 7)
    assert send.route.route == (PortSegment(1, b"\x00"),)
    assert send.encode() == data


def test_unconnected_send_pads_an_odd_message() -> None:
    odd = MessageRouterRequest(0x01, object_path(1, 1), b"\xaa")  # 7 bytes
    send = UnconnectedSend(odd, EPath((PortSegment(1, b"\x02"),)))
    data = send.encode()
    assert data.hex() == "0a050700010220012401aa0001000102"
    assert parse_unconnected_send(data) == send


@pytest.mark.parametrize(
    ("hex_data", "status"),
    [
        ("0a05", NOT_ENOUGH_DATA),
        ("0a050600010220012401", NOT_ENOUGH_DATA),  # no route size
        ("0a05070001022001240 1aa01 0000".replace(" ", ""), INVALID_PARAMETER_VALUE),  # pad byte not zero
        ("0a050600010220012401 0101 0100".replace(" ", ""), INVALID_PARAMETER_VALUE),  # reserved byte
        ("0a050600010220012401 0200 0100".replace(" ", ""), NOT_ENOUGH_DATA),  # route shorter than its size
        ("0a050600010220012401 0100 010000".replace(" ", ""), TOO_MUCH_DATA),  # bytes after the route
        ("0a050600010220012401 0100 2002".replace(" ", ""), 0x04),  # a route of logical segments
    ],
)
def test_unconnected_send_refusals(hex_data: str, status: int) -> None:
    refused(status, parse_unconnected_send, bytes.fromhex(hex_data))


# --------------------------------------------------------------------------- Multiple Service Packet


def test_multiple_service_packet_offsets_count_from_the_service_count() -> None:
    requests = [read_tag("Temp"), read_tag("SCADA[1]"), read_tag("Count")]
    data = join_requests(requests)
    # pycomm3 and pylogix send these very bytes for the same three tags (see the captures).
    assert data[:8].hex() == "0300080012002000"
    assert [parse_request(part) for part in split_multiple_service_packet(data)] == requests


@pytest.mark.parametrize(
    ("hex_data", "status"),
    [
        ("", NOT_ENOUGH_DATA),
        ("0000", NOT_ENOUGH_DATA),
        ("0200 0600", NOT_ENOUGH_DATA),  # offset table cut short
        ("0100 0600 0e0320012401".replace(" ", ""), INVALID_PARAMETER_VALUE),  # first offset past the table
        ("0100 0200 0e0320012401".replace(" ", ""), INVALID_PARAMETER_VALUE),  # first offset inside the table
        ("0200 0600 0600 0e0320012401".replace(" ", ""), INVALID_PARAMETER_VALUE),  # an empty message
        ("0200 0600 0b00 0e0320012401".replace(" ", ""), INVALID_PARAMETER_VALUE),  # offsets out of order
        ("0200 0600 1200 0e0320012401".replace(" ", ""), INVALID_PARAMETER_VALUE),  # offset past the end
    ],
)
def test_multiple_service_packet_refusals(hex_data: str, status: int) -> None:
    refused(status, split_multiple_service_packet, bytes.fromhex(hex_data.replace(" ", "")))


def test_multiple_service_packet_cap() -> None:
    data = join_requests([read_tag("A")] * 5)
    split_multiple_service_packet(data, limits=CipLimits(max_services=5))
    refused(0x02, split_multiple_service_packet, data, limits=CipLimits(max_services=4))


# ------------------------------------------------------------------------ Forward Open / Forward Close


def test_forward_open_as_pylogix_sends_it() -> None:
    data = bytes.fromhex(
        "0a0e" "02000020" "73bc0000" "b60f" "3713" "2a000000" "03" "000000"
        "34122000" "f843" "01402000" "f843" "a3" "03" "010020022401"
    )  # fmt: skip
    open_ = parse_forward_open(data, large=False)
    assert open_.triad == (0x0FB6, 0x1337, 0x2A)
    assert (open_.o_t_connection_id, open_.t_o_connection_id) == (0x20000002, 0xBC73)
    assert (open_.o_t_rpi, open_.t_o_rpi, open_.timeout_multiplier) == (0x201234, 0x204001, 3)
    assert open_.o_t == ConnectionParameters(504, True, 0, 2, False)
    assert open_.transport_class == 3 and open_.service == 0x54
    assert open_.encode() == data
    refused(TOO_MUCH_DATA, parse_forward_open, data + b"\x00", large=False)
    refused(NOT_ENOUGH_DATA, parse_forward_open, data[:-1], large=False)
    reserved = bytearray(data)
    reserved[19] = 1  # the first reserved byte, after the timeout multiplier
    refused(INVALID_PARAMETER_VALUE, parse_forward_open, bytes(reserved), large=False)


def test_connection_parameters_in_both_sizes() -> None:
    assert ConnectionParameters.decode(0x41F8, large=False) == ConnectionParameters(504, False, 0, 2, False)
    assert ConnectionParameters.decode(0x4200_0FA0, large=True) == ConnectionParameters(
        4000, True, 0, 2, False
    )
    assert ConnectionParameters.decode(0xAE00 | 0x1FF, large=False) == ConnectionParameters(
        511, True, 3, 1, True
    )


@settings(max_examples=150, deadline=None)
@given(forward_opens())
def test_forward_opens_round_trip(open_: ForwardOpen) -> None:
    assert parse_forward_open(open_.encode(), large=open_.large) == open_


@settings(max_examples=100, deadline=None)
@given(forward_closes)
def test_forward_closes_round_trip(close: ForwardClose) -> None:
    assert parse_forward_close(close.encode()) == close


def test_forward_open_and_close_replies() -> None:
    reply = ForwardOpenReply(1, 2, 3, 4, 5, 6, 7, b"\x01\x02")
    assert parse_forward_open_reply(reply.encode()) == reply
    refused(0x22, parse_forward_open_reply, reply.encode() + b"\x00")
    assert ForwardOpenFailure(3, 4, 5, 2).encode().hex() == "03000400050000000200"
    close = ForwardCloseReply(3, 4, 5)
    assert parse_forward_close_reply(close.encode()) == close
    refused(0x22, parse_forward_close_reply, b"\x00" * 9)
    reserved = bytearray(ForwardClose(1, 2, 3, 4, 5, MESSAGE_ROUTER).encode())
    reserved[11] = 1  # the byte after the path size
    refused(INVALID_PARAMETER_VALUE, parse_forward_close, bytes(reserved))


# -------------------------------------------------------------------------------- Logix tag services


def test_read_tag_fragmented_from_the_manual() -> None:
    # 1756-PM020: TotalCount, 1750 SINTs, third request: start at byte offset 980.
    request = parse_request(bytes.fromhex("5203206b25001ae0d606d4030000"))
    assert (request.path.class_id, request.path.instance_id) == (0x6B, 0xE01A)
    assert parse_payload(0x6B, 0x52, request.data) == ReadTag(1750, 980)
    reply = parse_response(bytes.fromhex("d2000600c200") + bytes(490))
    assert reply.general_status == 0x06
    assert parse_read_tag_reply(reply.data) == ReadTagReply(0xC2, bytes(490))


def test_write_tag_fragmented_from_the_manual() -> None:
    # 1756-PM020: TotalCount, 1750 SINTs, third fragment of 474 elements at byte offset 948.
    data = bytes.fromhex("c200d606b4030000") + bytes(range(256)) + bytes(218)
    request = parse_request(bytes.fromhex("5306910a546f74616c436f756e74") + data)
    payload = parse_payload(0x6B, 0x53, request.data)
    assert isinstance(payload, WriteTag)
    assert (payload.data_type, payload.element_count, payload.byte_offset, payload.element_offset) == (
        0xC2,
        1750,
        948,
        948,
    )
    assert payload.values is not None and len(payload.values) == 474 and payload.values[200] == -56
    assert payload.encode() == data


def test_write_tag_fragmented_element_offset_counts_elements() -> None:
    payload = parse_payload(0x6B, 0x53, struct.pack("<HHI3i", 0xC4, 300, 488, 1, -2, 3))
    assert isinstance(payload, WriteTag) and payload.element_offset == 122 and payload.values == (1, -2, 3)
    for bad in (
        struct.pack("<HHI3i", 0xC4, 300, 486, 1, 2, 3),  # offset inside an element
        struct.pack("<HHI", 0xC4, 300, 0) + b"\x01\x02\x03",  # part of an element
        struct.pack("<HHI", 0xC4, 300, 0),  # no data
    ):
        refused(INVALID_PARAMETER_VALUE, parse_payload, 0x6B, 0x53, bad)
    refused(TOO_MUCH_DATA, parse_payload, 0x6B, 0x53, struct.pack("<HHI2i", 0xC4, 2, 4, 1, 2))


@pytest.mark.parametrize(
    ("data_type", "fmt", "values"),
    [
        (DataType.SINT, "b", (-128, 127)),
        (DataType.INT, "h", (-32768, 32767)),
        (DataType.DINT, "i", (-(2**31), 2**31 - 1)),
        (DataType.LINT, "q", (-(2**63), 2**63 - 1)),
        (DataType.USINT, "B", (0, 255)),
        (DataType.UINT, "H", (0, 65535)),
        (DataType.UDINT, "I", (0, 2**32 - 1)),
        (DataType.ULINT, "Q", (0, 2**64 - 1)),
        (DataType.REAL, "f", (1.5, -0.25)),
        (DataType.LREAL, "d", (1e300, -1e-300)),
        (DataType.BYTE, "B", (0xFF, 0x01)),
        (DataType.WORD, "H", (0xFFFF, 0x8000)),
        (DataType.DWORD, "I", (0xFFFFFFFF, 0x80000000)),
    ],
)
def test_written_atomic_values(data_type: int, fmt: str, values: tuple[float, ...]) -> None:
    data = struct.pack(f"<HH2{fmt}", data_type, 2, *values)
    payload = parse_payload(0x6B, 0x4D, data)
    assert isinstance(payload, WriteTag) and payload.values == values and payload.encode() == data
    refused(NOT_ENOUGH_DATA, parse_payload, 0x6B, 0x4D, data[:-1])
    # Bytes after the declared elements are ignored, as by a Logix controller, and not re-encoded.
    longer = parse_payload(0x6B, 0x4D, data + b"\x00\x01")
    assert isinstance(longer, WriteTag) and longer.values == values and longer.encode() == data


def test_bool_values_read_as_zero_or_one_and_floats_as_they_are() -> None:
    assert decode_values(DataType.BOOL, b"\xff\x00\x01") == (1, 0, 1)
    nan = decode_values(DataType.REAL, struct.pack("<f", math.nan))
    assert nan is not None and math.isnan(nan[0])
    assert decode_values(DataType.DINT, b"\x00\x00\x00") is None
    assert decode_values(DataType.STRING, b"abc") is None


def test_structures_and_strings_stay_opaque() -> None:
    # A Logix STRING is a structure: A0 02, the structure handle, count, then its bytes.
    data = bytes.fromhex("a002ce0f0100") + struct.pack("<I", 5) + b"hello" + bytes(77)
    payload = parse_payload(0x6B, 0x4D, data)
    assert isinstance(payload, WriteTag)
    assert (payload.data_type, payload.structure_handle, payload.values) == (0x02A0, 0x0FCE, None)
    assert payload.encode() == data
    refused(NOT_ENOUGH_DATA, parse_payload, 0x6B, 0x4D, bytes.fromhex("a002ce"))
    reply = ReadTagReply(0x02A0, b"xyz", 0x0FCE)
    assert parse_read_tag_reply(reply.encode()) == reply


@pytest.mark.parametrize(
    ("service", "hex_data", "status"),
    [
        (0x4C, "", NOT_ENOUGH_DATA),
        (0x4C, "010000", TOO_MUCH_DATA),
        (0x52, "0100000000", NOT_ENOUGH_DATA),
        (0x4D, "c4", NOT_ENOUGH_DATA),
        (0x4D, "c400", NOT_ENOUGH_DATA),
        (0x4D, "c4000000", INVALID_PARAMETER_VALUE),  # no elements
        (0x53, "c4000100", NOT_ENOUGH_DATA),
        (0x4E, "04", NOT_ENOUGH_DATA),
        (0x4E, "0300000000ffffff", INVALID_PARAMETER_VALUE),  # mask size 3
        (0x55, "0000", INVALID_PARAMETER_VALUE),
        (0x55, "02000100", NOT_ENOUGH_DATA),
    ],
)
def test_tag_service_refusals(service: int, hex_data: str, status: int) -> None:
    error = refused(status, parse_payload, 0x6B, service, bytes.fromhex(hex_data))
    assert error.service == service


def test_common_services_keep_their_data() -> None:
    assert parse_payload(0x01, 0x01, b"\x00\x00") == NoData()  # pycomm3's stray route bytes: not forwarded
    assert parse_payload(0x01, 0x0E, b"") == NoData()
    assert parse_payload(0x01, 0x05, b"\x01") == Opaque(b"\x01")
    assert parse_payload(0xF5, 0x10, b"\x01\x02") == Opaque(b"\x01\x02", writes=True)
    assert parse_payload(0x8B, 0x03, b"\x01\x00\x0b\x00") == AttributeList((11,))
    assert parse_payload(0x8B, 0x03, b"\x01\x00\x0b\x00\x00\x00") == AttributeList((11,))
    refused(NOT_ENOUGH_DATA, parse_payload, 0x8B, 0x03, b"\x02\x00\x0b\x00\x00")


# One well-formed request of each service whose trailing bytes the codec decides on (class, service, data).
_WELL_FORMED = [
    (0x8B, 0x03, b"\x01\x00\x06\x00"),
    (0x01, 0x01, b""),
    (0x01, 0x0E, b""),
    (0x6B, 0x4D, struct.pack("<HHi", 0xC4, 1, 7)),
    (0x6B, 0x4E, b"\x01\x00\x01\xfe"),
    (0x6B, 0x4C, b"\x01\x00"),
    (0x6B, 0x52, b"\x01\x00\x00\x00\x00\x00"),
    (0x6B, 0x53, struct.pack("<HHIi", 0xC4, 1, 0, 7)),
    (0x6B, 0x55, b"\x01\x00\x01\x00"),
]


@pytest.mark.parametrize(("class_id", "service", "data"), _WELL_FORMED)
def test_trailing_bytes_are_ignored_exactly_where_the_table_says(
    class_id: int, service: int, data: bytes
) -> None:
    key = (class_id if class_id == 0x6B else None, service)
    payload = parse_payload(class_id, service, data)
    if key in TRAILING_BYTES_IGNORED:
        # Decided on what it declares, forwarded as the canonical encoding of that alone.
        assert parse_payload(class_id, service, data + b"\x00\x00") == payload
        assert payload.encode() == data
    else:
        with pytest.raises(CipProtocolError):  # 0x15, or 0x03 when the bytes break a fragment's elements
            parse_payload(class_id, service, data + b"\x00\x00")


def test_the_trailing_bytes_table_names_only_tested_services() -> None:
    tested = {(c if c == 0x6B else None, s) for c, s, _ in _WELL_FORMED}
    assert tested >= TRAILING_BYTES_IGNORED
    # Class-specific codes on a class the codec does not know stay opaque: 0x4D on the File object.
    assert parse_payload(0x37, 0x4D, b"\x01") == Opaque(b"\x01")


@settings(max_examples=200, deadline=None)
@given(leaf_requests())
def test_leaf_requests_round_trip(request: MessageRouterRequest) -> None:
    assert parse_request(request.encode()) == request
    class_id = 0x6B if request.path.symbolic else request.path.class_id
    payload = parse_payload(class_id, request.service, request.data)
    assert payload.encode() == request.data


# --------------------------------------------------------------------------------------- name table


@pytest.mark.parametrize(
    ("class_id", "service", "name"),
    [
        (0x6B, 0x4C, "read_tag"),
        (0x37, 0x4C, "initiate_download"),
        (0x6C, 0x4C, "read_template"),
        (0x6B, 0x4E, "read_modify_write"),
        (0x06, 0x4E, "forward_close"),
        (0x37, 0x4E, "initiate_partial_write"),
        (0x6B, 0x52, "read_tag_fragmented"),
        (0x06, 0x52, "unconnected_send"),
        (0x06, 0x54, "forward_open"),
        (0x06, 0x5B, "large_forward_open"),
        (0x6B, 0x53, "write_tag_fragmented"),
        (0x6B, 0x55, "get_instance_attribute_list"),
        (0x67, 0x4B, "execute_pccc"),
        (0x01, 0x05, "reset"),
        (0xF5, 0x10, "set_attribute_single"),
        (0x99, 0x0E, "get_attribute_single"),
        (None, 0x0E, "get_attribute_single"),
        (0x02, 0x0A, "multiple_service_packet"),
        (0x99, 0x4C, None),
        (None, 0x4C, None),
        (0x01, 0x4C, None),
        (0x6B, 0x54, None),
        (0x01, 0x30, None),
    ],
)
def test_service_names_depend_on_the_class(class_id: int | None, service: int, name: str | None) -> None:
    assert service_name(class_id, service) == name


def test_numbers_agree_with_pycomm3() -> None:
    from pycomm3.cip import data_types, object_library, services, status_info

    def code(value: bytes) -> int:
        return int.from_bytes(value, "little")

    for command in spec.EncapsulationCommand:
        assert code(getattr(services.EncapsulationCommands, command.name.lower())) == command
    for name, number in (
        ("forward_close", spec.Service.FORWARD_CLOSE),
        ("unconnected_send", spec.Service.UNCONNECTED_SEND),
        ("forward_open", spec.Service.FORWARD_OPEN),
        ("large_forward_open", spec.Service.LARGE_FORWARD_OPEN),
        ("get_connection_owner", spec.Service.GET_CONNECTION_OWNER),
    ):
        assert code(getattr(services.ConnectionManagerServices, name)) == number
        assert spec.CLASS_SERVICE_NAMES[0x06, number] == name
    for name, number in (
        ("read_tag", spec.Service.READ_TAG),
        ("write_tag", spec.Service.WRITE_TAG),
        ("read_modify_write", spec.Service.READ_MODIFY_WRITE_TAG),
        ("read_tag_fragmented", spec.Service.READ_TAG_FRAGMENTED),
        ("write_tag_fragmented", spec.Service.WRITE_TAG_FRAGMENTED),
        ("get_instance_attribute_list", spec.Service.GET_INSTANCE_ATTRIBUTE_LIST),
        ("multiple_service_request", spec.Service.MULTIPLE_SERVICE_PACKET),
        ("get_attribute_single", spec.Service.GET_ATTRIBUTE_SINGLE),
        ("set_attribute_single", spec.Service.SET_ATTRIBUTE_SINGLE),
        ("get_attributes_all", spec.Service.GET_ATTRIBUTES_ALL),
        ("reset", spec.Service.RESET),
    ):
        assert code(getattr(services.Services, name)) == number
    for common in range(0x01, 0x1D):
        ours = spec.COMMON_SERVICE_NAMES.get(common)
        theirs = services.Services.get(bytes((common,)))
        assert (ours is None) == (theirs is None) or common == 0x14  # 0x14 is an error reply's code
    for name, number in (
        ("identity_object", spec.ClassCode.IDENTITY),
        ("message_router", spec.ClassCode.MESSAGE_ROUTER),
        ("connection_manager", spec.ClassCode.CONNECTION_MANAGER),
        ("file_object", spec.ClassCode.FILE),
        ("symbol_object", spec.ClassCode.SYMBOL),
        ("template_object", spec.ClassCode.TEMPLATE),
        ("program_name", spec.ClassCode.PROGRAM_NAME),
        ("wall_clock_time", spec.ClassCode.WALL_CLOCK_TIME),
        ("tcp_ip_interface", spec.ClassCode.TCP_IP_INTERFACE),
        ("ethernet_link", spec.ClassCode.ETHERNET_LINK),
    ):
        assert code(getattr(object_library.ClassCode, name)) == number
    for data_type in spec.DataType:
        if data_type.name in (
            "BOOL",
            "SINT",
            "INT",
            "DINT",
            "LINT",
            "USINT",
            "UINT",
            "UDINT",
            "ULINT",
            "REAL",
        ):
            assert getattr(data_types, data_type.name).code == data_type
    assert set(status_info.STATUS) == {status.value for status in spec.EncapsulationStatus}


def test_generated_data_types_cover_every_atomic_type() -> None:
    assert set(spec.ATOMIC_TYPES) == {
        DataType.BOOL,
        DataType.SINT,
        DataType.INT,
        DataType.DINT,
        DataType.LINT,
        DataType.USINT,
        DataType.UINT,
        DataType.UDINT,
        DataType.ULINT,
        DataType.REAL,
        DataType.LREAL,
        DataType.BYTE,
        DataType.WORD,
        DataType.DWORD,
        DataType.LWORD,
    }


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(spec.ATOMIC_TYPES)), st.binary(max_size=24))
def test_decode_values_never_fails(data_type: int, data: bytes) -> None:
    values = decode_values(data_type, data)
    size = spec.ATOMIC_TYPES[data_type].size
    assert (values is None) == bool(len(data) % size)


def test_read_modify_write_masks_longer_than_their_size_are_cut() -> None:
    # pycomm3 1.2.16 sends an 8-byte AND mask for a 4-byte mask size; a controller reads 4 of them.
    payload = parse_payload(0x6B, 0x4E, bytes.fromhex("040008000000ffffffffffffffff"))
    assert isinstance(payload, ReadModifyWrite)
    assert (payload.mask_size, payload.or_mask, payload.and_mask) == (4, 8, 0xFFFFFFFF)
    assert payload.encode() == bytes.fromhex("040008000000ffffffff")
