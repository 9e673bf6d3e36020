"""Reloadable TLS material and the client's check of the server's SPIFFE kind, on both event loops."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from gateway import pki
from gateway.config import TlsFiles
from gateway.identity import PeerPin
from gateway.tls import (
    GATEWAY_ROLE,
    CertificateRoleError,
    TlsMaterial,
    client_context,
    https_server_context,
    server_context,
)

TD = "plant1.example"
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "ca", TD)
    return tmp_path / "ca"


def _serving(files: TlsFiles) -> ssl.SSLContext:
    return server_context(files.cert, files.key, files.ca)


def test_reload_takes_new_files_and_keeps_the_old_ones_when_broken(ca: Path, tmp_path: Path) -> None:
    issued = pki.issue(ca, f"spiffe://{TD}/gateway/s/gw", out_dir=tmp_path / "gw", name="gw")
    files = TlsFiles(issued.cert, issued.key, ca / "ca.pem")
    now = [100.0]
    material = TlsMaterial(files, _serving, clock=lambda: now[0])
    heard: list[float] = []
    material.subscribe(lambda m: heard.append(m.not_after))
    first, dates = material.current, (material.not_before, material.not_after)
    assert material.loaded_at == 100.0

    pki.issue(
        ca,
        f"spiffe://{TD}/gateway/s/gw",
        out_dir=tmp_path / "gw",
        name="gw",
        lifetime=pki.PROFILES["gateway"].default_lifetime / 2,
    )
    now[0] = 200.0
    material.reload()
    assert material.current is not first and material.loaded_at == 200.0 and material.reloads == 1
    assert material.not_after < dates[1] and heard == [material.not_after]

    kept = material.current
    issued.key.write_text("not a key")
    with pytest.raises((ssl.SSLError, OSError, ValueError)):
        material.reload()
    assert material.current is kept and material.reloads == 1
    status = material.status()
    assert status["cert"] == str(issued.cert) and status["reloads"] == 1


async def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="x")
        assert await reader.read() == b"ok"
        writer.close()
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_client_accepts_only_the_kind_of_server_it_asked_for(
    ca: Path, tmp_path: Path, loop_name: str
) -> None:
    center = pki.issue(ca, f"spiffe://{TD}/center/c1", out_dir=tmp_path, name="center")
    gateway = pki.issue(ca, f"spiffe://{TD}/gateway/s/gw", out_dir=tmp_path, name="gw")
    alice = pki.issue(ca, f"spiffe://{TD}/user/alice", out_dir=tmp_path, name="alice")
    ca_file = ca / "ca.pem"
    wants_center = client_context(alice.cert, alice.key, ca_file, peer=PeerPin(TD, "center"))

    async def scenario() -> None:
        await _handshake(https_server_context(center.cert, center.key, ca_file), wants_center)
        with pytest.raises(
            ssl.SSLCertVerificationError, match=r"is spiffe://plant1\.example/gateway/s/gw, not a center"
        ):
            await _handshake(https_server_context(gateway.cert, gateway.key, ca_file), wants_center)
        other = client_context(alice.cert, alice.key, ca_file, peer=PeerPin("other.example", "center"))
        with pytest.raises(ssl.SSLCertVerificationError, match="trust domain"):
            await _handshake(https_server_context(center.cert, center.key, ca_file), other)
        # Without a client certificate the center's context still completes the handshake.
        anonymous = client_context(None, None, ca_file, peer=PeerPin(TD, "center"))
        await _handshake(https_server_context(center.cert, center.key, ca_file), anonymous)

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(scenario())


def test_expiry_is_logged_from_a_fifth_of_the_lifetime_before_the_end(
    ca: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    issued = pki.issue(ca, f"spiffe://{TD}/gateway/s/gw", out_dir=tmp_path, name="gw")
    now = [0.0]
    material = TlsMaterial(TlsFiles(issued.cert, issued.key, ca / "ca.pem"), _serving, clock=lambda: now[0])
    lifetime_s = material.not_after - material.not_before
    caplog.set_level(logging.WARNING, logger="ztgate.tls")

    def logged() -> list[tuple[int, str]]:
        found = [(r.levelno, r.getMessage()) for r in caplog.records]
        caplog.clear()
        return found

    now[0] = material.not_after - lifetime_s * 0.21
    material.check_expiry()
    assert logged() == [] and material.status()["ready"] is True
    now[0] = material.not_after - lifetime_s * 0.19
    material.check_expiry()
    material.check_expiry()  # once per certificate, not once per check
    (warning,) = logged()
    assert warning[0] == logging.WARNING and f"{issued.cert} expires at" in warning[1]
    now[0] = material.not_after + 1
    material.check_expiry()
    (error,) = logged()
    assert error[0] == logging.ERROR and "expired at" in error[1]
    status = material.status()
    assert status["ready"] is False and "expired at" in str(status["reason"])
    now[0] = material.not_before - 1
    assert "is not valid before" in str(material.validity_problem())


def test_poll_reloads_only_files_that_have_settled(ca: Path, tmp_path: Path) -> None:
    issued = pki.issue(ca, f"spiffe://{TD}/gateway/s/gw", out_dir=tmp_path, name="gw")
    material = TlsMaterial(TlsFiles(issued.cert, issued.key, ca / "ca.pem"), _serving)
    assert material.poll() is False
    pki.issue(ca, f"spiffe://{TD}/gateway/s/gw", out_dir=tmp_path, name="gw")
    assert material.poll() is False  # changed since the last look: maybe still being written
    assert material.poll() is True and material.reloads == 1 and material.last_trigger == "files changed"
    assert material.poll() is False
    # A half-replaced pair (a new certificate, the old key) does not load: logged once, kept.
    other = pki.issue(ca, f"spiffe://{TD}/gateway/s/gw", out_dir=tmp_path / "x", name="gw")
    issued.cert.write_bytes(other.cert.read_bytes())
    assert [material.poll() for _ in range(3)] == [False, False, False]
    assert material.reloads == 1 and material.reload_error is not None


def test_a_certificate_of_another_role_is_refused_and_not_reloaded(ca: Path, tmp_path: Path) -> None:
    gw = pki.issue(ca, f"spiffe://{TD}/gateway/s/gw", out_dir=tmp_path, name="gw")
    material = TlsMaterial(TlsFiles(gw.cert, gw.key, ca / "ca.pem"), _serving, role=GATEWAY_ROLE)
    alice = pki.issue(ca, f"spiffe://{TD}/user/alice", out_dir=tmp_path, name="alice")
    gw.cert.write_bytes(alice.cert.read_bytes())
    gw.key.write_bytes(alice.key.read_bytes())
    with pytest.raises(CertificateRoleError, match=rf"^{gw.cert} holds a user certificate"):
        material.reload("test")
    assert str(material.identity) == f"spiffe://{TD}/gateway/s/gw"


def _pump(source: ssl.MemoryBIO, sink: ssl.MemoryBIO) -> None:
    data = source.read()
    if data:
        sink.write(data)


def test_the_overlays_ssl_objects_read_and_write_records_through_the_c_methods(
    ca: Path, tmp_path: Path
) -> None:
    gw = pki.issue(ca, f"spiffe://{TD}/gateway/s/gw", out_dir=tmp_path / "gw", name="gw")
    alice = pki.issue(ca, f"spiffe://{TD}/user/alice", out_dir=tmp_path / "alice", name="alice")
    ca_file = ca / "ca.pem"
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = _serving(TlsFiles(gw.cert, gw.key, ca_file)).wrap_bio(server_in, server_out, server_side=True)
    client = client_context(alice.cert, alice.key, ca_file).wrap_bio(client_in, client_out)
    # uvloop's TLS layer calls these for every record: bound to the _ssl object, no Python frame between.
    for name in ("read", "write", "pending"):
        assert getattr(server, name).__self__ is server._sslobj  # type: ignore[attr-defined]
    for _ in range(10):  # the handshake, in memory
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        _pump(client_out, server_in)
        _pump(server_out, client_in)
    assert server.getpeercert() is not None
    client.write(b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x28\x00\x0a")
    _pump(client_out, server_in)
    assert server.read(256 * 1024) == b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x28\x00\x0a"
    assert server.pending() == 0
    assert server.write(b"reply") == 5
    _pump(server_out, client_in)
    assert client.read(1024) == b"reply"
    server_in.write(b"\x17\x03\x03\x00\x05garbage")
    with pytest.raises(ssl.SSLError):  # a broken record fails as the SSLObject's own read fails
        server.read(1024)
