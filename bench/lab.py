"""The files of a benchmark lab: one CA (ztgate's own PKI) for every TLS path, the policies and the
gateway configuration.

The gateway certificate names the asset (``plc-1``) as a DNS name, so the load generator can verify the
server's chain *and* name with SNI = the asset, against stunnel and ztgate alike; the client
certificate is the bench identity of ``tests/policies/gen_policy.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.modbus_load import request_kinds
from gateway import pki
from policies import load_policy
from tests.policies.gen_policy import (
    bench_subject,
    generate_enip_policy,
    generate_opcua_policy,
    generate_policy,
)

__all__ = [
    "ASSET",
    "ENIP_ASSET",
    "OPCUA_ASSET",
    "TRUST_DOMAIN",
    "Lab",
    "Pool",
    "check_policy_allows",
    "enip_policy_text",
    "make_lab",
    "opcua_policy_text",
    "policy_text",
    "write_agent_config",
    "write_gateway_config",
]

TRUST_DOMAIN = "plant1.example"
ASSET = "plc-1"
ENIP_ASSET = "logix-1"
OPCUA_ASSET = "ua-1"
GATEWAY_ID = f"spiffe://{TRUST_DOMAIN}/gateway/bench/gw-1"


@dataclass(frozen=True)
class Pool:
    """The asset's upstream pool in the policy (see docs/policy.md, Assets)."""

    max_connections: int
    max_in_flight: int
    queue_limit: int = 64

    def describe(self) -> str:
        return (
            f"max_connections = {self.max_connections}, max_in_flight = {self.max_in_flight}, "
            f"queue_limit = {self.queue_limit}"
        )


@dataclass(frozen=True)
class Lab:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    subject: str

    def client_tls_args(self) -> list[str]:
        """Load generator options for a mutual-TLS connection as the bench identity to the asset."""
        return [
            "--tls",
            "--cafile",
            str(self.ca),
            "--cert",
            str(self.client_cert),
            "--key",
            str(self.client_key),
            "--sni",
            ASSET,
        ]


def make_lab(directory: Path) -> Lab:
    """A CA for the trust domain, the gateway's (also stunnel's) certificate and the bench client's."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_dir = directory / "ca"
    ca = pki.init_ca(ca_dir, TRUST_DOMAIN, force=True)
    server = pki.issue(ca_dir, GATEWAY_ID, out_dir=directory, name="server", dns_names=[ASSET, "localhost"])
    client = pki.issue(ca_dir, bench_subject(TRUST_DOMAIN), out_dir=directory, name="client")
    return Lab(
        directory, ca.cert, server.cert, server.key, client.cert, client.key, bench_subject(TRUST_DOMAIN)
    )


def policy_text(n_rules: int, upstream_port: int, pool: Pool) -> str:
    """``gen_policy``'s n-rule policy for the asset on ``upstream_port``, with the given upstream pool."""
    text = generate_policy(
        n_rules, trust_domain=TRUST_DOMAIN, asset=ASSET, upstream=f"127.0.0.1:{upstream_port}"
    )
    header = f"[assets.{ASSET}]\n"
    if header not in text:
        raise RuntimeError(f"generate_policy() wrote no {header.strip()} table; bench/lab.py needs updating")
    settings = (
        f"max_connections = {pool.max_connections}\n"
        f"max_in_flight = {pool.max_in_flight}\n"
        f"queue_limit = {pool.queue_limit}\n"
    )
    return text.replace(header, header + settings, 1)


def enip_policy_text(n_rules: int, upstream_port: int, upstream_links: int = 4) -> str:
    """``gen_policy``'s n-rule EtherNet/IP policy (route 1/0) for the simulator on ``upstream_port``,
    plus a rule letting the bench identity read every tag (``preset = "read-only"``): pycomm3's default
    start-up (identity, tag list, program list) and the workloads' reads are all read-only services.

    The asset gets ``upstream_links`` encapsulation sessions with one class-3 connection each (a
    class-3 connection carries one request at a time): as many as the direct path's clients open, so
    both paths offer the simulator the same concurrency."""
    text = generate_enip_policy(
        n_rules, trust_domain=TRUST_DOMAIN, asset=ENIP_ASSET, upstream=f"127.0.0.1:{upstream_port}"
    )
    header = f"[assets.{ENIP_ASSET}]\n"
    if header not in text:
        raise RuntimeError(
            f"generate_enip_policy() wrote no {header.strip()} table; bench/lab.py needs updating"
        )
    settings = f"max_sessions = {upstream_links}\nmax_connections = {upstream_links}\n"
    text = text.replace(header, header + settings, 1)
    return text + (
        "\n[[rules]]\n"
        'id = "bench-read-any-tag"\n'
        f'subjects = ["{bench_subject(TRUST_DOMAIN)}"]\n'
        f'assets = ["{ENIP_ASSET}"]\n'
        'enip = [{ preset = "read-only" }]\n'
    )


def opcua_policy_text(n_rules: int, upstream_port: int) -> str:
    """``gen_policy``'s n-rule OPC UA policy for the simulator on ``upstream_port`` (security mode None
    upstream, anonymous): the bench identity may use the read-only services on ``Plant.Line1.*`` of the
    plant's namespace; plus a rule letting it read what an asyncua client reads by itself: the
    server's namespace array (``i=2255``, to find the plant namespace's index) and, every second, its
    ServerStatus.State (``i=2259``; a refusal makes the client drop the connection)."""
    text = generate_opcua_policy(
        n_rules,
        trust_domain=TRUST_DOMAIN,
        asset=OPCUA_ASSET,
        upstream=f"opc.tcp://127.0.0.1:{upstream_port}/",
    )
    return text + (
        "\n[[rules]]\n"
        'id = "bench-client-housekeeping"\n'
        f'subjects = ["{bench_subject(TRUST_DOMAIN)}"]\n'
        f'assets = ["{OPCUA_ASSET}"]\n'
        'opcua = [{ service = "Read", namespace = 0, node = ["i=2255", "i=2259"] }]\n'
    )


def write_agent_config(
    lab: Lab, name: str, gateway_port: int, asset: str, protocol: str, *, pin_gateway: bool = True
) -> Path:
    """An agent with the bench identity: one plain local listener on a kernel-chosen loopback port for
    ``asset``, relayed over mutual TLS to the gateway on ``gateway_port``. ``pin_gateway``: the agent
    checks the gateway's SPIFFE id (``gateway_id``; agents from before 2026-12 do not know the key)."""
    path = lab.directory / f"{name}.toml"
    pin = f'gateway_id = "{GATEWAY_ID}"\n' if pin_gateway else ""
    path.write_text(
        f"""[agent]
gateway = "127.0.0.1:{gateway_port}"
{pin}connect_timeout_s = 5

[tls]
cert = "{lab.client_cert}"
key = "{lab.client_key}"
ca = "{lab.ca}"

[[listeners]]
listen = "127.0.0.1:0"
asset = "{asset}"
protocol = "{protocol}"
"""
    )
    return path


def write_gateway_config(
    lab: Lab,
    name: str,
    policy: Path,
    *,
    audit_file: Path,
    aggregate_reads_s: float = 1.0,
    client_max_in_flight: int = 16,
    gateway_extra: str = "",
    audit_sinks: str | None = None,
) -> Path:
    """A gateway config: overlay and admin/metrics on kernel-chosen loopback ports, audit to a file (or
    to ``audit_sinks``, ``[[audit.sinks]]`` tables in TOML). ``gateway_extra``: more ``[gateway]`` lines."""
    path = lab.directory / f"{name}.toml"
    sinks = f'file = "{audit_file}"' if audit_sinks is None else audit_sinks
    path.write_text(
        f"""[gateway]
name = "{name}"
listen = "127.0.0.1:0"
policy = "{policy}"
loop = "uvloop"
client_max_in_flight = {client_max_in_flight}
{gateway_extra}
[tls]
cert = "{lab.server_cert}"
key = "{lab.server_key}"
ca = "{lab.ca}"

[admin]
listen = "127.0.0.1:0"

[audit]
aggregate_reads_s = {aggregate_reads_s}
{sinks}
"""
    )
    return path


def check_policy_allows(policy: Path, mixes: list[tuple[str, int, int]], unit: int = 1) -> None:
    """Fail early, with a clear message, when the policy would refuse any request a workload sends:
    a benchmark of refusals would measure the wrong thing."""
    loaded = load_policy(policy)
    view = loaded.view(bench_subject(TRUST_DOMAIN), ASSET)
    if view is None:
        raise RuntimeError(f"{policy}: the bench identity cannot see asset {ASSET}")
    now = time.time()
    for mix, address, count in mixes:
        for kind in request_kinds(mix, address, count, unit):
            decision = view.decide_modbus(kind.request, now)
            if not decision.allowed:
                raise RuntimeError(
                    f"{policy}: {kind.name} (count {count}) is refused for the bench identity "
                    f"({decision.reason}); the workload would measure refusals"
                )
