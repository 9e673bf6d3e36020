"""The gateway's own session to the device under the asset's security: an asyncua server that takes only
Basic256Sha256 SignAndEncrypt and username tokens (or X509 user tokens), node-opcua's server that trusts
the gateway's certificate only once told to, and the client on the other side of the gateway unaware of any
of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from asyncua import Client, Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.lab.sim.opcua import stop_server
from tests.e2e.harness import Lab, opcua_policy_text
from tests.e2e.opcua_devices import NodeOpcUaDevice, require_node_opcua

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


async def test_certificate_and_key_are_read_by_their_content_not_their_file_name(
    lab: Lab, secured: tuple[Server, Users, Path]
) -> None:
    server, users, directory = secured
    cert, key = await _gateway_certificate(directory)  # a DER certificate and a PEM key
    loaded = x509.load_der_x509_certificate(cert.read_bytes())
    renamed_cert = directory / "gateway-certificate"  # PEM, under a name asyncua would read as DER
    renamed_cert.write_bytes(loaded.public_bytes(serialization.Encoding.PEM))
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    renamed_key = directory / "gateway-key.pem"  # DER, under a name asyncua would read as PEM
    renamed_key.write_bytes(
        private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    state = await _read_server_state(lab, _port(server), _asset(renamed_cert, renamed_key, '"certificate"'))
    assert state == ua.ServerState.Running
    assert users.seen and all(seen == (None, True) for seen in users.seen)


async def test_a_garbage_key_is_named_and_retried_until_it_is_fixed(
    lab: Lab, secured: tuple[Server, Users, Path]
) -> None:
    server, _users, directory = secured
    cert, key = await _gateway_certificate(directory)
    good_key = key.read_bytes()
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    gateway = await lab.start_gateway(
        opcua_policy_text(_port(server), RULES, asset_extra=_asset(cert, key, '"certificate"'))
    )
    failed = await lab.wait_for_event(event="upstream", state="connect_failed")
    assert f"{key}: not an unencrypted private key" in failed["reason"]
    status, body = await _readyz(gateway.admin_port)
    assert status == 503 and body["reason"] == failed["reason"]
    key.write_bytes(good_key)  # the control task kept trying: fixed, it connects
    await lab.wait_for_event(event="upstream", state="connected", timeout_s=20)
    status, body = await _readyz(gateway.admin_port)
    assert status == 200 and body["reason"] is None


async def test_a_device_that_does_not_trust_the_gateway_is_named_until_it_does(
    lab: Lab, secured: tuple[Server, Users, Path], caplog: pytest.LogCaptureFixture
) -> None:
    server, users, directory = secured
    trusted = False

    async def trust_list(_certificate: x509.Certificate, _app: ua.ApplicationDescription) -> None:
        if not trusted:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    server.set_certificate_validator(trust_list)
    cert, key = await _gateway_certificate(directory)
    extra = _asset(cert, key, '"certificate"')
    gateway = await lab.start_gateway(opcua_policy_text(_port(server), RULES, asset_extra=extra))
    failed = await lab.wait_for_event(event="upstream", state="connect_failed")
    assert failed["reason"].startswith(
        f"the device rejected the gateway's application certificate ({cert}): add it to the device's"
        " trust list"
    )
    assert failed["reason"] in caplog.text  # and in the log, at WARNING
    status, body = await _readyz(gateway.admin_port)
    assert status == 503 and body["reason"] == failed["reason"]
    # A client meanwhile gets BadServerNotConnected, audited with the same words.
    agent_port = await lab.start_agent("alice", "opc-1", "opcua")
    async with Client(f"opc.tcp://127.0.0.1:{agent_port}/", timeout=10, watchdog_intervall=600) as client:
        with pytest.raises(ua.UaStatusCodeError) as refused:
            await client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)).read_value()
        assert refused.value.code == ua.StatusCodes.BadServerNotConnected
    sessions_failed = [
        e for e in lab.audit_events(event="upstream", state="connect_failed") if "session" in e
    ]
    assert sessions_failed and sessions_failed[0]["reason"].startswith("the device rejected the gateway's")
    trusted = True  # the operator adds the gateway's certificate to the device's trust list
    await lab.wait_for_event(event="upstream", state="connected", timeout_s=20)
    status, _body = await _readyz(gateway.admin_port)
    assert status == 200
    assert users.seen


async def _readyz(admin_port: int) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{admin_port}/readyz/opc-1"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


async def test_a_node_opcua_device_that_does_not_trust_the_gateway_is_named_until_it_does(
    lab: Lab, tmp_path: Path
) -> None:
    # node-opcua's server, written independently of asyncua, rejects a client certificate it does not
    # know (as a device fresh from the box does) until its operator trusts it.
    require_node_opcua()
    device = NodeOpcUaDevice(tmp_path / "device-pki", secure=True)
    await device.start()
    try:
        cert, key = await _gateway_certificate(tmp_path)
        extra = _asset(cert, key, '"anonymous"')
        gateway = await lab.start_gateway(opcua_policy_text(device.port, RULES, asset_extra=extra))
        failed = await lab.wait_for_event(event="upstream", state="connect_failed", timeout_s=20)
        assert failed["reason"].startswith(
            f"the device rejected the gateway's application certificate ({cert}): add it to the device's"
            " trust list"
        )
        status, body = await _readyz(gateway.admin_port)
        assert status == 503 and body["reason"] == failed["reason"]
        agent_port = await lab.start_agent("alice", "opc-1", "opcua")
        url = f"opc.tcp://127.0.0.1:{agent_port}/"
        async with Client(url, timeout=10, watchdog_intervall=600) as client:
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)).read_value()
            assert refused.value.code == ua.StatusCodes.BadServerNotConnected
        failures = lab.audit_events(event="upstream", state="connect_failed")
        sessions_failed = [e["reason"] for e in failures if "session" in e]
        assert sessions_failed and sessions_failed[0].startswith("the device rejected the gateway's")
        await device.trust(cert)  # the operator trusts the gateway's certificate on the device
        await lab.wait_for_event(event="upstream", state="connected", timeout_s=20)
        status, _body = await _readyz(gateway.admin_port)
        assert status == 200
        async with Client(url, timeout=10) as client:  # SignAndEncrypt upstream, None on the client's side
            state = await client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)).read_value()
        assert state == ua.ServerState.Running
    finally:
        await device.stop()
