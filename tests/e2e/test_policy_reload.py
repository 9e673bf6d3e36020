"""Hot reload: atomic swaps under live traffic, broken files refused, SIGHUP and file watching."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTlsClient

from gateway.tls import client_context
from tests.center.harness import eventually
from tests.e2e.harness import ALICE, Lab, policy_text

READS = """
[[rules]]
id = "read"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "0-999" }]
"""
WRITES = """
[[rules]]
id = "write"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [6], address = "100-199", value = "0-65535" }]
"""


async def test_hot_reload_under_live_traffic_loses_and_misdecides_nothing(lab: Lab) -> None:
    port = await lab.start_device()
    with_writes = policy_text(port, READS + WRITES)
    read_only = policy_text(port, READS)
    gateway = await lab.start_gateway(with_writes)
    revisions = {gateway.policy.revision: True}  # revision -> writes allowed?
    clients = [await lab.client("alice" if i % 2 else "bob") for i in range(8)]
    stop = asyncio.Event()
    outcomes: list[tuple[int, int, int, int]] = []  # (fc, address, tid, exception code or 0)

    async def traffic(index: int, client: AsyncModbusTlsClient) -> None:
        own = 100 + index
        value = 0
        while not stop.is_set():
            value += 1
            result = await client.write_register(own, value, device_id=1)
            outcomes.append((6, own, result.transaction_id, result.exception_code if result.isError() else 0))
            result = await client.read_holding_registers(own, count=1, device_id=1)
            outcomes.append((3, own, result.transaction_id, result.exception_code if result.isError() else 0))

    async def flip() -> None:
        for round_ in range(20):
            text = read_only if round_ % 2 == 0 else with_writes
            lab.policy_path.write_text(text)
            await gateway.reload_policy("test")
            revisions[gateway.policy.revision] = text is with_writes
            await asyncio.sleep(0.03)
        stop.set()

    await asyncio.gather(flip(), *(traffic(i, c) for i, c in enumerate(clients)))
    assert len(revisions) == 2

    decisions: dict[tuple[int, int, int], dict[str, Any]] = {}
    for event in lab.audit_events(event="decision"):
        span = event.get("write") or event.get("read")
        decisions[(event["fc"], span[0], event["tid"])] = event
    writes_allowed = writes_denied = 0
    for fc, address, tid, code in outcomes:
        event = decisions.pop((fc, address, tid))  # exactly one decision per request
        if fc == 3:
            assert code == 0 and event["decision"] == "allow", event  # its outcome says what failed
            continue
        allowed_by_revision = revisions[event["policy_revision"]]
        if allowed_by_revision:
            assert code == 0 and event["decision"] == "allow" and event["rule"] == "write", event
            writes_allowed += 1
        else:
            assert code == 1 and event["decision"] == "deny"
            writes_denied += 1
    assert not decisions, "the audit trail has decisions for requests nobody sent"
    assert writes_allowed and writes_denied
    assert len(lab.audit_events(event="policy_loaded")) == 20


async def test_broken_policy_is_refused_and_the_old_one_keeps_working(lab: Lab) -> None:
    port = await lab.start_device()
    gateway = await lab.start_gateway(policy_text(port, READS))
    before = gateway.policy.revision
    client = await lab.client("alice")
    lab.policy_path.write_text(
        policy_text(port, READS).replace('fc = [3], address = "0-999"', 'fc = [3], address = "999-0"')
    )
    assert not await gateway.reload_policy("test")
    assert gateway.policy.revision == before
    rejected = lab.audit_events(event="policy_rejected")[-1]
    assert any(
        re.search(r"policy\.toml:\d+: rules\[0\]\.modbus\[0\]\.address", e) for e in rejected["errors"]
    )
    assert not (await client.read_holding_registers(5, count=1, device_id=1)).isError()
    lab.policy_path.write_text("trust_domain = [unterminated")
    assert not await gateway.reload_policy("test")
    assert "TOML syntax" in lab.audit_events(event="policy_rejected")[-1]["errors"][0]
    assert not (await client.read_holding_registers(5, count=1, device_id=1)).isError()


async def test_file_change_is_picked_up(lab: Lab) -> None:
    port = await lab.start_device()
    gateway = await lab.start_gateway(policy_text(port, READS), watch_policy_s=0.05, policy_quiet_s=0.2)
    client = await lab.client("alice")
    assert (await client.write_register(150, 1, device_id=1)).exception_code == 1
    lab.policy_path.write_text(policy_text(port, READS + WRITES))
    loaded = await lab.wait_for_event(event="policy_loaded")
    assert loaded["trigger"] == "file changed" and loaded["policy_revision"] == gateway.policy.revision
    assert not (await client.write_register(150, 1, device_id=1)).isError()


async def test_sighup_reloads_a_gateway_process(lab: Lab, tmp_path: Path) -> None:
    port = await lab.start_device()
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(port, READS))
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
name = "gw-sighup"
listen = "127.0.0.1:0"
policy = "policy.toml"

[tls]
cert = "{lab.pki.gateway.cert}"
key = "{lab.pki.gateway.key}"
ca = "{lab.pki.ca}"

[admin]
listen = ""

[audit]
file = "audit.jsonl"
"""
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "gateway",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    try:
        gateway_port = 0
        async with asyncio.timeout(20):
            while not gateway_port:
                line = (await process.stderr.readline()).decode()
                assert line, "the gateway exited"
                match = re.search(r"overlay on 127\.0\.0\.1:(\d+)", line)
                if match:
                    gateway_port = int(match[1])
        files = lab.pki.clients["alice"]
        client = AsyncModbusTlsClient(
            "127.0.0.1",
            port=gateway_port,
            sslctx=client_context(files.cert, files.key, lab.pki.ca, server_name="plc-1"),
            timeout=3,
            retries=0,
        )
        assert await client.connect()
        assert (await client.write_register(150, 1, device_id=1)).exception_code == 1
        policy.write_text(policy_text(port, READS + WRITES))
        process.send_signal(signal.SIGHUP)
        for _ in range(200):  # the reload runs in the gateway's own time: poll, bounded
            if not (await client.write_register(150, 1, device_id=1)).isError():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("SIGHUP did not bring in the new policy within 10 s")
        client.close()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    # A clean stop flushes the audit trail.
    audit = (tmp_path / "audit.jsonl").read_text()
    assert '"trigger":"SIGHUP"' in audit and ALICE in audit and '"event":"gateway_stop"' in audit


RECIPES = """
[[rules]]
id = "no-recipes"
effect = "deny"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "500-599" }]
"""


class StepClock:
    """The watcher's clock, moved by the test: a quiet period passes when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_policy_written_in_place_in_pieces_never_decides_a_request_half_written(lab: Lab) -> None:
    port = await lab.start_device()
    before = policy_text(port, READS.replace("0-999", "0-99"))
    full = policy_text(port, READS + RECIPES)
    half = full[: full.index('[[rules]]\nid = "no-recipes"')]  # valid on its own: reads 500-599 allowed
    gateway = await lab.start_gateway(before)
    first = gateway.policy.revision
    store = gateway.runtime.policies
    clock = StepClock()
    watcher = asyncio.create_task(store.watch(0.01, 3.0, clock))
    client = await lab.client("alice")
    outcomes: list[int] = []  # exception code of each read of address 550 (0: allowed)
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            result = await client.read_holding_registers(550, count=1, device_id=1)
            outcomes.append(result.exception_code if result.isError() else 0)

    async def watched(polls: int) -> None:
        """The watcher has looked at the file as it is now at least ``polls`` times, and requests went on."""
        sent = len(outcomes)
        await eventually(
            lambda: store.pending is not None and store.pending.polls >= polls and len(outcomes) > sent + 2,
            what="the watcher saw the change and requests were decided meanwhile",
        )

    running = asyncio.create_task(traffic())
    try:
        file = os.open(lab.policy_path, os.O_WRONLY | os.O_TRUNC)  # in place: the same inode
        try:
            os.write(file, half.encode())
            await watched(3)
            clock.now += 1.6  # the writer pauses 1.6 s ...
            await watched(6)
            os.write(file, full[len(half) :].encode())  # ... and writes the rest
        finally:
            os.close(file)
        await watched(3)
        assert gateway.policy.revision == first
        clock.now += 2.9
        await watched(6)  # still inside the quiet period: the old policy decides
        clock.now += 0.2
        loaded = await lab.wait_for_event(event="policy_loaded")
        sent = len(outcomes)
        await eventually(lambda: len(outcomes) > sent + 2, what="requests went on after the swap")
    finally:
        stop.set()
        await running
        watcher.cancel()
    assert loaded["trigger"] == "file changed"
    assert len(lab.audit_events(event="policy_loaded")) == 1, "only the complete file was ever loaded"
    revisions = {e["policy_revision"] for e in lab.audit_events(event="decision", fc=3)}
    assert revisions == {loaded["previous_revision"], loaded["policy_revision"]}
    assert 0 not in outcomes, "a read that both the old and the full policy refuse was allowed"
    denied_by = {e["rule"] for e in lab.audit_events(event="decision", decision="deny")}
    assert "no-recipes" in denied_by


async def test_a_policy_replaced_by_rename_is_loaded_at_once(lab: Lab) -> None:
    port = await lab.start_device()
    gateway = await lab.start_gateway(policy_text(port, READS))
    clock = StepClock()  # never moves: no quiet period can pass
    watcher = asyncio.create_task(gateway.runtime.policies.watch(0.01, 3.0, clock))
    client = await lab.client("alice")
    try:
        assert (await client.write_register(150, 1, device_id=1)).exception_code == 1
        staged = lab.policy_path.with_name(".policy.toml.new")
        staged.write_text(policy_text(port, READS + WRITES))
        os.replace(staged, lab.policy_path)
        loaded = await lab.wait_for_event(event="policy_loaded")
    finally:
        watcher.cancel()
    assert loaded["trigger"] == "file replaced"
    assert not (await client.write_register(150, 1, device_id=1)).isError()
