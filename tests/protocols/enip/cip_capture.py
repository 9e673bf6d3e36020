"""Record what real EtherNet/IP peers put on the wire, to turn into test vectors.

cpppo's simulator (the server) is driven by pycomm3 and pylogix (the clients) through a loopback TCP
relay that keeps every byte each way. The byte streams are cut into encapsulation frames with nothing
but the 24-byte header's length field, so the split does not depend on the codec under test.

Run ``python -m tests.protocols.enip.cip_capture > tests/protocols/enip/cip_captures.py`` to
regenerate the data module; the tests only read the committed hex strings.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

HEADER = 24
TAGS = (
    "SCADA=INT[100]",
    "Temp=REAL",
    "Count=DINT",
    "Big=LINT",
    "Ratio=LREAL",
    "Small=SINT",
    "Words=UDINT[10]",
    "Log=DINT[300]",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def cpppo_server(*tags: str) -> Iterator[int]:
    """cpppo's EtherNet/IP simulator on a free loopback port (TCP only)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cpppo.server.enip", "-U", "-a", f"127.0.0.1:{port}", *tags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("cpppo did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Conversation:
    """Bytes of one client connection, each direction in arrival order."""

    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)


class Relay:
    """A loopback TCP relay that keeps a copy of every byte it forwards."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.conversations: list[Conversation] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            conversation = Conversation()
            self.conversations.append(conversation)
            self._sockets += [client, upstream]
            for source, sink, record in (
                (client, upstream, conversation.to_server),
                (upstream, client, conversation.to_client),
            ):
                thread = threading.Thread(target=self._pump, args=(source, sink, record), daemon=True)
                thread.start()
                self._threads.append(thread)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            record += data
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._listener.close()
        for thread in self._threads:
            thread.join(2)
        for sock in self._sockets:
            sock.close()


def frames(stream: bytes) -> list[bytes]:
    """Cut a stream into encapsulation frames by the header's length field alone."""
    out = []
    offset = 0
    while offset + HEADER <= len(stream):
        length = struct.unpack_from("<H", stream, offset + 2)[0]
        out.append(bytes(stream[offset : offset + HEADER + length]))
        offset += HEADER + length
    return out


def capture(scenario: Callable[[int], Any]) -> list[tuple[str, bytes]]:
    """Run one client scenario against a fresh cpppo through the relay: the frames, in order."""
    with cpppo_server(*TAGS) as port:
        relay = Relay(port)
        try:
            with contextlib.suppress(Exception):
                scenario(relay.port)
        finally:
            time.sleep(0.2)
            relay.close()
    out: list[tuple[str, bytes]] = []
    for conversation in relay.conversations:
        requests, replies = frames(conversation.to_server), frames(conversation.to_client)
        # Interleave by order: every request here gets at most one reply, in order (NOP and
        # UnRegisterSession get none, and then cpppo closes).
        replies_iter = iter(replies)
        for request in requests:
            out.append(("request", request))
            command = struct.unpack_from("<H", request)[0]
            if command not in (0x0000, 0x0066):
                reply = next(replies_iter, None)
                if reply is not None:
                    out.append(("reply", reply))
        out.extend(("reply", reply) for reply in replies_iter)
    return out


# ------------------------------------------------------------------------------------------ scenarios


def atomic(name: str, type_name: str, dimensions: int = 0) -> dict[str, Any]:
    """A tag definition as pycomm3's tag upload would have made it (cpppo has no 0x55 to upload from)."""
    from pycomm3.cip.data_types import DataTypes

    type_class = DataTypes.get(type_name)
    if dimensions:
        from pycomm3.cip.data_types import Array

        type_class = Array(length_=dimensions, element_type_=type_class)
    return {
        "tag_name": name,
        "dim": 1 if dimensions else 0,
        "dimensions": [dimensions, 0, 0],
        "alias": False,
        "instance_id": 0,
        "external_access": "Read/Write",
        "data_type": type_name,
        "data_type_name": type_name,
        "tag_type": "atomic",
        "type_class": type_class,
    }


def logix_driver(port: int) -> Any:
    from pycomm3 import LogixDriver

    plc = LogixDriver(f"127.0.0.1:{port}", init_tags=False, init_program_tasks=False)
    plc._tags = {
        "SCADA": atomic("SCADA", "INT", 100),
        "Temp": atomic("Temp", "REAL"),
        "Count": atomic("Count", "DINT"),
        "Big": atomic("Big", "LINT"),
        "Ratio": atomic("Ratio", "LREAL"),
        "Small": atomic("Small", "SINT"),
        "Words": atomic("Words", "UDINT", 10),
        "Log": atomic("Log", "DINT", 300),
    }
    return plc


def pycomm3_logix(port: int) -> None:
    with logix_driver(port) as plc:
        plc.read("Temp")
        plc.read("SCADA[3]{4}")
        plc.read("Temp", "SCADA[1]", "Count")
        plc.write(("SCADA[5]", 42), ("Count", -7))
        plc.write(("Big", -(2**40)), ("Ratio", 0.125), ("Small", -3), ("Words[2]", 4000000000))
        plc.read("Big", "Ratio", "Small", "Words[2]")
        plc.read("Nope")  # unknown to cpppo: it closes the session


def pycomm3_small_connection(port: int) -> None:
    # A standard Forward Open and a read longer than the connection: Read Tag Fragmented.
    with logix_driver(port) as plc:
        plc._cfg["extended forward open"] = False
        plc._cfg["connection_size"] = 500
        plc.read("Log{300}")


def pycomm3_single_write(port: int) -> None:
    # pycomm3 1.2.16 builds a single-tag Write Tag twice into one data item; cpppo closes the session.
    with logix_driver(port) as plc:
        plc.write("Temp", 21.5)


def pycomm3_bit_write(port: int) -> None:
    with logix_driver(port) as plc:
        plc.write("Count.3", True)  # a bit of a DINT: Read-Modify-Write, which cpppo does not know


def pycomm3_generic(port: int) -> None:
    from pycomm3 import CIPDriver, Services

    with CIPDriver(f"127.0.0.1:{port}") as driver:
        driver.generic_message(service=Services.get_attributes_all, class_code=1, instance=1, connected=False)
        driver.generic_message(
            service=Services.get_attribute_single,
            class_code=1,
            instance=1,
            attribute=7,
            connected=False,
            unconnected_send=True,
            route_path="1/0",
        )
        driver.generic_message(
            service=Services.get_attribute_single, class_code=0xF5, instance=1, attribute=5, connected=True
        )
        driver.generic_message(service=Services.reset, class_code=1, instance=1, connected=False)


def pylogix_client(port: int) -> None:
    from pylogix import PLC

    with PLC("127.0.0.1", port=port) as comm:
        comm.Write("Temp", 3.5)
        comm.Read("Temp")
        comm.Read("SCADA[2]", 5)
        comm.Write("SCADA[4]", 7)
        comm.Read(["Temp", "SCADA[1]", "Count"])
        comm.Write([("SCADA[6]", 9), ("Count", 12)])
        comm.Write("SCADA[10]", [1, 2, 3])
        comm.GetPLCTime()


def pylogix_bit_write(port: int) -> None:
    from pylogix import PLC

    with PLC("127.0.0.1", port=port) as comm:
        comm.Write("Count.3", True)


def pylogix_tag_list(port: int) -> None:
    from pylogix import PLC

    with PLC("127.0.0.1", port=port) as comm:
        comm.GetTagList(allTags=False)


def pylogix_fragmented(port: int) -> None:
    from pylogix import PLC

    with PLC("127.0.0.1", port=port) as comm:
        comm.ConnectionSize = 504
        comm.Read("Log", 300)


SCENARIOS: dict[str, Callable[[int], Any]] = {
    "pycomm3_logix": pycomm3_logix,
    "pycomm3_small_connection": pycomm3_small_connection,
    "pycomm3_single_write": pycomm3_single_write,
    "pycomm3_bit_write": pycomm3_bit_write,
    "pycomm3_generic": pycomm3_generic,
    "pylogix": pylogix_client,
    "pylogix_bit_write": pylogix_bit_write,
    "pylogix_tag_list": pylogix_tag_list,
    "pylogix_fragmented": pylogix_fragmented,
}


HEADER_DOC = '''"""Frames captured from real peers, made by ``python -m tests.protocols.enip.cip_capture``.

cpppo 5.2.5's simulator (``python -m cpppo.server.enip -U -a 127.0.0.1:PORT`` with the tags in
``cip_capture.TAGS``), driven by pycomm3 1.2.16 (``LogixDriver`` with hand-made tag definitions, and
``CIPDriver.generic_message``) and by pylogix 1.1.6, through a loopback TCP relay that copies every byte.
Each direction's stream was cut into frames by the encapsulation header's length field only, and the
frames of each scenario (see ``cip_capture.SCENARIOS``) are listed in the order they crossed the relay.
"""'''


def main() -> None:
    logging.disable(logging.CRITICAL)
    print(HEADER_DOC)
    print()
    print("CAPTURES: dict[str, tuple[tuple[str, str], ...]] = {")
    for name, scenario in SCENARIOS.items():
        print(f"    {name!r}: (")
        for direction, frame in capture(scenario):
            print(f"        ({direction!r}, {frame.hex()!r}),")
        print("    ),")
    print("}")


if __name__ == "__main__":
    main()
