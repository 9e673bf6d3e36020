"""Reloadable TLS material and the client's check of the server's SPIFFE kind, on both event loops."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from gateway import pki
from gateway.config import TlsFiles
from gateway.identity import PeerPin
from gateway.tls import TlsMaterial, client_context, https_server_context, server_context

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
