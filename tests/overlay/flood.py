"""A handshake-exhaustion attacker for tests: holds N connections per source address open to a port,
sending nothing (or, with ``--stall-hello``, the first bytes of a TLS record and then nothing), and
reopens every connection the server closes, at a bounded rate.

    python -m tests.overlay.flood --port P --source 127.0.0.2 --source 127.0.0.3 --per-source 150

Prints ``READY`` once every first connection is established, runs until SIGTERM or ``--duration-s``,
then prints one JSON line of counts. A separate process, so the attack's CPU is not the test's.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence

# A TLS handshake record header announcing 512 bytes that never come.
STALLED_HELLO = b"\x16\x03\x01\x02\x00"


class Flood:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.selector = selectors.DefaultSelector()
        self.opened = 0
        self.established = 0
        self.closed_by_server = 0
        self.failed = 0
        self.stop = False
        self._min_gap_s = 1.0 / args.reopen_rate_per_s
        self._next_open = 0.0
        self._to_reopen: list[str] = []

    def open(self, source: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((source, 0))
            sock.connect_ex(("127.0.0.1", self.args.port))
        except OSError:
            sock.close()
            self.failed += 1
            self._to_reopen.append(source)
            return
        self.opened += 1
        self.selector.register(sock, selectors.EVENT_WRITE, (source, False))

    def event(self, key: selectors.SelectorKey) -> None:
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        source, connected = key.data
        if not connected:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                self._gone(sock, source, failed=True)
                return
            self.established += 1
            if self.args.stall_hello:
                try:
                    sock.send(STALLED_HELLO)
                except OSError:
                    self._gone(sock, source, failed=False)
                    return
            self.selector.modify(sock, selectors.EVENT_READ, (source, True))
            return
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone(sock, source, failed=False)

    def _gone(self, sock: socket.socket, source: str, *, failed: bool) -> None:
        self.selector.unregister(sock)
        sock.close()
        if failed:
            self.failed += 1
        else:
            self.closed_by_server += 1
        self._to_reopen.append(source)

    def run(self) -> dict[str, int]:
        for source in self.args.sources:
            for _ in range(self.args.per_source):
                self.open(source)
        deadline = time.monotonic() + self.args.duration_s
        ready = False
        while not self.stop and time.monotonic() < deadline:
            for key, _ in self.selector.select(timeout=0.01):
                self.event(key)
            if not ready and self.established + self.failed + self.closed_by_server >= self.opened:
                print("READY", flush=True)
                ready = True
            now = time.monotonic()
            while self._to_reopen and now >= self._next_open:
                self.open(self._to_reopen.pop(0))
                self._next_open = max(self._next_open + self._min_gap_s, now - 0.1)
        held = len(self.selector.get_map())
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        return {
            "opened": self.opened,
            "established": self.established,
            "closed_by_server": self.closed_by_server,
            "failed": self.failed,
            "held_at_end": held,
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.overlay.flood", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", action="append", dest="sources", required=True)
    parser.add_argument("--per-source", type=int, default=100)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--reopen-rate-per-s", type=float, default=1000.0)
    parser.add_argument("--stall-hello", action="store_true")
    args = parser.parse_args(argv)
    flood = Flood(args)

    def stop(*_: object) -> None:
        flood.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    counts = flood.run()
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
