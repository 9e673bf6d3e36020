"""The gateway's own session to the device under the asset's security: an asyncua server that takes only
Basic256Sha256 SignAndEncrypt and username tokens (or X509 user tokens), and the client on the other side
of the gateway unaware of any of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.lab.sim.opcua import stop_server
from tests.e2e.harness import Lab, opcua_policy_text

GATEWAY_URI = "urn:ztgate:gateway:gw-test"
RULES = """
[[rules]]
id = "operators-read"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [{ preset = "read-only" }]
"""


class Users:
    """The device's user manager: one user with a password, or certificate users; remembers who came."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.seen: list[tuple[str | None, bool]] = []

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        # asyncua passes the channel's client certificate along with a username token too.
        self.seen.append((username, certificate is not None))
        if username is not None:
            return User(role=UserRole.User) if (username, password) == ("gateway", self.password) else None
        return User(role=UserRole.User) if certificate is not None else None


async def _certificate(directory: Path, name: str, uri: str, use: list[Any]) -> tuple[Path, Path]:
    key, cert = directory / f"{name}-key.pem", directory / f"{name}.der"
    await setup_self_signed_certificate(key, cert, uri, "localhost", use, {"commonName": name})
    return cert, key


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[Server, Users, Path]]:
    users = Users("s3cret")
    server = Server(user_manager=users)  # type: ignore[arg-type]
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0/")
    cert, key = await _certificate(tmp_path, "device", "urn:device", [ExtendedKeyUsageOID.SERVER_AUTH])
    await server.load_certificate(str(cert))
    await server.load_private_key(key)
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    server.set_identity_tokens([ua.UserNameIdentityToken, ua.X509IdentityToken])
    await server.start()
    try:
        yield server, users, tmp_path
    finally:
        await stop_server(server)


async def _gateway_certificate(directory: Path) -> tuple[Path, Path]:
    return await _certificate(directory, "gateway", GATEWAY_URI, [ExtendedKeyUsageOID.CLIENT_AUTH])


def _asset(cert: Path, key: Path, user: str) -> str:
    return (
        'security_policy = "Basic256Sha256"\nsecurity_mode = "SignAndEncrypt"\n'
        f'application_cert = "{cert}"\napplication_key = "{key}"\nuser = {user}\n'
    )


async def _read_server_state(lab: Lab, port: int, extra: str) -> Any:
    await lab.start_gateway(opcua_policy_text(port, RULES, asset_extra=extra))
    agent_port = await lab.start_agent("alice", "opc-1", "opcua")
    async with Client(f"opc.tcp://127.0.0.1:{agent_port}/", timeout=5) as client:
        return await client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)).read_value()


def _port(server: Server) -> int:
    assert server.bserver is not None
    return int(server.bserver.port)


async def test_sign_and_encrypt_with_a_username_token(lab: Lab, secured: tuple[Server, Users, Path]) -> None:
    server, users, directory = secured
    cert, key = await _gateway_certificate(directory)
    password = directory / "password"
    password.write_text("s3cret\n")
    extra = _asset(cert, key, f'{{ username = "gateway", password_file = "{password}" }}')
    state = await _read_server_state(lab, _port(server), extra)
    assert state == ua.ServerState.Running
    assert [name for name, _ in users.seen] == ["gateway", "gateway"]  # the control session and alice's


async def test_a_wrong_password_leaves_the_client_with_bad_status_not_a_hang(
    lab: Lab, secured: tuple[Server, Users, Path]
) -> None:
    server, _users, directory = secured
    cert, key = await _gateway_certificate(directory)
    password = directory / "password"
    password.write_text("guess")
    extra = _asset(cert, key, f'{{ username = "gateway", password_file = "{password}" }}')
    with pytest.raises(ua.UaStatusCodeError) as refused:
        await _read_server_state(lab, _port(server), extra)
    assert refused.value.code == ua.StatusCodes.BadServerNotConnected
    failed = lab.audit_events(event="upstream", state="connect_failed")
    assert failed and "BadUserAccessDenied" in failed[0]["reason"]


async def test_sign_and_encrypt_with_a_certificate_user_token(
    lab: Lab, secured: tuple[Server, Users, Path]
) -> None:
    server, users, directory = secured
    cert, key = await _gateway_certificate(directory)
    state = await _read_server_state(lab, _port(server), _asset(cert, key, '"certificate"'))
    assert state == ua.ServerState.Running
    assert users.seen and all(seen == (None, True) for seen in users.seen)


async def test_a_pinned_device_certificate_is_checked(lab: Lab, secured: tuple[Server, Users, Path]) -> None:
    server, _users, directory = secured
    cert, key = await _gateway_certificate(directory)
    extra = _asset(cert, key, '"certificate"') + f'device_cert = "{directory / "device.der"}"\n'
    assert await _read_server_state(lab, _port(server), extra) == ua.ServerState.Running


async def test_a_device_with_another_certificate_than_the_pinned_one_is_not_spoken_to(
    lab: Lab, secured: tuple[Server, Users, Path]
) -> None:
    server, users, directory = secured
    cert, key = await _gateway_certificate(directory)
    impostor, _ = await _certificate(directory, "impostor", "urn:device", [ExtendedKeyUsageOID.SERVER_AUTH])
    extra = _asset(cert, key, '"certificate"') + f'device_cert = "{impostor}"\n'
    with pytest.raises(ua.UaStatusCodeError) as refused:
        await _read_server_state(lab, _port(server), extra)
    assert refused.value.code == ua.StatusCodes.BadServerNotConnected
    failed = lab.audit_events(event="upstream", state="connect_failed")
    assert failed and "is device_cert" in failed[0]["reason"]
    assert users.seen == []  # no session was activated on it
