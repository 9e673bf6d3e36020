"""End-to-end lab for tests: a PKI, real Modbus peers (pymodbus server and clients), the gateway and
agents, all on loopback, all on ports chosen by the kernel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pymodbus.client import AsyncModbusTcpClient, AsyncModbusTlsClient

from gateway import audit_schema
from gateway import pki as pki_module
from gateway.admission import HandshakeLimits
from gateway.agent import Agent
from gateway.audit import AuditLog
from gateway.config import AgentConfig, AgentListener, TlsFiles
from gateway.runtime import SessionLimits
from gateway.server import Gateway
from gateway.sinks import Sink
from gateway.tls import client_context
from tests.peers.modbus_server import InProcessServer, ServerProcess

T = TypeVar("T")


async def in_thread(function: Callable[[], T], timeout_s: float = 60.0) -> T:
    """A blocking client (pycomm3, pylogix, cpppo) run off the event loop the gateway shares, bounded."""
    async with asyncio.timeout(timeout_s):
        return await asyncio.to_thread(function)


TD = "plant1.example"
ALICE = f"spiffe://{TD}/user/alice"
BOB = f"spiffe://{TD}/user/bob"
VENDOR = f"spiffe://{TD}/vendor/acme/eve"
HMI = f"spiffe://{TD}/agent/site1/hmi-3"
GATEWAY = f"spiffe://{TD}/gateway/site1/gw-1"
ROGUE = f"spiffe://{TD}/gateway/site9/rogue"


@dataclass(frozen=True)
class Pki:
    """Every certificate the tests need, made once per run."""

    ca: Path
    gateway: pki_module.IssuedFiles
    clients: dict[str, pki_module.IssuedFiles]  # by name: alice, bob, vendor, hmi, and the bad ones

    def tls(self, who: str) -> TlsFiles:
        files = self.clients[who]
        return TlsFiles(files.cert, files.key, self.ca)


def _issue_raw(ca_dir: Path, out: Path, name: str, uris: list[str]) -> pki_module.IssuedFiles:
    """A client certificate signed by our CA but with whatever URI SANs the test wants (none, say)."""
    ca = pki_module.load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    files = pki_module.IssuedFiles(out / f"{name}.pem", out / f"{name}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files.key.chmod(0o600)
    return files


def make_pki(root: Path) -> Pki:
    ca = root / "ca"
    pki_module.init_ca(ca, TD)
    gateway = pki_module.issue(ca, GATEWAY, dns_names=["localhost"])
    clients = {
        "alice": pki_module.issue(ca, ALICE),
        "bob": pki_module.issue(ca, BOB),
        "vendor": pki_module.issue(ca, VENDOR),
        "hmi": pki_module.issue(ca, HMI),
    }
    now = datetime.now(UTC)
    clients["expired"] = pki_module.issue(
        ca, ALICE, name="alice-expired", not_before=now - timedelta(days=2), not_after=now - timedelta(days=1)
    )
    # A rogue: a gateway certificate from the same CA, for another gateway than the agents' own.
    clients["rogue"] = pki_module.issue(ca, ROGUE, name="rogue")
    clients["gateway"] = gateway  # a gateway's certificate, presented as a client's
    # Alice before a renewal: her certificate ends an hour before the usual one.
    clients["alice-short"] = pki_module.issue(ca, ALICE, name="alice-short", lifetime=timedelta(hours=1))
    clients["no-spiffe"] = _issue_raw(ca, ca, "no-spiffe", [])
    other = root / "other-ca"
    pki_module.init_ca(other, TD)
    clients["other-ca"] = pki_module.issue(other, ALICE, name="alice-other-ca")
    foreign = root / "foreign-ca"
    pki_module.init_ca(foreign, "other.example")
    clients["other-td"] = pki_module.issue(foreign, "spiffe://other.example/user/alice")
    return Pki(ca / "ca.pem", gateway, clients)


# How long a test's Modbus or EtherNet/IP asset lets a request wait for its turn on the device link
# when the test does not say: the product's 0.4 s is a figure for a plant, and on a loaded CI machine a
# read queued behind a few others can wait past it and be answered 0x0B, which is not what a test about
# sharing, ordering or reloads is about. Tests of the queue timeout set their own.
PATIENT_QUEUE_TIMEOUT_S = 10


def patient(asset_extra: str) -> str:
    """The asset's extra settings, with a patient queue timeout unless they set one."""
    if "queue_timeout_s" in asset_extra:
        return asset_extra
    return f"{asset_extra}\nqueue_timeout_s = {PATIENT_QUEUE_TIMEOUT_S}"


def enip_policy_text(device_port: int, rules: str, *, asset: str = "plc-2", asset_extra: str = "") -> str:
    """A policy with one EtherNet/IP asset (a Logix controller in slot 0) and the given rules."""
    return f"""
trust_domain = "{TD}"

[assets.{asset}]
protocol = "enip"
upstream = "127.0.0.1:{device_port}"
route = "1/0"
identity = {{ device_type = 0x0E, product_code = 55, revision = "20.11", product_name = "Line 1 PLC" }}
{patient(asset_extra)}

[groups]
operators = ["{ALICE}", "{BOB}"]
vendors = ["spiffe://{TD}/vendor/*"]

{rules}
"""


class FakeClock:
    """The gateway's clock in a test: time windows are tested by setting it, never by sleeping."""

    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()


def opcua_policy_text(device_port: int, rules: str, *, asset: str = "opc-1", asset_extra: str = "") -> str:
    """A policy with one OPC UA asset (the simulator's endpoint on loopback) and the given rules."""
    return f"""
trust_domain = "{TD}"

[assets.{asset}]
protocol = "opcua"
upstream = "opc.tcp://127.0.0.1:{device_port}/"
{asset_extra}

[groups]
operators = ["{ALICE}", "{BOB}"]
vendors = ["spiffe://{TD}/vendor/*"]

{rules}
"""


def policy_text(device_port: int, rules: str, *, asset: str = "plc-1", asset_extra: str = "") -> str:
    """A policy with one Modbus asset on the test's device, the usual groups, and the given rules."""
    return f"""
trust_domain = "{TD}"

[assets.{asset}]
protocol = "modbus"
upstream = "127.0.0.1:{device_port}"
unit_ids = [1]
{patient(asset_extra)}

[groups]
operators = ["{ALICE}", "{BOB}"]
vendors = ["spiffe://{TD}/vendor/*"]

{rules}
"""


class Lab:
    """A gateway in this process plus the peers around it; closed by the fixture."""

    def __init__(self, pki: Pki, tmp_path: Path) -> None:
        self.pki = pki
        self.dir = tmp_path
        self.policy_path = tmp_path / "policy.toml"
        self.audit_path = tmp_path / "audit.jsonl"
        self.gateway: Gateway | None = None
        self.device: InProcessServer | ServerProcess | None = None
        self._clients: list[Any] = []
        self._agents: list[Agent] = []

    # ------------------------------------------------------------------------------- peers

    async def start_device(self, *, units: tuple[int, ...] = (1,), subprocess: bool = False) -> int:
        self.device = ServerProcess(units=units) if subprocess else InProcessServer(units=units)
        await self.device.start()
        return self.device.port

    async def start_gateway(
        self,
        policy: str,
        *,
        clock: Any = None,
        aggregate_reads_s: float = 0.0,
        limits: SessionLimits | None = None,
        watch_policy_s: float | None = None,
        policy_quiet_s: float = 3.0,
        handshake_limits: HandshakeLimits | None = None,
        max_sessions: int = 20_000,
        audit_sinks: Sequence[Sink] = (),
        audit_on_failure: str = "closed",
    ) -> Gateway:
        self.policy_path.write_text(policy)
        audit = AuditLog(
            gateway="gw-test",
            file=self.audit_path,
            sinks=audit_sinks,
            aggregate_reads_s=aggregate_reads_s,
            flush_interval_s=0.01,
        )
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        self.gateway = Gateway(
            name="gw-test",
            policy=self.policy_path,
            tls=TlsFiles(self.pki.gateway.cert, self.pki.gateway.key, self.pki.ca),
            audit=audit,
            # Refusals one line each unless a test asks for their aggregation, as for reads.
            limits=limits or SessionLimits(refusal_audit_interval_s=0.0),
            watch_policy_s=watch_policy_s,
            policy_quiet_s=policy_quiet_s,
            handshake_limits=handshake_limits,
            max_sessions=max_sessions,
            audit_on_failure=audit_on_failure,
            **kwargs,
        )
        await self.gateway.start()
        return self.gateway

    async def client(
        self, who: str = "alice", asset: str = "plc-1", *, timeout_s: float = 3.0
    ) -> AsyncModbusTlsClient:
        """A pymodbus client with mutual TLS straight to the gateway, connected."""
        assert self.gateway is not None
        files = self.pki.clients[who]
        context = client_context(files.cert, files.key, self.pki.ca, server_name=asset)
        client = AsyncModbusTlsClient(
            "127.0.0.1",
            port=self.gateway.port,
            sslctx=context,
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0,
        )
        self._clients.append(client)
        assert await client.connect(), "client could not connect"
        return client

    async def raw_connection(
        self, who: str = "alice", asset: str = "plc-1"
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A mutual-TLS byte stream to the gateway, for frames no well-behaved client would send."""
        assert self.gateway is not None
        files = self.pki.clients[who]
        context = client_context(files.cert, files.key, self.pki.ca)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.gateway.port, ssl=context, server_hostname=asset
        )
        self._clients.append(writer)
        return reader, writer

    async def start_agent(self, who: str = "alice", asset: str = "plc-1", protocol: str = "modbus") -> int:
        """An agent with this identity exposing ``asset`` on a local port; returns the port."""
        assert self.gateway is not None
        config = AgentConfig(
            source=self.dir / "agent.toml",
            tls=self.pki.tls(who),
            listeners=(
                AgentListener(("127.0.0.1", 0), asset, ("127.0.0.1", self.gateway.port), protocol, GATEWAY),
            ),
            connect_timeout_s=5.0,
        )
        agent = Agent(config)
        await agent.start()
        self._agents.append(agent)
        return agent.bound[0][1][1]

    async def plain_client(self, port: int, *, timeout_s: float = 3.0) -> AsyncModbusTcpClient:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
        self._clients.append(client)
        assert await client.connect(), "client could not connect"
        return client

    # ------------------------------------------------------------------------------- audit

    def audit_events(self, **match: Any) -> list[dict[str, Any]]:
        """Audit events written so far (flushed first), optionally filtered by field values."""
        assert self.gateway is not None
        self.gateway.audit.flush()
        if not self.audit_path.exists():
            return []
        events = [orjson.loads(line) for line in self.audit_path.read_bytes().splitlines() if line]
        return [e for e in events if all(e.get(k) == v for k, v in match.items())]

    async def wait_for_event(self, timeout_s: float = 5.0, **match: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            found = self.audit_events(**match)
            if found:
                return found[-1]
            if loop.time() > deadline:
                raise AssertionError(f"no audit event matching {match} within {timeout_s} s")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------------------- close

    async def close(self) -> None:
        for client in self._clients:
            client.close()
        for agent in self._agents:
            await agent.stop()
        if self.gateway is not None:
            await self.gateway.stop()
        if self.device is not None:
            await self.device.stop()

    def schema_problems(self) -> list[str]:
        """Every audit record this lab's gateway wrote, held to the one schema (gateway/audit_schema.py):
        what is wrong, record by record. The e2e fixture fails a test whose records break it."""
        if not self.audit_path.exists():
            return []
        found = []
        for number, line in enumerate(self.audit_path.read_bytes().splitlines(), 1):
            record = orjson.loads(line)
            found += [
                f"{self.audit_path.name}:{number}: {problem}" for problem in audit_schema.problems(record)
            ]
        return found
