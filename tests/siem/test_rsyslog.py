"""The syslog sink against a real rsyslogd: a gateway serving real Modbus clients sends its decisions
over TCP (octet counting), TLS (gnutls driver, the collector verified against the CA, with and without a
client certificate) and UDP, in each of the sink's formats (ECS json, CEF, OCSF, the flat record), and
what rsyslog parsed is checked with the format validators (tests/audit_validators.py) and compared field
by field with the records the gateway wrote to its file next to it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymodbus.exceptions import ModbusIOException

from gateway import audit_formats
from gateway import pki as pki_module
from gateway.sinks.syslog import FACILITIES, SyslogSettings, SyslogSink
from tests.audit_validators import ecs_problems, ocsf_problems, parse_cef
from tests.e2e.harness import TD, Lab, Pki, policy_text
from tests.siem.rsyslog import RULES, CollectorTls, Rsyslog, until

SIEM_ID = f"spiffe://{TD}/gateway/site1/siem"  # the collector's certificate (a server certificate)
SEVERITY = {"refusal": 4, "decision": 5, "read": 6, "event": 6}


def collector_tls(pki: Pki, directory: Path, *, verify_clients: bool) -> CollectorTls:
    files = pki_module.issue(pki.ca.parent, SIEM_ID, dns_names=["localhost"], out_dir=directory, name="siem")
    return CollectorTls(pki.ca, files.cert, files.key, verify_clients)


def syslog_settings(transport: str, port: int, directory: Path, **extra: Any) -> SyslogSettings:
    spool = directory / "spool" if transport != "udp" else None
    return SyslogSettings(
        transport=transport, address=("127.0.0.1", port), hostname="gw-test", spool_dir=spool, **extra
    )


async def traffic(lab: Lab) -> None:
    """Reads, writes, and a refused write, from one real client session."""
    client = await lab.client("alice")
    for address in range(5):
        assert not (await client.write_register(address, 100 + address, device_id=1)).isError()
        assert not (await client.read_holding_registers(address, count=2, device_id=1)).isError()
    refused = await client.write_register(50, 7, device_id=1)  # no rule writes address 50
    assert isinstance(refused, ModbusIOException) or refused.isError()
    client.close()


def epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def check_cef(message: str, event: dict[str, Any]) -> None:
    header, pairs = parse_cef(message)
    assert header[:4] == ["0", "ztgate", "ztgate", header[3]]
    expected_id = event["event"]
    if event["event"] == "decision":
        expected_id = f"decision:{event['decision']}"
    elif event["event"] == "upstream" and event["state"] == "connected":
        expected_id = "upstream:connected"
    assert header[4] == expected_id
    assert int(header[6]) == {"decision:deny": 7}.get(expected_id, 1)
    extension = dict(pairs)
    assert len(extension) == len(pairs), "a key twice"
    assert extension.pop("rt") == str(epoch_ms(event["time"]))
    for field, value in event.items():  # every field of the record, under its CEF key
        key = audit_formats.cef_key(field)
        got = extension.pop(key)
        if value is None:
            assert got == "", (field, got)
        else:
            assert (got if isinstance(value, str) else orjson.loads(got)) == value, (field, got)
        if key.startswith("cs"):
            assert extension.pop(f"{key}Label")
    assert extension == {}  # nothing else
    # The ArcSight dictionary keys a SIEM maps without help, for the fields they name.
    named = dict(pairs)
    assert named["dvchost"] == event["gateway"]
    if "identity" in event:
        assert named["suser"] == event["identity"]


def check_ocsf(message: str, event: dict[str, Any]) -> None:
    document = orjson.loads(message)
    assert ocsf_problems(document) == []
    assert document["metadata"]["version"] == "1.8.0"
    assert document["time"] == epoch_ms(event["time"])
    category, class_uid, _ = audit_formats.OCSF_CLASSES[event["event"]]
    assert (document["category_uid"], document["class_uid"]) == (category, class_uid)
    if event["event"] in ("decision", "session_start", "session_end"):
        assert document["actor"]["user"]["uid"] == event["identity"]
        assert document["dst_endpoint"]["name"] == event["asset"]
    if event["event"] == "decision":
        denied = event["decision"] == "deny"
        assert document["action_id"] == (2 if denied else 1)
        assert document["disposition_id"] == (2 if denied else 1)
        assert document["activity_id"] == (3 if event["fc"] == 6 else 2)  # Update for a write, Read
        assert document["api"]["operation"] == event["func"]
        assert document["src_endpoint"]["uid"] == document["metadata"]["correlation_uid"] == event["session"]
        assert document["unmapped"]["modbus"]["func_code"] == event["fc"]
        assert document["unmapped"]["decision"] == event["decision"]
        assert document["unmapped"].get("rule") == event["rule"]
    if event["event"] == "session_start":
        host, port = event["peer"].rsplit(":", 1)
        assert document["src_endpoint"] == {"ip": host, "port": int(port), "uid": event["session"]}


def check_json(message: str, event: dict[str, Any]) -> None:
    document = orjson.loads(message)
    assert ecs_problems(event, document) == []  # every flat field at its ECS (or ztgate.*) path
    assert document["event"]["action"] == event["event"]
    if event["event"] == "decision":
        assert document["event"]["outcome"] == ("failure" if event["decision"] == "deny" else "success")
        assert document["user"]["id"] == event["identity"]


def check_ztgate(message: str, event: dict[str, Any]) -> None:
    assert orjson.loads(message) == event


CHECKS = {
    "ztgate": check_ztgate,
    "json": check_json,
    "cef": check_cef,
    "ocsf": check_ocsf,
}


def compare(collector: Rsyslog, lab: Lab, *, transport: str, fmt: str = "json") -> None:
    assert lab.gateway is not None
    lab.gateway.audit.flush()
    expected = [orjson.loads(line) for line in lab.audit_path.read_bytes().splitlines()]
    decisions = [event for event in expected if event.get("event") == "decision"]
    assert sum(event["decision"] == "deny" for event in decisions) == 1
    assert len(decisions) == 11
    received = collector.wait_for(len(expected))
    assert len(received) == len(expected), (received, expected)
    # UDP datagrams are not ordered by the protocol, but on loopback they are; TCP and TLS always.
    for got, event in zip(received, expected, strict=True):
        CHECKS[fmt](got["msg"], event)  # every field, as the file has it, in the sink's format
        # Reads are written one by one here (no aggregation), so they are decisions like the writes.
        kind = "refusal" if event.get("decision") == "deny" else "decision"
        if event.get("event") != "decision":
            kind = "event"
        assert int(got["facility"]) == FACILITIES["local0"]
        assert int(got["severity"]) == SEVERITY[kind], (got, event)
        assert got["protocol_version"] == "1"
        assert got["hostname"] == "gw-test"
        assert got["app_name"] == "ztgate"
        assert got["procid"].isdigit()
        assert got["msgid"] == event["event"]
        assert datetime.fromisoformat(got["time"]) == datetime.fromisoformat(event["time"])
    assert transport == collector.transport


@pytest.mark.parametrize("fmt", ["cef", "ocsf", "ztgate"])
async def test_each_format_reaches_rsyslog_and_holds_every_field(lab: Lab, tmp_path: Path, fmt: str) -> None:
    """``format`` chooses what MSG holds (the transport tests below use the default, ECS json)."""
    collector = Rsyslog(tmp_path / "rsyslog", "tcp")
    port = collector.start()
    try:
        settings = syslog_settings("tcp", port, tmp_path)
        sink = SyslogSink("siem", settings, flush_interval_s=0.01, format=fmt)
        device = await lab.start_device()
        await lab.start_gateway(policy_text(device, RULES), audit_sinks=[sink])
        await traffic(lab)
        compare(collector, lab, transport="tcp", fmt=fmt)
    finally:
        await lab.close()
        collector.stop()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_decisions_reach_rsyslog(lab: Lab, tmp_path: Path, transport: str) -> None:
    collector = Rsyslog(tmp_path / "rsyslog", transport)
    port = collector.start()
    try:
        sink = SyslogSink("siem", syslog_settings(transport, port, tmp_path), flush_interval_s=0.01)
        device = await lab.start_device()
        await lab.start_gateway(policy_text(device, RULES), audit_sinks=[sink])
        await traffic(lab)
        compare(collector, lab, transport=transport)
        assert sink.status()["dropped"] == {"read": 0, "refusal": 0, "decision": 0, "event": 0}
    finally:
        await lab.close()
        collector.stop()


@pytest.mark.parametrize("client_certificate", [True, False], ids=["client-cert", "server-auth-only"])
async def test_decisions_reach_rsyslog_over_tls(
    lab: Lab, pki: Pki, tmp_path: Path, client_certificate: bool
) -> None:
    tls = collector_tls(pki, tmp_path, verify_clients=client_certificate)
    collector = Rsyslog(tmp_path / "rsyslog", "tls", tls)
    port = collector.start()
    try:
        extra: dict[str, Any] = {"ca": pki.ca, "server_name": "localhost"}
        if client_certificate:
            extra.update(cert=pki.gateway.cert, key=pki.gateway.key)
        sink = SyslogSink("siem", syslog_settings("tls", port, tmp_path, **extra), flush_interval_s=0.01)
        device = await lab.start_device()
        await lab.start_gateway(policy_text(device, RULES), audit_sinks=[sink])
        await traffic(lab)
        compare(collector, lab, transport="tls")
        assert sink.connect_failures == 0
    finally:
        await lab.close()
        collector.stop()


async def test_a_collector_with_a_certificate_from_another_ca_is_refused(
    lab: Lab, pki: Pki, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca"
    pki_module.init_ca(other, TD)
    files = pki_module.issue(other, SIEM_ID, dns_names=["localhost"], name="siem")
    tls = CollectorTls(other / "ca.pem", files.cert, files.key, verify_clients=False)
    collector = Rsyslog(tmp_path / "rsyslog", "tls", tls)
    port = collector.start()
    try:
        settings = syslog_settings("tls", port, tmp_path, ca=pki.ca, server_name="localhost")
        sink = SyslogSink("siem", settings, flush_interval_s=0.01)
        device = await lab.start_device()
        await lab.start_gateway(policy_text(device, RULES), audit_sinks=[sink])
        await traffic(lab)
        await until(lambda: sink.connect_failures >= 2)
        assert not sink.connected and collector.messages() == []
        spool = sink.status()["spool"]
        assert spool["records"] >= 12  # kept for when a collector with the right certificate answers
    finally:
        await lab.close()
        collector.stop()
