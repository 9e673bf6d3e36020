"""The syslog sink: RFC 5424 messages to a collector over TCP (RFC 6587 octet counting), TLS (RFC 5425)
or UDP (RFC 5426).

Each record becomes ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``: MSGID is the event type
(``decision``, ``session_start``, ...), MSG the record in the sink's format (ECS ``json`` unless
``format`` says ``cef``, ``ocsf`` or ``ztgate``: gateway/audit_formats.py), TIMESTAMP the record's own
time, and the severity follows the record's kind (a refusal is a warning, a decision a notice, a read
or another event informational, a report of lost records an error).

Over TCP and TLS the writer thread appends every record to the disk spool (:mod:`gateway.sinks.spool`)
and a sender thread sends from there, in order, octet-counted, and moves the spool's cursor once a batch
is written to the connection. While the collector is down the spool fills; when it answers again the
sender replays. Syslog over TCP has no acknowledgements: records in the kernel's buffers when a collector
dies are lost with it; records the gateway could not write are sent again.

UDP is lossy by design (RFC 5426): one datagram per record, no spool, no retransmission; a record longer
than ``max_datagram_bytes`` is dropped and counted.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.sinks.base import Record, Sink, line_formatter
from gateway.sinks.spool import Spool

__all__ = ["FACILITIES", "TRANSPORTS", "SyslogSettings", "SyslogSink", "format_message"]

_log = logging.getLogger(__name__)

TRANSPORTS: Final = ("tcp", "tls", "udp")
FACILITIES: Final = {
    "kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10, "local0": 16, "local1": 17,
    "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
_SEVERITY: Final = {"refusal": 4, "decision": 5, "read": 6, "event": 6}
_ERROR_EVENTS: Final = frozenset(("audit_dropped", "audit_error"))
SEND_BATCH_BYTES: Final = 256 * 1024
_ENVELOPES_LIMIT: Final = 1024
_BACKOFF_MIN_S: Final = 0.1
_BACKOFF_MAX_S: Final = 5.0


@dataclass(frozen=True)
class SyslogSettings:
    transport: str  # "tcp" | "tls" | "udp"
    address: tuple[str, int]
    hostname: str
    app_name: str = "ztgate"
    facility: str = "local0"
    ca: Path | None = None  # TLS: the CA the collector's certificate must chain to
    cert: Path | None = None  # TLS: an optional client certificate ...
    key: Path | None = None  # ... and its key
    server_name: str | None = None  # TLS: the name the collector's certificate must carry (default: host)
    spool_dir: Path | None = None
    spool_mib: float = 256.0
    on_spool_full: str = "drop_oldest_reads"
    # A spooling sink's queue in memory: past this the audit writer waits for the spool rather than drop a
    # refusal, a write decision or a session event (reads are dropped past queue_limit).
    hold_mib: float = 64.0
    connect_timeout_s: float = 5.0
    max_datagram_bytes: int = 8192


@functools.lru_cache(maxsize=1024)
def _header_token(text: str, limit: int) -> bytes:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters, or the nil value
    (cached: hostnames, app names and event types repeat)."""
    token = "".join(c for c in text if "!" <= c <= "~")[:limit]
    return token.encode() if token else b"-"


# The audit log's own stamp (YYYY-MM-DDTHH:MM:SS.ffffffZ) is a valid TIMESTAMP as it is.
_STAMP: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


def _timestamp(text: str) -> bytes:
    if not text:
        return b"-"
    if _STAMP.fullmatch(text):
        return text.encode()
    return "".join(c for c in text if "!" <= c <= "~")[:32].encode() or b"-"


def format_message(settings: SyslogSettings, record: Record, pid: int, line: bytes) -> bytes:
    """The RFC 5424 message for one record whose MSG is ``line`` (the record in the sink's format); no
    framing. (The sink builds the same bytes from its cached envelopes: :meth:`SyslogSink._message`.)"""
    pri, rest = _envelope(settings, pid, record.kind, record.event)
    return b"%s%s%s%s" % (pri, _timestamp(record.time), rest, line.rstrip(b"\n"))


def _envelope(settings: SyslogSettings, pid: int, kind: str, event: str) -> tuple[bytes, bytes]:
    """What surrounds TIMESTAMP in a message of this kind and event: ``<PRI>1 `` before it,
    `` HOSTNAME APP-NAME PROCID MSGID - `` after it (no STRUCTURED-DATA)."""
    severity = 3 if event in _ERROR_EVENTS else _SEVERITY[kind]
    facility, sender = _sender(settings.facility, settings.hostname, settings.app_name, pid)
    return b"<%d>1 " % (facility * 8 + severity), b" %s %s - " % (sender, _header_token(event, 32))


@functools.lru_cache(maxsize=64)
def _sender(facility: str, hostname: str, app_name: str, pid: int) -> tuple[int, bytes]:
    """The facility's number and ``HOSTNAME APP-NAME PROCID``: the same for every message of a sink."""
    return FACILITIES[facility], b"%s %s %d" % (
        _header_token(hostname, 255),
        _header_token(app_name, 48),
        pid,
    )


def _connected_to_itself(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockname() == sock.getpeername())
    except OSError:
        return False


class SyslogSink(Sink):
    type_name = "syslog"
    default_format = "json"  # ECS: what a SIEM parses without a custom mapping

    def __init__(
        self,
        name: str,
        settings: SyslogSettings,
        *,
        queue_limit: int = 100_000,
        flush_interval_s: float = 0.05,
        format: str | None = None,
    ) -> None:
        spooled = settings.transport != "udp"
        super().__init__(
            name,
            queue_limit=queue_limit,
            flush_interval_s=flush_interval_s,
            format=format,
            hold_bytes=max(1, int(settings.hold_mib * 1024 * 1024)) if spooled else None,
        )
        if settings.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        if settings.facility not in FACILITIES:
            raise ValueError(f"unknown syslog facility {settings.facility!r}")
        self.settings = settings
        self.sent = 0
        self.sender_cpu_s = 0.0  # the sender thread's CPU time for the batches it read and sent
        self.connected = False
        self.connect_failures = 0
        self._pid = os.getpid()
        self._text = line_formatter(self.format, newline=False)
        # (kind, event) -> the message's envelope: a handful of pairs per sink (event types x kinds).
        self._envelopes: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._context = self._tls_context() if settings.transport == "tls" else None
        self.spool: Spool | None = None
        if spooled:
            if settings.spool_dir is None:
                raise ValueError("a syslog sink over TCP or TLS needs a spool_dir")
            self.spool = Spool(
                settings.spool_dir, limit_mib=settings.spool_mib, on_full=settings.on_spool_full
            )
        self._udp: socket.socket | None = None
        self._sock: socket.socket | None = None
        self._sender: threading.Thread | None = None
        self._sender_stop = threading.Event()

    def _tls_context(self) -> ssl.SSLContext:
        settings = self.settings
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.cert is not None:
            context.load_cert_chain(settings.cert, settings.key)
        return context

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        spool = self.spool
        return super().healthy and (spool is None or not spool.full)

    @property
    def blocks_new_sessions(self) -> bool:
        spool = self.spool
        return spool is not None and spool.full and spool.on_full == "block_new_sessions"

    def status(self) -> dict[str, Any]:
        host, port = self.settings.address
        found = super().status()
        found.update(
            transport=self.settings.transport,
            collector=f"{host}:{port}",
            connected=self.connected,
            sent=self.sent,
            sender_cpu_s=round(self.sender_cpu_s, 6),
            connect_failures=self.connect_failures,
        )
        spool = self.spool
        if spool is not None:
            found["spool"] = {
                "records": spool.pending_records,
                "bytes": spool.pending_bytes,
                "limit_bytes": spool.limit_bytes,
                "full": spool.full,
                "on_full": spool.on_full,
                "evicted_reads": spool.evicted,
            }
            if spool.full:
                found["state"] = "spool_full"
        return found

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        if self.spool is not None:
            self._sender = threading.Thread(
                target=self._send_loop, name=f"ztgate-audit-{self.name}-send", daemon=True
            )
            self._sender.start()

    def close(self, timeout_s: float = 5.0) -> None:
        super().close(timeout_s)  # the queue goes to the spool first
        sender = self._sender
        if sender is not None:
            self._sender_stop.set()
            if self.spool is not None:
                self.spool.data_ready.set()
            sender.join(timeout_s)
        self._disconnect()
        if self.spool is not None:
            self.spool.close()
        if self._udp is not None:
            self._udp.close()

    # -- writer thread: records into the spool (or datagrams) ----------------------------------------------

    def _message(self, record: Record) -> bytes:
        """format_message(settings, record, pid, the record in the sink's format), the envelope cached."""
        key = (record.kind, record.event)
        envelope = self._envelopes.get(key)
        if envelope is None:
            if len(self._envelopes) >= _ENVELOPES_LIMIT:
                self._envelopes.clear()
            envelope = self._envelopes[key] = _envelope(self.settings, self._pid, *key)
        return b"%s%s%s%s" % (envelope[0], _timestamp(record.time), envelope[1], self._text(record))

    def _deliver(self, records: list[Record]) -> bool:
        message = self._message
        messages = [(record.kind, message(record)) for record in records]
        if self.spool is None:
            return self._send_datagrams(messages)
        evicted = self.spool.evicted
        try:
            refused = self.spool.append(messages)
        except OSError as exc:
            self.note_failure(exc)
            return False
        self.lose(["read"] * (self.spool.evicted - evicted), "evicted")
        self.lose(refused, "spool_full")
        return True

    def _send_datagrams(self, messages: list[tuple[str, bytes]]) -> bool:
        host, port = self.settings.address
        try:
            if self._udp is None:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                self._udp = socket.socket(family, socket.SOCK_DGRAM)
            for kind, message in messages:
                if len(message) > self.settings.max_datagram_bytes:
                    self.lose([kind], "oversized")
                    continue
                self._udp.sendto(message, (host, port))
                self.sent += 1
        except OSError as exc:
            self.note_failure(exc)
            return False
        return True

    # -- sender thread: the spool to the collector ---------------------------------------------------------

    def _send_loop(self) -> None:
        spool = self.spool
        assert spool is not None
        backoff_s = _BACKOFF_MIN_S
        while not self._sender_stop.is_set():
            if self._sock is None:
                try:
                    self._connect()
                    backoff_s = _BACKOFF_MIN_S
                except (OSError, ssl.SSLError) as exc:
                    self.connect_failures += 1
                    if self.connect_failures == 1 or self.connected:
                        _log.warning("audit sink %s: collector unreachable (%s); spooling", self.name, exc)
                    self.connected = False
                    self._sender_stop.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
                    continue
            started_s = time.thread_time()
            try:
                batch, cursor = spool.read(SEND_BATCH_BYTES)
            except OSError as exc:
                self.note_failure(exc)
                self._sender_stop.wait(backoff_s)
                continue
            if not batch:
                spool.data_ready.wait(0.2)
                if self._peer_closed():
                    self._disconnect()
                continue
            data = bytearray()  # each message copied once: "%d %s" and then join() copied it twice
            for _kind, message in batch:
                data += b"%d " % len(message)
                data += message
            try:
                if self._peer_closed():
                    raise ConnectionResetError("the collector closed the connection")
                assert self._sock is not None
                self._sock.sendall(data)
            except (OSError, ssl.SSLError) as exc:
                spool.release()
                _log.warning("audit sink %s: sending failed (%s); will resend from the spool", self.name, exc)
                self._disconnect()
                continue
            # Counted before the commit: whoever sees the spool empty (status, tests, the bench) then also
            # sees every record it held counted as sent.
            self.sent += len(batch)
            spool.commit(cursor, len(batch))
            self.sender_cpu_s += time.thread_time() - started_s

    def _connect(self) -> None:
        settings = self.settings
        sock = socket.create_connection(settings.address, timeout=settings.connect_timeout_s)
        try:
            if _connected_to_itself(sock):
                # With no collector listening, a connect on loopback can pick the collector's port as its
                # own and meet itself (TCP simultaneous open): what it sent would be read by nobody.
                raise ConnectionRefusedError(f"no collector on port {settings.address[1]} (self-connect)")
            if self._context is not None:
                sock = self._context.wrap_socket(
                    sock, server_hostname=settings.server_name or settings.address[0]
                )
            sock.settimeout(max(settings.connect_timeout_s, 30.0))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        if not self.connected:
            _log.info("audit sink %s: connected to %s:%d", self.name, *settings.address)
        self.connected = True

    def _peer_closed(self) -> bool:
        # A collector never sends anything: readable means it closed (EOF, a TLS close_notify, a reset).
        sock = self._sock
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        self.connected = False
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
