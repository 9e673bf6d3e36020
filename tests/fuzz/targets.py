"""What the fuzz campaign needs to know about each protocol: the simulator and the policy to put behind
the gateway, the seed corpus (from the committed samples and captures of the codec tests), how a frame
states its length, how to open a session, how to wrap a mutated payload (with its framing fixed, so it
reaches the parsers past the framing, or raw), and a probe: a request whose answer marks that the
gateway has dealt with everything sent before it."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tests.e2e.harness import ALICE, enip_policy_text, opcua_policy_text, policy_text
from tests.fuzz.mutate import LengthField

FRAME_PAD_LIMIT = 70_000  # a frame claiming more than it holds is padded up to this, so no probe is swallowed


@dataclass
class Stream:
    """One mutual-TLS connection to the gateway and what the protocol remembers about it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    state: dict[str, Any] = field(default_factory=dict)
    probes: int = 0

    async def frame(self, target: Target) -> bytes:
        header = await self.reader.readexactly(target.header_size)
        size = target.frame_size(header)
        return header + await self.reader.readexactly(max(size - target.header_size, 0))


class Target:
    name: ClassVar[str]
    asset: ClassVar[str]
    sim_args: ClassVar[tuple[str, ...]] = ()
    header_size: ClassVar[int]  # the smallest frame
    length_known: ClassVar[int]  # bytes of a frame that state its size

    def policy(self, device_port: int) -> str:
        raise NotImplementedError

    def corpus(self) -> list[bytes]:
        raise NotImplementedError

    def frame_size(self, header: bytes) -> int:
        """The whole frame's size as ``header`` states it."""
        raise NotImplementedError

    def length_fields(self, data: bytes) -> list[LengthField]:
        return []

    async def setup(self, stream: Stream) -> None:
        pass

    def wrap(self, stream: Stream, payload: bytes) -> bytes:
        """The payload as a well-framed message of this connection."""
        return payload

    def probe(self, stream: Stream) -> tuple[bytes, bytes]:
        """(request, marker): the probe, and what its answer carries."""
        raise NotImplementedError

    def answers(self, frame: bytes, marker: bytes) -> bool:
        raise NotImplementedError

    def health(self, stream: Stream) -> tuple[bytes, bytes]:
        """A request a well-behaved client sends and the device answers."""
        raise NotImplementedError

    def health_answers(self, frame: bytes, marker: bytes) -> bool:
        return self.answers(frame, marker)

    def pad(self, data: bytes) -> bytes:
        """Zero bytes after a last frame that claims more than it holds (or whose header is cut short), so
        the probe after it is not swallowed into it."""
        out = bytearray(data)
        offset = 0
        while offset < len(out):
            if len(out) - offset < self.length_known:
                out += bytes(offset + self.length_known - len(out))
            size = self.frame_size(bytes(out[offset : offset + self.length_known]))
            if size < self.header_size or offset + size - len(out) > FRAME_PAD_LIMIT:
                break  # the gateway must refuse this header at once; nothing to complete
            offset += size
        if offset > len(out):
            out += bytes(offset - len(out))
        return bytes(out)


# ------------------------------------------------------------------------------------------ Modbus


class Modbus(Target):
    name = "modbus"
    asset = "plc-1"
    header_size = 7
    length_known = 6

    def policy(self, device_port: int) -> str:
        rules = f"""
[[rules]]
id = "fuzz"
subjects = ["{ALICE}"]
assets = ["plc-1"]
modbus = [
  {{ fc = [1, 2, 3, 4, 5, 6, 15, 16, 22, 23, 24], address = "0-9999" }},
  {{ fc = [7, 11, 12, 17, 20, 21] }},
  {{ fc = 8, subfunction = [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20] }},
  {{ fc = 43, subfunction = [13, 14] }},
]
"""
        return policy_text(device_port, rules)

    def corpus(self) -> list[bytes]:
        from tests.protocols.modbus.test_vectors import VECTORS

        return [self._adu(n, bytes.fromhex(v.request)) for n, v in enumerate(VECTORS.values(), 1)]

    @staticmethod
    def _adu(tid: int, pdu: bytes, unit: int = 1) -> bytes:
        return struct.pack(">HHHB", tid & 0xFFFF, 0, len(pdu) + 1, unit) + pdu

    def frame_size(self, header: bytes) -> int:
        return 6 + struct.unpack_from(">H", header, 4)[0]

    def length_fields(self, data: bytes) -> list[LengthField]:
        return [(4, 2, ">")]

    def wrap(self, stream: Stream, payload: bytes) -> bytes:
        if len(payload) < 8:
            return payload
        return self._adu(int.from_bytes(payload[:2], "big"), payload[7:], payload[6])

    def probe(self, stream: Stream) -> tuple[bytes, bytes]:
        # Holding register 65000 is outside the rule: the gateway answers exception 2 itself.
        return self._adu(0xFFFE, bytes.fromhex("03 FDE8 0001")), b"\xff\xfe"

    def answers(self, frame: bytes, marker: bytes) -> bool:
        return frame[:2] == marker and frame[7:8] in (b"\x03", b"\x83")

    def health(self, stream: Stream) -> tuple[bytes, bytes]:
        return self._adu(0x1234, bytes.fromhex("03 0000 0002")), b"\x12\x34"


# ------------------------------------------------------------------------------------------ EtherNet/IP


class Enip(Target):
    name = "enip"
    asset = "plc-2"
    header_size = 24
    length_known = 4

    def policy(self, device_port: int) -> str:
        rules = f"""
[[rules]]
id = "fuzz"
subjects = ["{ALICE}"]
assets = ["plc-2"]
enip = [{{ preset = "read-write" }}]
"""
        return enip_policy_text(device_port, rules)

    def corpus(self) -> list[bytes]:
        from tests.protocols.enip.cip_samples import captured_frames

        return [frame for _, direction, frame in captured_frames() if direction == "request"]

    def frame_size(self, header: bytes) -> int:
        return 24 + struct.unpack_from("<H", header, 2)[0]

    def length_fields(self, data: bytes) -> list[LengthField]:
        fields: list[LengthField] = [(2, 2, "<")]
        # SendRRData / SendUnitData: interface handle, timeout, item count, then items of (type, length).
        if len(data) >= 32 and data[0] in (0x6F, 0x70):
            offset = 32
            for _ in range(min(struct.unpack_from("<H", data, 30)[0], 4)):
                if offset + 4 > len(data):
                    break
                fields.append((offset + 2, 2, "<"))
                offset += 4 + struct.unpack_from("<H", data, offset + 2)[0]
        return fields

    async def setup(self, stream: Stream) -> None:
        stream.writer.write(struct.pack("<HHII8sI", 0x65, 4, 0, 0, b"fuzzfuzz", 0) + b"\x01\x00\x00\x00")
        reply = await stream.frame(self)
        stream.state["session"] = reply[4:8]

    def wrap(self, stream: Stream, payload: bytes) -> bytes:
        if len(payload) < 24:
            return payload
        body = payload[24:]
        return (
            payload[:2]
            + struct.pack("<H", len(body) & 0xFFFF)
            + stream.state["session"]
            + payload[8:24]
            + body
        )

    def probe(self, stream: Stream) -> tuple[bytes, bytes]:
        # ListIdentity: the gateway answers it itself, on the device's behalf.
        return struct.pack("<HHII8sI", 0x63, 0, 0, 0, b"ZTPROBE!", 0), b"ZTPROBE!"

    def answers(self, frame: bytes, marker: bytes) -> bool:
        return frame[:2] == b"\x63\x00" and frame[12:20] == marker

    def health(self, stream: Stream) -> tuple[bytes, bytes]:
        # pycomm3's first unconnected request of its start-up (the controller's identity), via the device.
        from tests.protocols.enip.cip_samples import captured_frames

        first = next(f for _, d, f in captured_frames("pycomm3_logix") if d == "request" and f[0] == 0x6F)
        return self.wrap(stream, first[:12] + b"ZTHEALTH" + first[20:]), b"ZTHEALTH"

    def health_answers(self, frame: bytes, marker: bytes) -> bool:
        return frame[:2] == b"\x6f\x00" and frame[12:20] == marker


# ------------------------------------------------------------------------------------------ OPC UA

# Seeds are encoded with this stand-in for the session's authentication token; wrap() puts in the
# connection's own, so a corpus entry stays meaningful across reconnections.
_TOKEN_STAND_IN = b"ZTFUZZTOKEN-ZTFU"


class OpcUa(Target):
    name = "opcua"
    asset = "opc-1"
    header_size = 8
    length_known = 8

    def policy(self, device_port: int) -> str:
        rules = f"""
[[rules]]
id = "fuzz"
subjects = ["{ALICE}"]
assets = ["opc-1"]
opcua = [{{ preset = "read-write" }}]
"""
        return opcua_policy_text(device_port, rules)

    def corpus(self) -> list[bytes]:
        from asyncua import ua
        from asyncua.ua.ua_binary import struct_to_binary

        token = ua.NodeId(_TOKEN_STAND_IN, 0, ua.NodeIdType.ByteString)
        server_status = ua.NodeId(ua.ObjectIds.Server_ServerStatus)
        current_time = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime)
        objects = ua.NodeId(ua.ObjectIds.ObjectsFolder)
        requests: list[Any] = []
        read = ua.ReadRequest()
        read.Parameters.NodesToRead = [
            ua.ReadValueId(NodeId=n, AttributeId=a)
            for n in (current_time, server_status)
            for a in (ua.AttributeIds.Value, ua.AttributeIds.BrowseName)
        ]
        requests.append(read)
        browse = ua.BrowseRequest()
        browse.Parameters.NodesToBrowse = [ua.BrowseDescription(NodeId=objects, ResultMask=63)]
        requests.append(browse)
        write = ua.WriteRequest()
        write.Parameters.NodesToWrite = [
            ua.WriteValue(
                NodeId=ua.NodeId("Tank1.Setpoint", 2),
                AttributeId=ua.AttributeIds.Value,
                Value=ua.DataValue(ua.Variant(1200.0, ua.VariantType.Double)),
            )
        ]
        requests.append(write)
        call = ua.CallRequest()
        call.Parameters.MethodsToCall = [
            ua.CallMethodRequest(ObjectId=ua.NodeId("Tank1", 2), MethodId=ua.NodeId("Tank1.Start", 2))
        ]
        requests.append(call)
        requests.append(ua.CreateSubscriptionRequest())
        monitored = ua.CreateMonitoredItemsRequest()
        monitored.Parameters.SubscriptionId = 1
        monitored.Parameters.ItemsToCreate = [
            ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=current_time, AttributeId=ua.AttributeIds.Value)
            )
        ]
        requests.append(monitored)
        requests.append(ua.PublishRequest())
        paths = ua.TranslateBrowsePathsToNodeIdsRequest()
        paths.Parameters.BrowsePaths = [
            ua.BrowsePath(
                StartingNode=objects,
                RelativePath=ua.RelativePath(
                    Elements=[ua.RelativePathElement(TargetName=ua.QualifiedName("Server"))]
                ),
            )
        ]
        requests.append(paths)
        requests.append(ua.GetEndpointsRequest())
        register = ua.RegisterNodesRequest()
        register.Parameters.NodesToRegister = [current_time]
        requests.append(register)
        history = ua.HistoryReadRequest()
        history.Parameters.NodesToRead = [ua.HistoryReadValueId(NodeId=current_time)]
        requests.append(history)
        for request in requests:
            request.RequestHeader.AuthenticationToken = token
            request.RequestHeader.TimeoutHint = 4000
        return [struct_to_binary(request) for request in requests]

    def frame_size(self, header: bytes) -> int:
        return int(struct.unpack_from("<I", header, 4)[0])

    def length_fields(self, data: bytes) -> list[LengthField]:
        # Service bodies: ByteString, String and array lengths are Int32s; their places vary, so pick
        # any aligned-looking small little-endian Int32 as a candidate.
        fields: list[LengthField] = []
        for offset in range(0, max(len(data) - 3, 0)):
            value = struct.unpack_from("<i", data, offset)[0]
            if 0 < value < 64 or value == -1:
                fields.append((offset, 4, "<"))
        return fields[:32]

    async def setup(self, stream: Stream) -> None:
        from tests.e2e.test_opcua import RawChannel

        channel = RawChannel(stream.reader, stream.writer)
        await channel.handshake()
        token = await channel.session()
        from asyncua.ua.ua_binary import nodeid_to_binary

        stream.state["channel"] = channel
        stream.state["token"] = nodeid_to_binary(token)
        stream.state["request_id"] = 1000

    def wrap(self, stream: Stream, payload: bytes) -> bytes:
        channel = stream.state["channel"]
        stream.state["request_id"] += 1
        body = payload.replace(_token_bytes(), stream.state["token"])
        return bytes(channel.msg(body, stream.state["request_id"]))

    def probe(self, stream: Stream) -> tuple[bytes, bytes]:
        from asyncua import ua
        from asyncua.ua.ua_binary import struct_to_binary

        stream.probes += 1
        request_id = 0x7F000000 + (stream.probes & 0xFFFFFF)
        read = ua.ReadRequest()
        read.Parameters.NodesToRead = [
            ua.ReadValueId(
                NodeId=ua.NodeId(ua.ObjectIds.Server_ServerStatus_State), AttributeId=ua.AttributeIds.Value
            )
        ]
        read.RequestHeader.AuthenticationToken = _nodeid_from(stream.state["token"])
        body = struct_to_binary(read)
        message = stream.state["channel"].msg(body, request_id)
        return bytes(message), struct.pack("<I", request_id)

    def answers(self, frame: bytes, marker: bytes) -> bool:
        return frame[:3] == b"MSG" and frame[20:24] == marker

    def health(self, stream: Stream) -> tuple[bytes, bytes]:
        return self.probe(stream)


def _token_bytes() -> bytes:
    from asyncua import ua
    from asyncua.ua.ua_binary import nodeid_to_binary

    return bytes(nodeid_to_binary(ua.NodeId(_TOKEN_STAND_IN, 0, ua.NodeIdType.ByteString)))


def _nodeid_from(data: bytes) -> Any:
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import nodeid_from_binary

    return nodeid_from_binary(Buffer(data))


TARGETS: dict[str, Target] = {"modbus": Modbus(), "enip": Enip(), "opcua": OpcUa()}
