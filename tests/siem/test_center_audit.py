"""The center's audit reaches the SIEM through the same ``[audit]`` sinks as a gateway's: ``ztgate center
serve`` (a real process) with a syslog sink over TLS to a real rsyslogd and a file sink beside it;
enrollment, a refused enrollment, renewal, a lock created and removed, a policy push and a refused API
call each arrive, once, in the order the store numbered them, in ECS json (the syslog default) that
holds every field, and each record is the store's audit row (``ztgate center audit``) field by field."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import pki as pki_module
from gateway.audit import AuditLog
from gateway.audit_schema import problems
from gateway.center.client import CenterClient, CenterError
from gateway.center.db import SqliteDatabase
from gateway.center.store import Store
from gateway.enroll import EnrollError, enroll
from gateway.renewal import make_csr
from gateway.sinks.file import FileSink
from tests.audit_validators import ecs_problems
from tests.center.harness import ALICE, TD, Site, modbus_policy, read_rule
from tests.siem.rsyslog import CollectorTls, Rsyslog

GW = f"spiffe://{TD}/gateway/site1/gw-1"
# What the test does at the center, each audited once (center_start comes first, from the start).
EXPECTED = [
    "center_start",
    "policy_pushed",
    "token_created",
    "enrolled",
    "enroll_refused",
    "renewed",
    "api_refused",
    "lock_created",
    "lock_removed",
]


def audit_section(port: int, ca: Path, root: Path) -> str:
    return f"""
[audit]
[[audit.sinks]]
name = "file"
type = "file"
path = "{root / "center-audit.jsonl"}"

[[audit.sinks]]
name = "siem"
type = "syslog"
transport = "tls"
address = "127.0.0.1:{port}"
ca = "{ca}"
server_name = "localhost"
spool_dir = "{root / "spool"}"
"""


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def act(site: Site) -> None:
    """What an operator and a gateway do at the center, including two things it refuses."""
    await site.push(modbus_policy({"plc-1": (5020, "closed")}, read_rule(["plc-1"])))
    gateway = await site.enroll("gateway", GW, "gw-1")
    with pytest.raises(EnrollError):  # a token nobody issued
        await enroll(site.url, "ztg1_nothing", gateway.center().fingerprint, site.root / "nobody")
    _, csr = make_csr(GW)
    async with CenterClient.for_credentials(gateway) as client:
        assert "certificate" in await client.call("POST", "/v1/renew", {"csr": csr})
        with pytest.raises(CenterError) as refused:  # a gateway may not push a policy
            await client.call("POST", "/v1/policy", {"policy": "", "comment": ""})
        assert refused.value.status == 403
    body = {"target": f"identity={ALICE}", "reason": "laptop"}
    lock = await site.client().call("POST", "/v1/locks", body)
    await site.client().call("DELETE", f"/v1/locks/{lock['id']}")


def same_record(flat: dict[str, Any], row: dict[str, Any], center: str) -> None:
    """A flat record and the store's audit row say the same, field by field."""
    expected = {**row["detail"], "event": row["event"], "seq": row["seq"], "center": center}
    if row["actor"] is not None:
        expected["identity"] = row["actor"]
    assert {k: v for k, v in flat.items() if k != "time"} == expected
    assert abs(epoch(flat["time"]) - float(row["at"])) < 1e-5


async def test_the_centers_audit_reaches_rsyslog_over_tls(site: Site, tmp_path: Path) -> None:
    siem_ca = tmp_path / "siem-ca"
    pki_module.init_ca(siem_ca, TD)
    files = pki_module.issue(siem_ca, f"spiffe://{TD}/gateway/siem", dns_names=["localhost"], name="siem")
    tls = CollectorTls(siem_ca / "ca.pem", files.cert, files.key, verify_clients=False)
    collector = Rsyslog(tmp_path / "rsyslog", "tls", tls)
    port = collector.start()
    try:
        await site.init()
        config = site.dir / "center.toml"
        config.write_text(config.read_text() + audit_section(port, siem_ca / "ca.pem", tmp_path))
        center = await site.start_center()
        await act(site)
        rows = await site.audit()
        first = next(row["seq"] for row in rows if row["event"] == "center_start")
        rows = [row for row in rows if row["seq"] >= first]  # `center init` wrote to the store only
        assert [row["event"] for row in rows] == EXPECTED
        received = collector.wait_for(len(rows))
        await center.stop()  # the file sink writes what it holds
        flat = [orjson.loads(line) for line in (tmp_path / "center-audit.jsonl").read_bytes().splitlines()]
    finally:
        collector.stop()
    assert len(received) == len(rows) == len(flat)
    name = flat[0]["center"]
    for message, record, row in zip(received, flat, rows, strict=True):
        same_record(record, row, name)
        assert problems(record) == [], record
        document = orjson.loads(message["msg"])  # ECS json, the syslog sink's default
        assert ecs_problems(record, document) == []  # every field of the record, at its ECS path
        assert document["observer"]["name"] == name
        refused = row["event"].endswith("_refused")
        assert document["event"]["outcome"] == ("failure" if refused else "success")
        assert message["msgid"] == row["event"] and message["app_name"] == "ztgate"
        assert int(message["severity"]) == (4 if refused else 6)  # a refusal is a warning
    enrolled = next(r for r in flat if r["event"] == "enrolled")
    assert enrolled["identity"] == GW and enrolled["role"] == "gateway"
    assert next(r for r in flat if r["event"] == "enroll_refused")["reason"] == "unknown"
    assert next(r for r in flat if r["event"] == "lock_created")["target"] == f"identity={ALICE}"


async def test_a_rolled_back_change_sends_nothing_and_a_committed_one_its_row(tmp_path: Path) -> None:
    """The sinks get a row once its transaction has committed: never a record the store does not keep."""
    store = Store(SqliteDatabase(tmp_path / "center.db"))
    trail = AuditLog(gateway="center-1", origin="center", sinks=[FileSink("file", tmp_path / "a.jsonl")])
    store.trail = trail
    await store.open()
    try:
        with pytest.raises(RuntimeError):
            async with store.db.transaction() as tx:
                await store.audit("role_set", "spiffe://plant1.example/user/admin", {"id": ALICE}, tx)
                raise RuntimeError("the change failed after its audit row")
        await store.audit("role_set", "spiffe://plant1.example/user/admin", {"id": ALICE, "role": "user"})
        trail.flush()
        (row,) = await store.audit_log()
        (record,) = [orjson.loads(line) for line in (tmp_path / "a.jsonl").read_bytes().splitlines()]
        same_record(record, row, "center-1")
        assert problems(record) == []
    finally:
        await store.close()
        trail.close()
