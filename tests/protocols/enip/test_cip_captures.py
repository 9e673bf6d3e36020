"""The codec against what real peers put on the wire: cpppo's simulator driven by pycomm3 and pylogix
(frames in ``cip_captures.py``; how they were recorded is in ``cip_capture.py``).

Every captured frame parses and re-encodes to the same bytes, layer by layer; the requests flatten to
what the client asked for; and the two pycomm3 bugs the captures show are refused with the general status
a Logix controller would give.
"""

from __future__ import annotations

import pytest

from protocols.enip import (
    EncapsulationConnection,
    ForwardClose,
    ForwardOpen,
    IdentityItem,
    PortSegment,
    ReadModifyWrite,
    ReadTag,
    connected_message,
    flatten,
    join_replies,
    parse_cpf,
    parse_forward_close_reply,
    parse_forward_open_reply,
    parse_read_tag_reply,
    parse_register_session,
    parse_request,
    parse_response,
    parse_send_data,
    rebuild,
    split_multiple_service_reply,
    unconnected_message,
)
from tests.protocols.enip.cip_captures import CAPTURES
from tests.protocols.enip.cip_samples import captured_frames, message_of

# Requests the captured clients sent that the codec refuses, by (scenario, index of the request frame).
# Requests with bytes after their declared fields, which Logix controllers ignore: decided on what they
# declare, forwarded only in their canonical encoding (the trailing bytes cut off).
NON_CANONICAL = {
    # pycomm3 1.2.16 builds a single-tag Write Tag twice into one connected data item.
    ("pycomm3_single_write", 10): (0x4D, 18),
    # pycomm3 1.2.16 slices the AND mask by the mask's value instead of its size: 8 bytes for a DINT.
    ("pycomm3_bit_write", 10): (0x4E, 4),
    # pycomm3 1.2.16's generic messages over UCMM append their (empty) route path to Get_Attributes_All.
    ("pycomm3_generic", 2): (0x01, 2),
}


def all_frames() -> list[tuple[str, int, str, bytes]]:
    out = []
    for name, frames in CAPTURES.items():
        for index, (direction, hex_frame) in enumerate(frames):
            out.append((name, index, direction, bytes.fromhex(hex_frame)))
    return out


def request(scenario: str, index: int) -> bytes:
    direction, hex_frame = CAPTURES[scenario][index]
    assert direction == "request"
    return message_of(bytes.fromhex(hex_frame))


def reply(scenario: str, index: int) -> bytes:
    direction, hex_frame = CAPTURES[scenario][index]
    assert direction == "reply"
    return message_of(bytes.fromhex(hex_frame))


@pytest.mark.parametrize(("scenario", "index", "direction", "data"), all_frames())
def test_every_captured_frame_parses_and_reencodes(
    scenario: str, index: int, direction: str, data: bytes
) -> None:
    connection = EncapsulationConnection()
    connection.receive_data(data)
    message = connection.next_message()
    assert message is not None and connection.next_message() is None
    assert message.encode() == data
    if message.command not in (0x6F, 0x70) or not message.data:
        return
    send = parse_send_data(message)
    assert send.encode() == message.data
    raw = (
        unconnected_message(message, send) if message.command == 0x6F else connected_message(message, send)[2]
    )
    if direction == "reply":
        assert parse_response(raw).encode() == raw
        return
    parsed = parse_request(raw)
    assert parsed.encode() == raw
    if (scenario, index) in NON_CANONICAL:
        service, extra = NON_CANONICAL[scenario, index]
        (leaf,) = flatten(parsed)
        assert leaf.service == service and leaf.error is None
        forwarded = rebuild(parsed, [None])
        assert forwarded is not None and forwarded.path == parsed.path
        assert parsed.data.startswith(forwarded.data) and len(parsed.data) - len(forwarded.data) == extra
        return
    leaves = flatten(parsed)
    assert leaves and all(leaf.error is None for leaf in leaves)
    assert rebuild(parsed, [None] * len(leaves)) == parsed


def test_every_scenario_was_captured_with_replies() -> None:
    counts = {name: sum(direction == "reply" for direction, _ in frames) for name, frames in CAPTURES.items()}
    assert all(count >= 2 for count in counts.values()), counts


# ------------------------------------------------------------------------------------------- pycomm3


def test_pycomm3_session_and_list_identity() -> None:
    frames = [data for _, _, data in captured_frames("pycomm3_logix")]
    connection = EncapsulationConnection()
    connection.receive_data(frames[0])
    register = connection.next_message()
    assert register is not None and register.sender_context == b"_pycomm_"
    assert parse_register_session(register) == 1
    connection.receive_data(frames[3])
    identity_reply = connection.next_message()
    assert identity_reply is not None and identity_reply.command == 0x63
    (identity,) = parse_cpf(identity_reply.data)
    assert identity == IdentityItem(
        vendor_id=1,
        device_type=0x0E,
        product_code=0x36,
        revision_major=20,
        revision_minor=11,
        status=0x3160,
        serial_number=identity.serial_number,
        product_name="1756-L61/B LOGIX5561",
        state=0xFF,
        sin_port=44818,
    )


def test_pycomm3_logix_driver_routes_identity_through_unconnected_send() -> None:
    (leaf,) = flatten(parse_request(request("pycomm3_logix", 4)))
    assert (leaf.name, leaf.class_id, leaf.instance_id, leaf.depth) == ("get_attributes_all", 1, 1, 1)
    assert leaf.route == (PortSegment(1, b"\x00"),) and str(leaf.route[0]) == "1/0"
    assert parse_response(reply("pycomm3_logix", 5)).service == 0x81


def test_pycomm3_opens_a_large_forward_open_of_4000_bytes() -> None:
    (leaf,) = flatten(parse_request(request("pycomm3_logix", 6)))
    assert leaf.name == "large_forward_open"
    open_ = leaf.payload
    assert isinstance(open_, ForwardOpen) and open_.large
    assert (open_.o_t.size, open_.t_o.size) == (4000, 4000)
    assert (open_.o_t.connection_type, open_.o_t.variable, open_.o_t.priority) == (2, True, 0)
    assert open_.transport_class_trigger == 0xA3 and open_.transport_class == 3
    assert open_.connection_path.encode().hex() == "010020022401"
    assert (open_.originator_vendor_id, open_.connection_serial) == (0x1009, 0x0427)
    answer = parse_response(reply("pycomm3_logix", 7))
    opened = parse_forward_open_reply(answer.data)
    assert opened.encode() == answer.data
    assert (opened.connection_serial, opened.originator_serial) == (
        open_.connection_serial,
        open_.originator_serial,
    )
    assert opened.t_o_connection_id == open_.t_o_connection_id


def test_pycomm3_multi_tag_read_is_a_multiple_service_packet_over_the_connection() -> None:
    parsed = parse_request(request("pycomm3_logix", 14))
    leaves = flatten(parsed)
    assert [(leaf.name, leaf.tag, leaf.element_count, leaf.position) for leaf in leaves] == [
        ("read_tag", "Temp", 1, (0,)),
        ("read_tag", "SCADA[1]", 1, (1,)),
        ("read_tag", "Count", 1, (2,)),
    ]
    device_reply = parse_response(reply("pycomm3_logix", 15))
    replies = [parse_response(part) for part in split_multiple_service_reply(device_reply.data)]
    assert [parse_read_tag_reply(r.data).data_type for r in replies] == [0xCA, 0xC3, 0xC4]
    # Everything allowed: the client gets the device's reply, byte for byte.
    assert join_replies(parsed, [None] * 3, device_reply) == device_reply


def test_pycomm3_multi_tag_writes_carry_checkable_values() -> None:
    leaves = flatten(parse_request(request("pycomm3_logix", 18)))
    assert [(leaf.tag, leaf.data_type, leaf.values) for leaf in leaves] == [
        ("Big", 0xC5, (-(2**40),)),
        ("Ratio", 0xCB, (0.125,)),
        ("Small", 0xC2, (-3,)),
        ("Words[2]", 0xC8, (4000000000,)),
    ]
    assert all(leaf.writes and not leaf.opaque_values for leaf in leaves)


def test_pycomm3_reads_long_arrays_with_read_tag_fragmented() -> None:
    offsets = []
    for index in (10, 12, 14):
        (leaf,) = flatten(parse_request(request("pycomm3_small_connection", index)))
        assert (leaf.name, leaf.tag, leaf.element_count) == ("read_tag_fragmented", "Log", 300)
        assert isinstance(leaf.payload, ReadTag)
        offsets.append(leaf.byte_offset)
    assert offsets == [0, 488, 976]
    statuses = [parse_response(reply("pycomm3_small_connection", i)).general_status for i in (11, 13, 15)]
    assert statuses == [0x06, 0x06, 0x00]  # partial transfer until the last fragment


def test_pycomm3_generic_message_appends_an_empty_route_to_plain_requests() -> None:
    # generic_message(connected=False) adds its (empty) route path to the request data: 00 00. Devices
    # ignore it, and Get_Attributes_All takes no data: it is not forwarded.
    parsed = parse_request(request("pycomm3_generic", 2))
    assert parsed.data == b"\x00\x00"
    (leaf,) = flatten(parsed)
    assert (leaf.name, leaf.class_id, leaf.instance_id) == ("get_attributes_all", 1, 1)
    assert leaf.request is not None and leaf.request.data == b""
    (reset,) = flatten(parse_request(request("pycomm3_generic", 10)))
    assert (reset.name, reset.class_id, reset.service) == ("reset", 1, 0x05)


def test_pycomm3_generic_message_unconnected_send_and_connected() -> None:
    (routed,) = flatten(parse_request(request("pycomm3_generic", 4)))
    assert (routed.name, routed.class_id, routed.attribute_id, routed.depth) == (
        "get_attribute_single",
        1,
        7,
        1,
    )
    assert routed.route == (PortSegment(1, b"\x00"),)
    (tcp_ip,) = flatten(parse_request(request("pycomm3_generic", 8)))
    assert (tcp_ip.name, tcp_ip.class_id, tcp_ip.attribute_id) == ("get_attribute_single", 0xF5, 5)
    (close,) = flatten(parse_request(request("pycomm3_generic", 12)))
    assert close.name == "forward_close" and isinstance(close.payload, ForwardClose)
    assert close.payload.connection_path.encode().hex() == "20022401"


def test_forward_close_reply_from_cpppo() -> None:
    closed = parse_forward_close_reply(parse_response(reply("pycomm3_logix", 23)).data)
    assert (closed.connection_serial, closed.originator_vendor_id) == (0x0427, 0x1009)


# -------------------------------------------------------------------------------------------- pylogix


def test_pylogix_single_writes_and_arrays() -> None:
    (write,) = flatten(parse_request(request("pylogix", 6)))
    assert (write.name, write.tag, write.data_type, write.values) == ("write_tag", "Temp", 0xCA, (3.5,))
    (array,) = flatten(parse_request(request("pylogix", 22)))
    assert (array.tag, array.tag_index, array.element_count, array.values) == (
        "SCADA[10]",
        (10,),
        3,
        (1, 2, 3),
    )


def test_pylogix_bit_write_is_read_modify_write_with_opaque_values() -> None:
    (leaf,) = flatten(parse_request(request("pylogix_bit_write", 6)))
    assert (leaf.name, leaf.tag, leaf.writes, leaf.opaque_values) == (
        "read_modify_write",
        "Count",
        True,
        True,
    )
    assert leaf.payload == ReadModifyWrite(4, 0x8, 0xFFFFFFFF)


def test_pylogix_tag_list_and_plc_time() -> None:
    (tags,) = flatten(parse_request(request("pylogix_tag_list", 4)))
    assert (tags.name, tags.class_id, tags.instance_id, tags.attribute_ids) == (
        "get_instance_attribute_list",
        0x6B,
        0,
        (1, 2, 8),
    )
    (clock,) = flatten(parse_request(request("pylogix", 24)))
    assert (clock.name, clock.class_id, clock.attribute_ids) == ("get_attribute_list", 0x8B, (11,))


def test_pylogix_standard_forward_open_with_a_small_connection() -> None:
    (leaf,) = flatten(parse_request(request("pylogix_fragmented", 2)))
    assert leaf.name == "forward_open"
    assert isinstance(leaf.payload, ForwardOpen) and not leaf.payload.large
    assert leaf.payload.o_t.size == 504 and leaf.payload.o_t.connection_type == 2
    assert parse_response(reply("pylogix_fragmented", 3)).service == 0xD4


def test_cpppo_closes_with_encapsulation_status_8_on_what_it_does_not_know() -> None:
    statuses = {
        name: [
            int.from_bytes(data[8:12], "little")
            for _, direction, data in captured_frames(name)
            if direction == "reply"
        ]
        for name in ("pycomm3_single_write", "pylogix_tag_list", "pylogix_bit_write")
    }
    assert all(8 in found for found in statuses.values()), statuses
