"""The SIEM formats on real records: a real client of each protocol makes an allowed and a refused
request through the gateway (enforced and in monitor mode); every record its gateway wrote, in every
format of gateway/audit_formats.py, holds to that format's checker (tests/audit_validators.py), and the
refused request reads the same in ECS, CEF and OCSF as in the flat record."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway import audit_formats
from tests.audit_validators import ecs_problems, ocsf_problems, parse_cef
from tests.e2e.harness import Lab
from tests.e2e.test_audit_record_e2e import CASES, MONITOR

# Where the refused request's operation and target show in ECS (ICSNPP names) for each protocol.
ICSNPP: dict[str, tuple[str, str]] = {
    "modbus": ("func", "write_start_address"),
    "enip": ("service", "tag"),
    "opcua": ("service", "node_id"),
}
NAMESPACE = {"modbus": "modbus", "enip": "cip", "opcua": "opcua"}


def _check_every_record(records: list[dict[str, Any]]) -> None:
    assert records
    for record in records:
        for fmt in audit_formats.FORMATS:
            line = audit_formats.format_record(record, fmt)
            assert "\n" not in line and "\r" not in line
        assert ecs_problems(record, orjson.loads(audit_formats.format_record(record, "json"))) == [], record
        assert ocsf_problems(orjson.loads(audit_formats.format_record(record, "ocsf"))) == [], record
        header, pairs = parse_cef(audit_formats.format_record(record, "cef"))
        assert (header, pairs) == (list(audit_formats.to_cef(record)[0]), audit_formats.to_cef(record)[1])


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
@pytest.mark.parametrize("protocol", sorted(CASES))
async def test_real_records_in_every_format(lab: Lab, protocol: str, mode: str) -> None:
    drive, (field, value), code, code_name, _ = CASES[protocol]
    await drive(lab, MONITOR if mode == "monitor" else "")
    records = lab.audit_events()
    _check_every_record(records)
    verdict = "would-deny" if mode == "monitor" else "deny"
    refused = next(
        r
        for r in records
        if r.get("decision") == verdict and field in r and (value is None or r[field] == value)
    )
    ecs = audit_formats.to_ecs(refused)
    operation, target = ICSNPP[protocol]
    detail = ecs["ztgate"][NAMESPACE[protocol]]
    assert detail[operation] == refused["func" if protocol == "modbus" else "service"]
    assert target in detail
    assert ecs["event"]["outcome"] == ("failure" if verdict == "deny" else "success")
    assert ecs["user"]["id"] == refused["identity"] and ecs["rule"]["id"] == refused["rule"]
    ocsf = audit_formats.to_ocsf(refused)
    assert ocsf["class_uid"] == 6003 and ocsf["action_id"] == (2 if verdict == "deny" else 1)
    assert ocsf["disposition_id"] == (2 if verdict == "deny" else 15)
    header, pairs = parse_cef(audit_formats.format_record(refused, "cef"))
    assert header[4] == f"decision:{verdict}"
    extension = dict(pairs)
    assert extension["outcome"] == verdict and extension["suser"] == refused["identity"]
    key = "ztgateCodeName" if verdict == "deny" else "ztgateWouldCodeName"
    assert extension[key] == code_name
    assert int(extension["ztgateCode" if verdict == "deny" else "ztgateWouldCode"]) == code
