"""What the OPC UA codec costs per 10-node Read, in microseconds of CPU: the request side (client bytes to
a ServiceRequest, re-encoded for the device) and two ways back for the device's response: decode and
re-encode (the path for responses the policy changes), or relay the bytes with the RequestHandle patched.

    python -m tests.protocols.opcua.bench_opcua_relay [--seconds 1]

Only the codec is measured: no sockets, no event loop, no upstream client.
"""

from __future__ import annotations

import argparse
import datetime
import timeit
from collections.abc import Callable

import asyncua
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from protocols.opcua import SERVICES_BY_NAME, ServiceRequest, reduce_request, splice_response
from tests.protocols.opcua.opcua_canned_server import VALUE_NODES
from tests.protocols.opcua.opcua_peer import NOW, Peer

READ = SERVICES_BY_NAME["Read"]


def device_response_body() -> bytes:
    """A 10-node Read response as a server sends it: values with source and server timestamps."""
    stamp = datetime.datetime(2027, 1, 15, 8, 0, tzinfo=datetime.UTC)
    response = ua.ReadResponse(
        Results=[
            ua.DataValue(
                ua.Variant(100.5 + i, ua.VariantType.Double), SourceTimestamp=stamp, ServerTimestamp=stamp
            )
            for i in range(10)
        ]
    )
    response.ResponseHeader.RequestHandle = 17
    return struct_to_binary(response)


def measure(label: str, action: Callable[[], object], seconds: float) -> float:
    action()
    number = max(1, int(seconds / max(timeit.timeit(action, number=20) / 20, 1e-7)) // 5)
    best = min(timeit.repeat(action, number=number, repeat=5)) / number
    print(f"{label:<58} {best * 1e6:8.1f} us")
    return best * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1)")
    seconds = parser.parse_args(argv).seconds

    peer = Peer()
    peer.handshake()
    conn = peer.conn
    template = peer.read_bytes(VALUE_NODES, request_id=2)

    def request_side() -> object:
        # The same request again under the next sequence number, as the client would send it.
        conn.receive_data(template[:16] + peer.next_sequence().to_bytes(4, "little") + template[20:])
        event = conn.next_event(NOW)
        assert isinstance(event, ServiceRequest)
        return struct_to_binary(event.request)  # re-encoded for the device

    body = device_response_body()
    codec = READ.operations
    assert codec is not None
    request = struct_from_binary(ua.ReadRequest, Buffer(peer.read_bytes(VALUE_NODES, 1)[24:]))
    reduction = reduce_request(codec, request, [True] * 10)

    def decode_and_re_encode() -> object:
        response = struct_from_binary(ua.ReadResponse, Buffer(body))
        return conn.send_response(2, splice_response(reduction, response), request_handle=7)

    def patch_and_relay() -> object:
        return conn.relay_response(2, body, 7, service=READ)

    denied = reduce_request(codec, request, [i not in (2, 7) for i in range(10)])
    eight = struct_to_binary(
        ua.ReadResponse(Results=struct_from_binary(ua.ReadResponse, Buffer(body)).Results[:8])
    )

    def reduce_and_splice() -> object:
        reduced = reduce_request(codec, request, denied.allowed)
        upstream = struct_to_binary(reduced.request)
        response = struct_from_binary(ua.ReadResponse, Buffer(eight))
        return upstream, conn.send_response(2, splice_response(reduced, response), request_handle=7)

    peer.sequence = 1  # what the connection saw last (the OPN); the templates above were never sent
    print(f"10-node Read, asyncua {asyncua.__version__}; best of 5 runs")
    request_us = measure("request: client bytes -> ServiceRequest -> device bytes", request_side, seconds)
    full = measure("response: decode + re-encode (policy changed nothing)", decode_and_re_encode, seconds)
    relay = measure("response: patch RequestHandle + relay bytes", patch_and_relay, seconds)
    measure("two denied: reduce + encode upstream, decode + splice + encode", reduce_and_splice, seconds)
    print(f"{'codec per Read, decode + re-encode path':<58} {request_us + full:8.1f} us")
    print(f"{'codec per Read, relay path':<58} {request_us + relay:8.1f} us")


if __name__ == "__main__":
    main()
