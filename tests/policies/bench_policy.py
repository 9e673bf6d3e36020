"""Policy figures: decision cost at 10 / 1,000 / 10,000 rules (Modbus, EtherNet/IP and OPC UA) and the
load time of 10,000 rules.

    python tests/policies/bench_policy.py

Not a test: timings on shared machines drift, so read them as ratios within one run. Each figure is the
best of several repeats (the least disturbed), in nanoseconds per decision.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import timeit
from pathlib import Path

from asyncua import ua

from policies import toml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from policies import SubjectView, parse_policy
from protocols.enip import CipRequest
from protocols.enip.spec import DataType
from protocols.modbus.pdu import Request, parse_request
from protocols.opcua.operations import Operation
from tests.policies.enip_helpers import attribute_request, by_instance, read_tag, write_tag
from tests.policies.gen_policy import (
    bench_subject,
    generate_enip_policy,
    generate_opcua_policy,
    generate_policy,
)
from tests.policies.opcua_helpers import NAMESPACES, call, monitor, read, write

NOW = 1_795_000_000.0  # Wednesday 2026-11-18 11:06 UTC: inside the generated day-shift window
CASES: list[tuple[str, Request]] = [
    ("allow FC 3 read 0+10", parse_request(1, 1, bytes((3, 0, 0, 0, 10)))),
    ("allow FC 6 write 40=1200", parse_request(1, 1, bytes((6, 0, 40, 0x04, 0xB0)))),
    ("allow FC 16 write 100+2", parse_request(1, 1, bytes((16, 0, 100, 0, 2, 4, 0, 1, 0, 2)))),
    ("allow FC 5 coil 3 (window)", parse_request(1, 1, bytes((5, 0, 3, 0xFF, 0)))),
    ("deny FC 3 read 5000+10", parse_request(1, 1, bytes((3, 0x13, 0x88, 0, 10)))),
    ("deny FC 6 40=2000 (value)", parse_request(1, 1, bytes((6, 0, 40, 0x07, 0xD0)))),
    ("deny FC 90 (no rule)", parse_request(1, 1, bytes((90, 0, 1)))),
]


ENIP_CASES: list[tuple[str, CipRequest]] = [
    ("allow read_tag Line1.Speed", read_tag("Line1.Speed")),
    ("allow read_tag Recipe[0] x10", read_tag("Recipe[0]", 10)),
    ("allow write_tag Speed=1200 DINT", write_tag("Line1.Speed", [1200])),
    ("allow write_tag Speed=1200.5 REAL", write_tag("Line1.Speed", [1200.5], DataType.REAL)),
    ("allow get_attributes_all Identity", attribute_request(0x01, 0x01, 1)),
    ("deny write_tag Speed=2000 (value)", write_tag("Line1.Speed", [2000])),
    ("deny write_tag Recipe[0] (rule)", write_tag("Recipe[0]", [1])),
    ("deny read_tag Secret (tag)", read_tag("Secret")),
    ("deny read_tag by instance", by_instance(0x4C, 7)),
    ("deny reset Identity (no rule)", attribute_request(0x05, 0x01, 1)),
]


SETPOINT = "Plant.Line1.Tank1.Setpoint"
OPCUA_CASES: list[tuple[str, Operation]] = [
    ("allow Read Tank1.Level", read("Plant.Line1.Tank1.Level")),
    ("allow Write Setpoint=1200.0 Double", write(SETPOINT, 1200.0, ua.VariantType.Double)),
    ("allow Write Setpoint=1200 Int32", write(SETPOINT, 1200, ua.VariantType.Int32)),
    ("allow Call Tank1.Start", call("Plant.Line1.Tank1", "Plant.Line1.Tank1.Start")),
    ("allow CreateMonitoredItems Level", monitor("Plant.Line1.Tank1.Level")),
    ("deny Write Setpoint=3000.0 (value)", write(SETPOINT, 3000.0, ua.VariantType.Double)),
    ("deny Write AccessLevel (attribute)", write(SETPOINT, 3, ua.VariantType.Byte, attribute=17)),
    ("deny Read Recipes.R1 (rule)", read("Plant.Recipes.R1")),
    ("deny Read Line2 (node)", read("Plant.Line2.Tank1.Level")),
    ("deny Call Line2.Start (pair)", call("Plant.Line1.Tank1", "Plant.Line2.Tank1.Start")),
]


def decide_ns(view: SubjectView, request: Request | CipRequest | Operation, number: int = 200_000) -> float:
    if isinstance(request, Operation):
        decide_opcua = view.decide_opcua
        best = min(timeit.repeat(lambda: decide_opcua(request, NAMESPACES, NOW), number=number, repeat=5))
    elif isinstance(request, CipRequest):
        decide_enip = view.decide_enip
        best = min(timeit.repeat(lambda: decide_enip(request, NOW), number=number, repeat=5))
    else:
        decide = view.decide_modbus
        best = min(timeit.repeat(lambda: decide(request, NOW), number=number, repeat=5))
    return best / number * 1e9


def main() -> None:
    sizes = (10, 1_000, 10_000)
    views: dict[int, SubjectView] = {}
    for n in sizes:
        view = parse_policy(generate_policy(n)).view(bench_subject(), "plc-1")
        assert view is not None
        views[n] = view
    print(f"load average {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}")
    print(f"{'ns per decision':<36}" + "".join(f"{n:>10,} rules" for n in sizes))
    for name, request in CASES:
        verdicts = {views[n].decide_modbus(request, NOW).verdict for n in sizes}
        assert len(verdicts) == 1, (name, verdicts)
        print(f"{name:<36}" + "".join(f"{decide_ns(views[n], request):>16.0f}" for n in sizes))
    enip_views: dict[int, SubjectView] = {}
    for n in sizes:
        view = parse_policy(generate_enip_policy(n)).view(bench_subject(), "logix-1")
        assert view is not None
        enip_views[n] = view
    for name, cip in ENIP_CASES:
        verdicts = {enip_views[n].decide_enip(cip, NOW).verdict for n in sizes}
        assert len(verdicts) == 1 and name.startswith(verdicts.pop()), name
        print(f"{name:<36}" + "".join(f"{decide_ns(enip_views[n], cip):>16.0f}" for n in sizes))
    opcua_views: dict[int, SubjectView] = {}
    for n in sizes:
        view = parse_policy(generate_opcua_policy(n)).view(bench_subject(), "opc-1")
        assert view is not None
        opcua_views[n] = view
    for name, operation in OPCUA_CASES:
        verdicts = {opcua_views[n].decide_opcua(operation, NAMESPACES, NOW).verdict for n in sizes}
        assert len(verdicts) == 1 and name.startswith(verdicts.pop()), name
        print(f"{name:<36}" + "".join(f"{decide_ns(opcua_views[n], operation):>16.0f}" for n in sizes))

    text = generate_policy(10_000)
    loads, parses = [], []
    for _ in range(5):
        start = time.perf_counter()
        policy = parse_policy(text)
        loads.append(time.perf_counter() - start)
        start = time.perf_counter()
        toml.loads(text)
        parses.append(time.perf_counter() - start)
    start = time.perf_counter()
    policy.view(bench_subject(), "plc-1")
    compile_ms = (time.perf_counter() - start) * 1e3
    print(
        f"load 10,000 rules ({len(text) / 1e6:.1f} MB): median {statistics.median(loads):.3f} s,"
        f" best {min(loads):.3f} s (TOML parser alone: median {statistics.median(parses):.3f} s);"
        f" first view compiled in {compile_ms:.2f} ms"
    )


if __name__ == "__main__":
    main()
