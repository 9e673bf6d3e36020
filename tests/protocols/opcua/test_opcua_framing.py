"""The connection fed by hand: message order, Hello negotiation, the secure channel and its tokens, chunk
limits, sequence numbers, service decoding, and what goes out. Every refusal is checked for its exact
status code, and for the Error message a client would get."""

from __future__ import annotations

import struct

import pytest
from asyncua import ua
from asyncua.ua.ua_binary import struct_to_binary

from protocols.opcua import (
    CloseChannel,
    ConnectionState,
    Hello,
    OpcUaProtocolError,
    OpcUaServerConnection,
    OpenChannel,
    RejectedRequest,
    ServiceRequest,
    TransportLimits,
)
from protocols.opcua.chunks import MessageAssembler, next_sequence_number, sequence_number_follows
from protocols.opcua.messages import patch_request_handle
from protocols.opcua.services import SERVICES_BY_NAME
from tests.protocols.opcua.opcua_canned_server import NONE_POLICY, VALUE_NODES, hello, open_request, opn
from tests.protocols.opcua.opcua_peer import (
    CHANNEL,
    NOW,
    Peer,
    decode_error,
    decode_response,
    drain,
    feed,
    split_chunks,
)

S = ua.StatusCodes


def refused(conn: OpcUaServerConnection, data: bytes, status: int, now: float = NOW) -> OpcUaProtocolError:
    """Feeding ``data`` ends in ``status``; the error repeats and the ERR message carries it."""
    conn.receive_data(data)
    with pytest.raises(OpcUaProtocolError) as caught:
        drain(conn, now)
    error = caught.value
    assert error.status == status, (hex(error.status), error.reason)
    assert error.close
    assert conn.state is ConnectionState.FAILED
    with pytest.raises(OpcUaProtocolError) as again:
        conn.next_event(now)
    assert again.value is error
    assert decode_error(conn.send_error(error.status, error.reason)) == (status, error.reason)
    return error


def opened() -> Peer:
    peer = Peer()
    events = peer.handshake()
    assert [type(event) for event in events] == [Hello, OpenChannel]
    return peer


# ------------------------------------------------------------------------------------ the handshake


def test_handshake_events_and_replies() -> None:
    peer = Peer()
    hello_event, open_event = peer.handshake(lifetime_ms=600_000)
    assert isinstance(hello_event, Hello) and isinstance(open_event, OpenChannel)
    assert hello_event.endpoint_url == "opc.tcp://x"
    assert hello_event.reply[:4] == b"ACKF"
    ack = struct.unpack_from("<IIIII", hello_event.reply, 8)
    assert ack == (0, 65536, 65536, 16 * 1024 * 1024, 256)
    assert open_event.reply[:4] == b"OPNF"
    assert struct.unpack_from("<I", open_event.reply, 8)[0] == CHANNEL
    assert (open_event.channel_id, open_event.token_id, open_event.revised_lifetime_ms) == (
        CHANNEL,
        1,
        600_000,
    )
    assert peer.conn.state is ConnectionState.OPEN
    assert peer.conn.channel_expires_at == NOW + 600


def test_open_response_decodes_with_asyncua() -> None:
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import struct_from_binary

    peer = Peer()
    _hello, open_event = peer.handshake(handle=4242)
    assert isinstance(open_event, OpenChannel)
    data = Buffer(open_event.reply, 12)
    header = struct_from_binary(ua.AsymmetricAlgorithmHeader, data)
    assert header.SecurityPolicyURI == NONE_POLICY
    assert header.SenderCertificate is None and header.ReceiverCertificateThumbPrint is None
    sequence, request_id = struct.unpack("<II", data.read(8))
    assert (sequence, request_id) == (1, 1)
    response = struct_from_binary(ua.OpenSecureChannelResponse, data)
    assert response.ResponseHeader.RequestHandle == 4242
    token = response.Parameters.SecurityToken
    assert (token.ChannelId, token.TokenId, token.RevisedLifetime) == (CHANNEL, 1, 600_000)
    assert token.CreatedAt.timestamp() == NOW


def test_byte_at_a_time_and_coalesced_give_the_same_events() -> None:
    def stream(peer: Peer) -> bytes:
        return (
            peer.handshake_bytes()
            + peer.read_bytes(VALUE_NODES, request_id=2)
            + peer.read_bytes(VALUE_NODES[:3], request_id=3)
            + peer.close_bytes()
        )

    data = stream(Peer())
    whole, single = Peer(), Peer()
    coalesced = feed(whole.conn, data)
    byte_wise = []
    for index in range(len(data)):
        byte_wise.extend(feed(single.conn, data[index : index + 1]))
    # Reads that end inside a chunk, and reads that bring one chunk's end and the next one's start.
    ragged, at, step = Peer(), 0, 0
    ragged_events = []
    while at < len(data):
        size = (7, 130, 61, 300)[step % 4]
        ragged_events.extend(feed(ragged.conn, data[at : at + size]))
        at, step = at + size, step + 1
    assert [type(e) for e in ragged_events] == [type(e) for e in coalesced]
    assert [(e.request_id, e.request) for e in ragged_events if isinstance(e, ServiceRequest)] == [
        (e.request_id, e.request) for e in coalesced if isinstance(e, ServiceRequest)
    ]
    assert [type(event) for event in coalesced] == [
        Hello,
        OpenChannel,
        ServiceRequest,
        ServiceRequest,
        CloseChannel,
    ]
    assert [type(event) for event in byte_wise] == [type(event) for event in coalesced]
    for left, right in zip(coalesced, byte_wise, strict=True):
        if isinstance(left, ServiceRequest):
            assert isinstance(right, ServiceRequest)
            assert (left.request_id, left.request_handle, left.request) == (
                right.request_id,
                right.request_handle,
                right.request,
            )
    assert single.conn.state is ConnectionState.CLOSED
    assert single.conn.next_event(NOW) is None  # closed: nothing more, no error


def test_hello_negotiates_from_both_sides() -> None:
    conn = OpcUaServerConnection(CHANNEL, receive_buffer_size=32768, send_buffer_size=65536)
    (event,) = feed(conn, hello(receive=20000, send=50000, max_message=1_000_000, max_chunks=40))
    assert isinstance(event, Hello)
    assert event.client_limits == TransportLimits(20000, 50000, 1_000_000, 40)
    # Receive: min(ours, client's send) = 32768. Send: min(ours, client's receive, our receive) = 20000.
    assert event.acknowledged == TransportLimits(32768, 20000, 16 * 1024 * 1024, 256)
    assert conn.send_chunk_size == 20000
    assert (conn.max_response_size, conn.max_response_chunks) == (1_000_000, 40)
    # No limits in the Hello: our own still bound the responses.
    conn = OpcUaServerConnection(CHANNEL, max_message_size=100_000, max_chunk_count=8)
    feed(conn, hello(max_message=0, max_chunks=0))
    assert (conn.max_response_size, conn.max_response_chunks) == (100_000, 8)


def test_hello_buffer_sizes_below_8192_are_rejected() -> None:
    refused(OpcUaServerConnection(CHANNEL), hello(receive=8191), S.BadConnectionRejected)
    refused(OpcUaServerConnection(CHANNEL), hello(send=1024), S.BadConnectionRejected)


def test_hello_with_extra_bytes_or_bad_fields_is_a_decoding_error() -> None:
    data = hello()
    padded = data[:4] + struct.pack("<I", len(data) + 1) + data[8:] + b"\x00"
    refused(OpcUaServerConnection(CHANNEL), padded, S.BadDecodingError)
    short = data[:4] + struct.pack("<I", 20) + data[8:20]
    refused(OpcUaServerConnection(CHANNEL), short, S.BadDecodingError)


def test_nothing_larger_than_a_hello_is_buffered_before_it() -> None:
    conn = OpcUaServerConnection(CHANNEL)
    refused(conn, b"HELF" + struct.pack("<I", 4129), S.BadTcpMessageTooLarge)
    assert conn.buffered_bytes == 0


@pytest.mark.parametrize(
    ("first", "status"),
    [
        (b"MSGF" + struct.pack("<I", 24), S.BadTcpMessageTypeInvalid),
        (b"OPNF" + struct.pack("<I", 100), S.BadTcpMessageTypeInvalid),
        (b"CLOF" + struct.pack("<I", 24), S.BadTcpMessageTypeInvalid),
        (b"ACKF" + struct.pack("<I", 28), S.BadTcpMessageTypeInvalid),
        (b"ERRF" + struct.pack("<I", 16), S.BadTcpMessageTypeInvalid),
        (b"RHEF" + struct.pack("<I", 16), S.BadTcpMessageTypeInvalid),
        (b"GET / HTTP/1.1\r\n", S.BadTcpMessageTypeInvalid),
        (b"XYZ", S.BadTcpMessageTypeInvalid),  # refused after three bytes, not eight
        (b"HELC" + struct.pack("<I", 32), S.BadTcpMessageTypeInvalid),
        (b"HELF" + struct.pack("<I", 4), S.BadDecodingError),
    ],
)
def test_anything_but_a_hello_first_is_refused(first: bytes, status: int) -> None:
    refused(OpcUaServerConnection(CHANNEL), first, status)


def test_after_hello_only_secure_channel_messages() -> None:
    for message in (hello(), b"ACKF" + struct.pack("<I", 28), b"ERRF" + struct.pack("<I", 16)):
        conn = OpcUaServerConnection(CHANNEL)
        feed(conn, hello())
        refused(conn, message, S.BadTcpMessageTypeInvalid)


@pytest.mark.parametrize("message_type", [b"MSG", b"CLO"])
def test_messages_before_the_channel_is_open(message_type: bytes) -> None:
    peer = Peer()
    feed(peer.conn, peer.hello_bytes())
    data = peer.msg_bytes(b"", 1, message_type=message_type, channel_id=0, token_id=0)
    refused(peer.conn, data, S.BadTcpSecureChannelUnknown)


def test_hello_after_the_channel_is_open() -> None:
    peer = opened()
    refused(peer.conn, hello(), S.BadTcpMessageTypeInvalid)


# -------------------------------------------------------------------------------- the secure channel


def test_only_policy_none_and_mode_none() -> None:
    basic256 = "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"
    for data, status in (
        (opn(open_request(), policy=basic256), S.BadSecurityPolicyRejected),
        (opn(open_request(mode=ua.MessageSecurityMode.Sign)), S.BadSecurityModeRejected),
        (opn(open_request(mode=ua.MessageSecurityMode.SignAndEncrypt)), S.BadSecurityModeRejected),
        (opn(open_request(mode=ua.MessageSecurityMode.Invalid)), S.BadSecurityModeRejected),
    ):
        conn = OpcUaServerConnection(CHANNEL)
        feed(conn, hello())
        refused(conn, data, status)


def test_issue_and_renew_in_the_wrong_state() -> None:
    conn = OpcUaServerConnection(CHANNEL)
    feed(conn, hello())
    refused(conn, opn(open_request(renew=True), channel_id=CHANNEL), S.BadRequestTypeInvalid)
    peer = opened()
    refused(peer.conn, peer.open_bytes(), S.BadRequestTypeInvalid)  # a second Issue
    conn = OpcUaServerConnection(CHANNEL)
    feed(conn, hello())
    refused(conn, opn(open_request(), channel_id=7), S.BadTcpSecureChannelUnknown)
    peer = opened()
    renew_elsewhere = opn(open_request(renew=True), channel_id=CHANNEL + 1, sequence=peer.next_sequence())
    refused(peer.conn, renew_elsewhere, S.BadSecureChannelIdInvalid)


def test_open_must_be_one_chunk_and_an_open_request() -> None:
    conn = OpcUaServerConnection(CHANNEL)
    feed(conn, hello())
    refused(conn, opn(open_request(), chunk_type=b"C"), S.BadTcpMessageTypeInvalid)
    conn = OpcUaServerConnection(CHANNEL)
    feed(conn, hello())
    close_request = struct_to_binary(ua.CloseSecureChannelRequest())
    refused(conn, opn(close_request), S.BadDecodingError)
    conn = OpcUaServerConnection(CHANNEL)
    feed(conn, hello())
    refused(conn, opn(open_request() + b"\x00"), S.BadDecodingError)
    conn = OpcUaServerConnection(CHANNEL)
    feed(conn, hello())
    refused(conn, b"OPNF" + struct.pack("<II", 16, 0) + b"\xff\xff\xff\x7f", S.BadDecodingError)


@pytest.mark.parametrize(
    ("requested", "revised"), [(0, 3_600_000), (1, 10_000), (600_000, 600_000), (2**32 - 1, 3_600_000)]
)
def test_token_lifetimes_are_revised_into_bounds(requested: int, revised: int) -> None:
    peer = Peer()
    _hello, event = peer.handshake(lifetime_ms=requested)
    assert isinstance(event, OpenChannel) and event.revised_lifetime_ms == revised


def test_tokens_expire() -> None:
    peer = opened()  # 600 s lifetime from NOW
    assert feed(peer.conn, peer.read_bytes(VALUE_NODES, 2), NOW + 599.9)
    error = refused(peer.conn, peer.read_bytes(VALUE_NODES, 3), S.BadSecureChannelTokenUnknown, NOW + 600)
    assert "expired" in error.reason


def test_unknown_token_and_foreign_channel() -> None:
    peer = opened()
    refused(peer.conn, peer.msg_bytes(b"", 2, token_id=2), S.BadSecureChannelTokenUnknown)
    peer = opened()
    refused(peer.conn, peer.msg_bytes(b"", 2, channel_id=CHANNEL + 1), S.BadSecureChannelIdInvalid)


def test_renewal_keeps_the_old_token_until_the_new_one_is_used() -> None:
    peer = opened()
    (renewed,) = feed(peer.conn, peer.open_bytes(renew=True, request_id=5, lifetime_ms=900_000), NOW + 450)
    assert isinstance(renewed, OpenChannel) and renewed.renew
    assert (renewed.token_id, renewed.revised_lifetime_ms) == (2, 900_000)
    assert peer.conn.channel_expires_at == NOW + 450 + 900
    # The old token still works, and responses keep using it, until the client uses the new one.
    (event,) = feed(peer.conn, peer.read_bytes(VALUE_NODES, 6), NOW + 451)
    assert isinstance(event, ServiceRequest)
    reply = peer.conn.send_response(6, ua.ReadResponse(), request_handle=7)
    assert split_chunks(reply)[0].token_id == 1
    peer.token_id = 2
    (event,) = feed(peer.conn, peer.read_bytes(VALUE_NODES, 7), NOW + 452)
    assert split_chunks(peer.conn.send_response(7, ua.ReadResponse()))[0].token_id == 2
    # Now the old one is retired; the new one outlives the old one's lifetime.
    assert feed(peer.conn, peer.read_bytes(VALUE_NODES, 8), NOW + 1000)
    refused(peer.conn, peer.msg_bytes(b"", 9, token_id=1), S.BadSecureChannelTokenUnknown, NOW + 1001)


def test_renewal_after_the_channel_expired_is_refused() -> None:
    peer = opened()
    refused(peer.conn, peer.open_bytes(renew=True), S.BadSecureChannelTokenUnknown, NOW + 601)


def test_close_secure_channel() -> None:
    peer = opened()
    (event,) = feed(peer.conn, peer.close_bytes(request_id=42))
    assert event == CloseChannel(42)
    assert peer.conn.state is ConnectionState.CLOSED
    assert feed(peer.conn, peer.read_bytes(VALUE_NODES, 43)) == []
    with pytest.raises(OpcUaProtocolError) as caught:
        peer.conn.send_response(43, ua.ReadResponse())
    assert caught.value.status == S.BadSecureChannelClosed


# ------------------------------------------------------------------------------ sequence numbers


def test_sequence_numbers_must_follow_on() -> None:
    peer = opened()
    refused(peer.conn, peer.msg_bytes(b"", 2, sequence=peer.sequence + 2), S.BadSequenceNumberInvalid)
    peer = opened()
    refused(peer.conn, peer.msg_bytes(b"", 2, sequence=peer.sequence), S.BadSequenceNumberInvalid)


def test_sequence_numbers_wrap_as_part_6_allows() -> None:
    assert next_sequence_number(4_294_966_271) == 4_294_966_272
    assert next_sequence_number(4_294_966_272) == 1
    assert sequence_number_follows(4_294_966_272, 1)
    assert sequence_number_follows(4_294_966_272, 1023)
    assert sequence_number_follows(4_294_966_272, 4_294_966_273)
    assert not sequence_number_follows(4_294_966_272, 1024)
    assert not sequence_number_follows(4_294_966_271, 1)
    # A client that wraps: its OPN numbered just below the wrap, its next MSG after it.
    peer = Peer(sequence=4_294_966_271)
    peer.handshake()
    peer.sequence = 0
    (event,) = feed(peer.conn, peer.read_bytes(VALUE_NODES, 2))
    assert isinstance(event, ServiceRequest)


def test_outgoing_sequence_numbers_run_on_across_messages_and_chunks() -> None:
    peer = Peer(conn=OpcUaServerConnection(CHANNEL, receive_buffer_size=8192, send_buffer_size=8192))
    peer.handshake()  # the OPN response took number 1
    big = ua.ReadResponse(Results=[ua.DataValue(ua.Variant("y" * 30_000))])
    first = split_chunks(peer.conn.send_response(2, big))
    second = split_chunks(peer.conn.send_response(3, ua.ReadResponse()))
    numbers = [chunk.sequence_number for chunk in first + second]
    assert numbers == list(range(2, 2 + len(numbers)))
    assert [chunk.chunk_type for chunk in first] == [b"C"] * (len(first) - 1) + [b"F"]
    assert {chunk.request_id for chunk in first} == {2}
    assert all(len(chunk.body) + 24 <= 8192 for chunk in first)
    assert decode_response(peer.conn.send_response(4, big)).Results[0].Value.Value == "y" * 30_000


# ---------------------------------------------------------------------------------------- limits


def test_a_chunk_above_the_receive_buffer_is_refused_at_its_header() -> None:
    peer = Peer(conn=OpcUaServerConnection(CHANNEL, receive_buffer_size=8192))
    peer.handshake()
    header = b"MSGF" + struct.pack("<I", 8193)
    refused(peer.conn, header, S.BadTcpMessageTooLarge)


def test_message_size_and_chunk_count_limits() -> None:
    conn = OpcUaServerConnection(
        CHANNEL, receive_buffer_size=8192, max_message_size=20_000, max_chunk_count=100
    )
    peer = Peer(conn=conn)
    peer.handshake()
    big = peer.read_bytes([ua.NodeId("n" * 5000, 2)] * 4, 2)  # one chunk of ~20 KB: too large a chunk
    refused(peer.conn, big, S.BadTcpMessageTooLarge)
    conn = OpcUaServerConnection(
        CHANNEL, receive_buffer_size=8192, max_message_size=20_000, max_chunk_count=100
    )
    peer = Peer(conn=conn)
    peer.handshake()
    request = peer.request_bytes(ua_read(5000, 4), 2, chunk_size=8192)
    error = refused(peer.conn, request, S.BadRequestTooLarge)
    assert "20000 bytes" in error.reason
    conn = OpcUaServerConnection(CHANNEL, receive_buffer_size=8192, max_chunk_count=3)
    peer = Peer(conn=conn)
    peer.handshake()
    size = len(struct_to_binary(ua_read(100, 1)))
    ok = peer.request_bytes(ua_read(100, 1), 2, chunk_size=-(-size // 3) + 24)  # 3 chunks: fine
    assert [type(event) for event in feed(peer.conn, ok)] == [ServiceRequest]
    four = peer.request_bytes(ua_read(100, 1), 3, chunk_size=-(-size // 4) + 24)
    refused(peer.conn, four, S.BadRequestTooLarge)


def ua_read(name_length: int, count: int) -> ua.ReadRequest:
    from tests.protocols.opcua.opcua_canned_server import read_request

    return read_request([ua.NodeId("n" * name_length, 2)] * count)


def test_abort_discards_the_partial_message_and_the_channel_goes_on() -> None:
    peer = opened()
    whole = struct_to_binary(ua_read(10, 3))
    first = peer.msg_bytes(whole[:40], 2, chunk_type=b"C")
    abort = peer.msg_bytes(
        struct_to_binary(ua.ErrorMessage(ua.StatusCode(S.BadRequestTooLarge), "no")), 2, chunk_type=b"A"
    )
    assert feed(peer.conn, first + abort) == []
    (event,) = feed(peer.conn, peer.request_bytes(ua_read(10, 3), 3, chunk_size=64))
    assert isinstance(event, ServiceRequest) and event.request_id == 3
    # An abort with nothing pending is ignored too.
    assert feed(peer.conn, peer.msg_bytes(b"", 4, chunk_type=b"A")) == []


def test_interleaved_chunks_are_refused() -> None:
    peer = opened()
    data = peer.msg_bytes(b"abc", 2, chunk_type=b"C") + peer.msg_bytes(b"def", 3, chunk_type=b"F")
    refused(peer.conn, data, S.BadTcpMessageTypeInvalid)


def test_assembler_counts_every_chunk() -> None:
    assembler = MessageAssembler(max_message_size=10, max_chunk_count=2)
    assert assembler.add(b"C", 1, b"12345") is None
    assert assembler.add(b"F", 1, b"67890") == b"1234567890"
    assert assembler.add(b"F", 2, b"") == b""
    with pytest.raises(OpcUaProtocolError):
        assembler.add(b"F", 3, b"12345678901")


def test_short_secure_chunks_are_decoding_errors() -> None:
    peer = opened()
    refused(peer.conn, b"MSGF" + struct.pack("<III", 20, CHANNEL, 1) + b"\x00" * 8, S.BadDecodingError)


# --------------------------------------------------------------------------------------- services


def test_unknown_service_gets_a_fault_and_the_connection_stays() -> None:
    peer = opened()
    response_as_request = ua.ReadResponse()
    body = b"\x01\x00" + struct.pack("<H", 9999) + struct_to_binary(ua.RequestHeader(RequestHandle=31337))
    (event,) = feed(peer.conn, peer.msg_bytes(body, 2))
    assert isinstance(event, RejectedRequest)
    assert (event.status, event.request_handle, event.type_id) == (S.BadServiceUnsupported, 31337, 9999)
    fault = decode_response(event.reply)
    assert isinstance(fault, ua.ServiceFault)
    assert fault.ResponseHeader.RequestHandle == 31337
    assert fault.ResponseHeader.ServiceResult.value == S.BadServiceUnsupported
    assert split_chunks(event.reply)[0].request_id == 2
    # Requests in a MSG that belong to OPN/CLO, responses, ids outside ns 0: unsupported too.
    for body in (
        open_request(),
        struct_to_binary(ua.CloseSecureChannelRequest()),
        struct_to_binary(response_as_request),
        b"\x01\x02" + struct.pack("<H", 631) + struct_to_binary(ua.RequestHeader()),
        b"\x03\x00\x00\x03\x00\x00\x00abc",  # a string NodeId
    ):
        (event,) = feed(peer.conn, peer.msg_bytes(body, 3))
        assert isinstance(event, RejectedRequest) and event.status == S.BadServiceUnsupported
    (event,) = feed(peer.conn, peer.read_bytes(VALUE_NODES, 4))
    assert isinstance(event, ServiceRequest) and event.name == "Read"


def test_undecodable_request_gets_bad_decoding_error_with_its_handle() -> None:
    peer = opened()
    body = struct_to_binary(ua_read(5, 2))
    bad_token = body[:4] + b"\x07" + body[5:]  # NodeId encoding 7 does not exist: no header, handle 0
    bad_node = body[:-30] + b"\x3f" + body[-29:]  # the same inside the last ReadValueId: handle 7
    for broken, handle in (
        (body[:-3], 7),
        (body + b"\x00", 7),
        (bad_node, 7),
        (bad_token, 0),
        (b"\x01\x00", 0),
    ):
        (event,) = feed(peer.conn, peer.msg_bytes(broken, 2))
        assert isinstance(event, RejectedRequest), broken
        assert (event.status, event.request_handle) == (S.BadDecodingError, handle)
        fault = decode_response(event.reply)
        assert fault.ResponseHeader.ServiceResult.value == S.BadDecodingError
        assert fault.ResponseHeader.RequestHandle == handle
    (event,) = feed(peer.conn, peer.msg_bytes(body, 3))
    assert isinstance(event, ServiceRequest)


def test_service_request_carries_header_and_ids() -> None:
    peer = opened()
    (event,) = feed(peer.conn, peer.read_bytes(VALUE_NODES, 77, handle=1234))
    assert isinstance(event, ServiceRequest)
    assert (event.request_id, event.request_handle, event.name) == (77, 1234, "Read")
    assert event.service.service_set == "Attribute"
    assert event.header.TimeoutHint == 4000
    assert isinstance(event.request, ua.ReadRequest)


# ----------------------------------------------------------------------------------------- output


def test_responses_above_the_clients_limits_become_faults() -> None:
    peer = Peer()
    feed(peer.conn, hello(max_message=10_000, max_chunks=0) + peer.open_bytes())
    big = ua.ReadResponse(Results=[ua.DataValue(ua.Variant("z" * 10_000))])
    fault = decode_response(peer.conn.send_response(2, big, request_handle=55))
    assert isinstance(fault, ua.ServiceFault)
    assert (fault.ResponseHeader.ServiceResult.value, fault.ResponseHeader.RequestHandle) == (
        S.BadResponseTooLarge,
        55,
    )
    assert peer.conn.responses_too_large == 1
    peer = Peer()
    feed(peer.conn, hello(receive=8192, max_chunks=2) + peer.open_bytes())
    two_chunks = struct_to_binary(big)  # about 10 KB: two chunks of 8192
    relayed = decode_response(peer.conn.relay_response(2, two_chunks, 5))
    assert isinstance(relayed, ua.ReadResponse) and relayed.ResponseHeader.RequestHandle == 5
    three_chunks = struct_to_binary(ua.ReadResponse(Results=[ua.DataValue(ua.Variant("z" * 17_000))]))
    fault = decode_response(peer.conn.relay_response(3, three_chunks, 6))
    assert isinstance(fault, ua.ServiceFault)
    assert (fault.ResponseHeader.ServiceResult.value, fault.ResponseHeader.RequestHandle) == (
        S.BadResponseTooLarge,
        6,
    )
    assert peer.conn.responses_too_large == 1


def test_relaying_frames_the_common_response_in_one_step_as_the_general_way_does() -> None:
    """A one-chunk response of the request's own service, its type id in the short form servers send, is
    re-labelled and framed in one join; a ServiceFault, the long form of the type id and a body of
    several chunks take the general way. All carry the client's handle and the device's bytes."""
    read = SERVICES_BY_NAME["Read"]
    peer = opened()
    token_id = peer.conn.channel.current.token_id  # type: ignore[union-attr]
    response = ua.ReadResponse(Results=[ua.DataValue(ua.Variant(1.5 + i)) for i in range(10)])
    response.ResponseHeader.RequestHandle = 17
    body = struct_to_binary(response)
    assert body.startswith(read.response_prefix)
    fault = struct_to_binary(ua.ServiceFault())
    long_form = b"\x02" + struct.pack("<HI", 0, read.response_type_id) + body[4:]
    sequence = 2  # after the OPN response
    for request_id, relayed, handle in (
        (2, body, 5),
        (3, body, 0xFFFFFFFF),
        (4, fault, 6),
        (5, long_form, 7),
    ):
        data = peer.conn.relay_response(request_id, relayed, handle, service=read)
        (chunk,) = split_chunks(data)
        assert (chunk.chunk_type, chunk.channel_id, chunk.token_id) == (b"F", CHANNEL, token_id)
        assert (chunk.sequence_number, chunk.request_id) == (sequence, request_id)
        assert chunk.body == patch_request_handle(relayed, handle)
        sequence += 1
    # A response of another service, or one too short for its header, is refused either way.
    for wrong in (struct_to_binary(ua.WriteResponse()), body[:14]):
        with pytest.raises(OpcUaProtocolError) as caught:
            peer.conn.relay_response(6, wrong, 8, service=read)
        assert caught.value.status == S.BadUnknownResponse and not caught.value.close
    # Larger than one chunk: split as send_response would.
    peer = Peer()
    feed(peer.conn, hello(receive=8192) + peer.open_bytes())
    big = ua.ReadResponse(Results=[ua.DataValue(ua.Variant("z" * 10_000))])
    chunks = split_chunks(peer.conn.relay_response(2, struct_to_binary(big), 9, service=read))
    assert [c.chunk_type for c in chunks] == [b"C", b"F"]
    assert b"".join(c.body for c in chunks) == patch_request_handle(struct_to_binary(big), 9)


def test_service_fault_and_error_helpers() -> None:
    peer = opened()
    fault = decode_response(peer.conn.send_service_fault(9, 99, S.BadUserAccessDenied))
    assert (fault.ResponseHeader.RequestHandle, fault.ResponseHeader.ServiceResult.value) == (
        99,
        S.BadUserAccessDenied,
    )
    assert fault.ResponseHeader.Timestamp.timestamp() == NOW
    data = peer.conn.send_error(S.BadTcpServerTooBusy, "r" * 5000)
    status, reason = decode_error(data)
    assert status == S.BadTcpServerTooBusy and len(reason) == 4096
    assert peer.conn.state is ConnectionState.CLOSED


def test_a_response_object_asyncua_cannot_encode() -> None:
    peer = opened()
    broken = ua.ReadResponse(Results=[object()])  # type: ignore[list-item]
    with pytest.raises(OpcUaProtocolError) as caught:
        peer.conn.send_response(2, broken)
    assert caught.value.status == S.BadEncodingError and not caught.value.close
    assert peer.conn.state is ConnectionState.OPEN


def test_constructor_limits_are_checked() -> None:
    for kwargs in (
        {"receive_buffer_size": 8191},
        {"send_buffer_size": 2**31},
        {"max_message_size": 0},
        {"max_chunk_count": 0},
        {"min_token_lifetime_ms": 0},
        {"min_token_lifetime_ms": 10, "max_token_lifetime_ms": 5},
    ):
        with pytest.raises(ValueError):
            OpcUaServerConnection(CHANNEL, **kwargs)
    with pytest.raises(ValueError):
        OpcUaServerConnection(0)


def test_negative_lengths_are_decoding_errors_not_loops() -> None:
    """asyncua's Buffer takes read(-4) as a step back: a String of length -4 in a list re-reads itself as
    often as the count says (3,000,000 times: 8 s of CPU in plain asyncua). Refused at once here."""
    import time

    from protocols.opcua.binary import StrictBuffer

    request = ua.ActivateSessionRequest()
    request.Parameters.LocaleIds = ["MARK"]
    body = struct_to_binary(request)
    mark = struct.pack("<ii", 1, 4) + b"MARK"
    position = body.index(mark)
    evil = body[:position] + struct.pack("<ii", 3_000_000, -4) + body[position + len(mark) :]
    peer = opened()
    started = time.perf_counter()
    (event,) = feed(peer.conn, peer.msg_bytes(evil, 2))
    assert time.perf_counter() - started < 0.5
    assert isinstance(event, RejectedRequest) and event.status == S.BadDecodingError
    assert "negative length" in event.reason
    buffer = StrictBuffer(b"abcdef", 2)
    with pytest.raises(ValueError):
        buffer.read(-1)
    with pytest.raises(ValueError):
        buffer.skip(-2)
    copy = buffer.copy(3)
    assert isinstance(copy, StrictBuffer) and copy.read(3) == b"cde"
    assert buffer.copy().read(4) == b"cdef"


def test_an_array_of_null_variants_is_bounded_by_the_bytes_left() -> None:
    """Found by the fuzz campaign: a Null element takes no bytes, and asyncua sized the list by the count
    alone (2**31 - 1 made the gateway allocate 16 GiB). Held to the bound of every array now; the count
    here is smaller, so a regression costs this test 80 MB, not the machine."""
    write = ua.WriteRequest()
    write.Parameters.NodesToWrite = [
        ua.WriteValue(NodeId=ua.NodeId("x", 2), AttributeId=13, Value=ua.DataValue(ua.Variant(1.0)))
    ]
    body = struct_to_binary(write)
    double = b"\x0b" + struct.pack("<d", 1.0)  # the Variant: Double, then its 8 bytes
    peer = opened()
    evil = body.replace(double, b"\x80" + struct.pack("<i", 10_000_000))  # array of Null, count 10**7
    (event,) = feed(peer.conn, peer.msg_bytes(evil, 2))
    assert isinstance(event, RejectedRequest) and event.status == S.BadDecodingError
    assert "Null values" in event.reason
    fine = body.replace(double, b"\x80" + struct.pack("<i", 3))  # three Nulls: fewer than the bytes after
    (event,) = feed(peer.conn, peer.msg_bytes(fine, 3))
    assert isinstance(event, ServiceRequest)
    assert event.request.Parameters.NodesToWrite[0].Value.Value.Value == [None, None, None]


# --------------------------------------------------------------------------- reassembly accounting


def test_partial_message_bytes_and_start_are_counted_until_the_final_chunk() -> None:
    peer = opened()
    assert (peer.conn.partial_bytes, peer.conn.partial_since) == (0, None)
    whole = struct_to_binary(ua_read(10, 3))
    assert feed(peer.conn, peer.msg_bytes(whole[:40], 2, chunk_type=b"C"), NOW + 1) == []
    assert (peer.conn.partial_bytes, peer.conn.partial_since) == (40, NOW + 1)
    assert feed(peer.conn, peer.msg_bytes(whole[40:60], 2, chunk_type=b"C"), NOW + 2) == []
    assert (peer.conn.partial_bytes, peer.conn.partial_since) == (60, NOW + 1)  # since the first chunk
    (event,) = feed(peer.conn, peer.msg_bytes(whole[60:], 2, chunk_type=b"F"), NOW + 3)
    assert isinstance(event, ServiceRequest)
    assert (peer.conn.partial_bytes, peer.conn.partial_since) == (0, None)
    # An abort gives the bytes back as well, and the next partial message starts its own clock.
    assert feed(peer.conn, peer.msg_bytes(whole[:30], 3, chunk_type=b"C"), NOW + 4) == []
    assert peer.conn.partial_bytes == 30
    assert feed(peer.conn, peer.msg_bytes(b"", 3, chunk_type=b"A"), NOW + 5) == []
    assert (peer.conn.partial_bytes, peer.conn.partial_since) == (0, None)
    assert feed(peer.conn, peer.msg_bytes(whole[:10], 4, chunk_type=b"C"), NOW + 6) == []
    assert peer.conn.partial_since == NOW + 6


def test_an_intermediate_chunk_beyond_the_reassembly_room_is_not_enough_resources() -> None:
    peer = opened()
    peer.conn.reassembly_room = 100
    assert feed(peer.conn, peer.msg_bytes(b"x" * 60, 2, chunk_type=b"C")) == []
    assert peer.conn.partial_bytes == 60
    error = refused(peer.conn, peer.msg_bytes(b"y" * 41, 2, chunk_type=b"C"), S.BadTcpNotEnoughResources)
    assert "101 bytes" in error.reason and "100 bytes" in error.reason


def test_a_final_chunk_or_a_single_chunk_message_needs_no_room() -> None:
    # Room is for what waits for more chunks: a message completed by its chunk is handed out at once.
    peer = opened()
    peer.conn.reassembly_room = 0
    (event,) = feed(peer.conn, peer.read_bytes([ua.NodeId(1, 2)], 2))
    assert isinstance(event, ServiceRequest)
    peer.conn.reassembly_room = 50
    whole = struct_to_binary(ua_read(10, 3))
    assert len(whole) > 50
    assert feed(peer.conn, peer.msg_bytes(whole[:50], 3, chunk_type=b"C")) == []
    (event,) = feed(peer.conn, peer.msg_bytes(whole[50:], 3, chunk_type=b"F"))
    assert isinstance(event, ServiceRequest) and event.request_id == 3


def test_the_assembler_reports_what_it_holds() -> None:
    assembler = MessageAssembler(max_message_size=100, max_chunk_count=10)
    assert assembler.max_held_bytes == 100 and assembler.held_bytes == 0
    assembler.add(b"C", 1, b"12345")
    assembler.add(b"C", 1, b"678")
    assert assembler.held_bytes == 8
    assembler.max_held_bytes = 9
    with pytest.raises(OpcUaProtocolError) as caught:
        assembler.add(b"C", 1, b"90")
    assert caught.value.status == S.BadTcpNotEnoughResources
    assert assembler.held_bytes == 8  # the refused chunk was not kept


def test_a_chunk_not_fully_arrived_counts_and_must_fit_the_room() -> None:
    peer = opened()
    peer.conn.reassembly_room = 1000
    chunk = peer.msg_bytes(b"z" * 500, 2, chunk_type=b"C")
    assert feed(peer.conn, chunk[:100], NOW + 1) == []
    assert (peer.conn.partial_bytes, peer.conn.partial_since) == (100, NOW + 1)  # the reader's bytes
    assert feed(peer.conn, chunk[100:200], NOW + 2) == []
    assert peer.conn.partial_since == NOW + 1  # the same chunk, still coming
    assert feed(peer.conn, chunk[200:], NOW + 3) == []
    # Now the assembler's, from its first whole chunk (a message trickled in is timed per part: bounded).
    assert (peer.conn.partial_bytes, peer.conn.partial_since) == (500, NOW + 3)
    # The next chunk announces 524 bytes: 500 held + 524 > 1000, refused at its header, before its body.
    second = peer.msg_bytes(b"z" * 500, 2, chunk_type=b"C")
    error = refused(peer.conn, second[:24], S.BadTcpNotEnoughResources)
    assert "524 bytes" in error.reason and "500 bytes of reassembly room" in error.reason
    assert peer.conn.partial_bytes == 0  # a failed connection holds nothing


def test_a_complete_chunk_restarts_the_clock_of_the_next_one() -> None:
    peer = opened()
    first = peer.read_bytes([ua.NodeId(1, 2)], 2)
    second = peer.read_bytes([ua.NodeId(1, 2)], 3)
    assert feed(peer.conn, first[:10], NOW + 1) == []
    (event,) = feed(peer.conn, first[10:] + second[:10], NOW + 5)
    assert isinstance(event, ServiceRequest)
    assert (peer.conn.partial_bytes, peer.conn.partial_since) == (10, NOW + 5)
