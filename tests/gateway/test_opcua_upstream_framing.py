"""The relay's request framing towards the device against asyncua's own: the client's request with the
device session's token and handle patched in, framed on asyncua's SecureConnection under SecurityPolicy
None, must be the bytes asyncua's message_to_binary produces for the same body, and leave its sequence
number where asyncua would."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
from asyncua import ua
from asyncua.common.connection import SecureConnection, TransportLimits
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.ua.ua_binary import nodeid_to_binary, struct_to_binary

from gateway.opcua.asyncua_adapter import frame_request
from protocols.opcua.messages import nodeid_end
from protocols.opcua.spec import SEQUENCE_WRAP_ABOVE

CLIENT_TOKEN = ua.NodeId(b"\x11" * 32, 0, ua.NodeIdType.ByteString)
DEVICE_TOKEN = nodeid_to_binary(ua.NodeId(b"\x22" * 16, 1, ua.NodeIdType.ByteString))


def read_body(nodes: int, handle: int = 7) -> bytes:
    request = ua.ReadRequest()
    request.RequestHeader.AuthenticationToken = CLIENT_TOKEN
    request.RequestHeader.RequestHandle = handle
    request.RequestHeader.Timestamp = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    request.Parameters.NodesToRead = [
        ua.ReadValueId(NodeId=ua.NodeId(f"Plant.Line1.Tank1.Value{i:04d}", 2), AttributeId=13)
        for i in range(nodes)
    ]
    return struct_to_binary(request)


def connection(max_send_buffer: int, sequence_number: int) -> SecureConnection:
    secure = SecureConnection(SecurityPolicyNone(), TransportLimits(max_send_buffer=max_send_buffer))
    secure.security_token = ua.ChannelSecurityToken(ChannelId=0x5A5A0001, TokenId=3)
    secure._sequence_number = sequence_number
    return secure


def patched(body: bytes, handle: int) -> bytes:
    """The body as the device must see it: the same request under the device session's token and handle."""
    start = 4
    end = nodeid_end(body, start)
    return body[:start] + DEVICE_TOKEN + body[end : end + 8] + struct.pack("<I", handle) + body[end + 12 :]


@pytest.mark.parametrize(
    ("nodes", "max_send_buffer"),
    [(10, 65535), (1, 8192), (200, 8192)],  # one chunk; the smallest; several chunks
)
def test_framing_equals_asyncuas(nodes: int, max_send_buffer: int) -> None:
    body = read_body(nodes)
    ours, theirs = connection(max_send_buffer, 41), connection(max_send_buffer, 41)
    span = (4, nodeid_end(body, 4))
    framed = frame_request(ours, body, DEVICE_TOKEN, 1234, span, 77)
    expected = theirs.message_to_binary(patched(body, 1234), ua.MessageType.SecureMessage, 77)
    assert framed == expected
    assert ours._sequence_number == theirs._sequence_number > 41
    assert (len(expected) > max_send_buffer) == (nodes == 200)  # the several-chunk case is one


def test_sequence_numbers_wrap_as_the_codec_counts() -> None:
    """Near the top, the framer wraps where Part 6 allows (after 4294966271), as the codec's own chunks do;
    asyncua's own framing would go on to 2**32 - 1, which a server accepts as well."""
    body = read_body(1)
    ours = connection(65535, SEQUENCE_WRAP_ABOVE)
    framed = frame_request(ours, body, DEVICE_TOKEN, 1, (4, nodeid_end(body, 4)), 9)
    assert struct.unpack_from("<I", framed, 16)[0] == SEQUENCE_WRAP_ABOVE + 1
    assert ours._sequence_number == 0  # the next chunk is number 1
    framed = frame_request(ours, body, DEVICE_TOKEN, 2, (4, nodeid_end(body, 4)), 10)
    assert struct.unpack_from("<I", framed, 16)[0] == 1
