"""``ztgate demo --walkthrough``: drive the lab with real clients — pymodbus for Modbus, pycomm3 for
EtherNet/IP, asyncua for OPC UA — print a table of requests, outcomes and the rule that decided each
(read back from the audit trail), and say whether every outcome is what the policy promises."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.lab.demo.lab import (
    ENIP_ASSET,
    MODBUS_ASSET,
    OPCUA_ASSET,
    OPERATOR,
    SETPOINT,
    TANK,
    VENDOR,
    DemoLab,
)
from gateway.tls import client_context

Outcome = tuple[int | str, str]  # (0 | protocol error code | "refused", text for the table)
PRIVILEGE_VIOLATION = 0x0F
BAD_USER_ACCESS_DENIED = 0x801F0000


@dataclass(frozen=True)
class Step:
    who: str  # operator | vendor | intruder
    text: str  # what the request does, in words
    run: Callable[[Clients], Awaitable[Outcome]]
    # 0 = allowed; a Modbus exception code, CIP general status or OPC UA status code; "refused" = no session
    expect: int | str


class Clients:
    """The real clients the steps use: pymodbus through each agent, pycomm3 through each agent, and an
    intruder with a certificate the gateway does not trust."""

    def __init__(self, lab: DemoLab) -> None:
        self.lab = lab
        self.modbus: dict[str, Any] = {}

    async def open(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        for who in ("operator", "vendor"):
            client = AsyncModbusTcpClient(
                "127.0.0.1", port=self.lab.ports[(who, MODBUS_ASSET)], timeout=3, retries=0
            )
            await client.connect()
            self.modbus[who] = client

    def close(self) -> None:
        for client in self.modbus.values():
            client.close()

    async def modbus_call(self, who: str, call: str, *args: Any) -> Outcome:
        method = getattr(self.modbus[who], call)
        if call.startswith("read_") and len(args) == 2:
            result = await method(args[0], count=args[1], device_id=1)
        else:
            result = await method(*args, device_id=1)
        if result.isError():
            return int(result.exception_code), f"exception 0x{result.exception_code:02X}"
        registers = getattr(result, "registers", None)
        return 0, f"ok {registers}" if registers else "ok"

    async def logix(self, who: str, action: Callable[[Any], Any]) -> Outcome:
        """``action`` on a pycomm3 LogixDriver through the person's agent (pycomm3 blocks: a thread)."""
        from pycomm3 import LogixDriver

        port = self.lab.ports[(who, ENIP_ASSET)]

        def run() -> Any:
            with LogixDriver(f"127.0.0.1:{port}") as driver:
                return action(driver)

        result = await asyncio.to_thread(run)
        if result.error is None:
            return 0, f"ok {result.value}" if result.value is not None else "ok"
        if "Permission denied" in str(result.error):  # pycomm3's words for general status 0x0F
            return PRIVILEGE_VIOLATION, "privilege violation 0x0F"
        return -1, f"error: {result.error}"

    async def opcua(self, who: str, action: Callable[[Any, int], Awaitable[Any]]) -> Outcome:
        """``action(client, namespace index)`` on an asyncua Client through the person's agent."""
        from asyncua.client.client import Client
        from asyncua.ua.uaerrors import UaStatusCodeError

        port = self.lab.ports[(who, OPCUA_ASSET)]
        try:
            async with Client(f"opc.tcp://127.0.0.1:{port}/", timeout=5) as client:
                result = await action(client, self.lab.opcua_plc.namespace_index)
        except UaStatusCodeError as error:
            return error.code, type(error).__name__
        return 0, "ok" if result is None else f"ok {result}"

    async def intruder(self) -> Outcome:
        from pymodbus.client import AsyncModbusTlsClient
        from pymodbus.exceptions import ModbusException

        files = self.lab.files["intruder"]
        client = AsyncModbusTlsClient(
            "127.0.0.1",
            port=self.lab.gateway.port,
            # Mallory trusts the gateway (its CA certificate is no secret) but holds another CA's certificate.
            sslctx=client_context(files.cert, files.key, self.lab.ca, server_name=MODBUS_ASSET),
            timeout=2,
            retries=0,
            reconnect_delay=0,
        )
        try:
            if await client.connect():
                await client.read_holding_registers(0, count=10, device_id=1)
        except ModbusException:
            pass
        finally:
            client.close()
        # The gateway audits a failed handshake when its side of it ends, a moment after the client's.
        for _ in range(100):
            if self.lab.gateway.runtime.metrics.refused_sessions:
                break
            await asyncio.sleep(0.01)
        return "refused", "session refused (TLS)"


def _reset(driver: Any) -> Any:
    from pycomm3 import Services

    return driver.generic_message(service=Services.reset, class_code=0x01, instance=1, connected=False)


def _modbus(who: str, text: str, call: str, *args: Any, expect: int) -> Step:
    return Step(who, f"Modbus: {text}", lambda c: c.modbus_call(who, call, *args), expect)


def _logix(who: str, text: str, action: Callable[[Any], Any], expect: int) -> Step:
    return Step(who, f"EtherNet/IP: {text}", lambda c: c.logix(who, action), expect)


def _opcua(who: str, text: str, action: Callable[[Any, int], Awaitable[Any]], expect: int) -> Step:
    return Step(who, f"OPC UA: {text}", lambda c: c.opcua(who, action), expect)


def _ua_node(ns: int, path: str) -> Any:
    from asyncua import ua

    return ua.NodeId.from_string(f"ns={ns};s={path}")


async def _ua_read(client: Any, ns: int, name: str) -> Any:
    value = await client.get_node(_ua_node(ns, f"{TANK}.{name}")).read_value()
    return round(value, 2) if isinstance(value, float) else value


async def _ua_setpoint(client: Any, ns: int, value: float) -> None:
    from asyncua import ua

    variant = ua.Variant(value, ua.VariantType.Double)
    await client.get_node(_ua_node(ns, f"{TANK}.Setpoint")).write_value(ua.DataValue(variant))


async def _ua_call(client: Any, ns: int, method: str) -> None:
    await client.get_node(_ua_node(ns, TANK)).call_method(_ua_node(ns, f"{TANK}.{method}"))


_SP = SETPOINT
STEPS = (
    _modbus("operator", "read holding 0-9 (FC 3)", "read_holding_registers", 0, 10, expect=0),
    _modbus("operator", "read input 0-4: tank level, temperature...", "read_input_registers", 0, 5, expect=0),
    _modbus("operator", f"write setpoint HR {_SP} = 1200 (FC 6)", "write_register", _SP, 1200, expect=0),
    _modbus("operator", f"write setpoint HR {_SP} = 2000 (FC 6)", "write_register", _SP, 2000, expect=3),
    _modbus("operator", f"write HR {_SP + 1} = 5 (FC 6)", "write_register", _SP + 1, 5, expect=2),
    _modbus("operator", "start the pump, coil 0 = 1 (FC 5)", "write_coil", 0, True, expect=1),
    _modbus("vendor", f"read setpoint HR {_SP} (FC 3)", "read_holding_registers", _SP, 1, expect=0),
    _modbus("vendor", f"write setpoint HR {_SP} = 1000 (FC 6)", "write_register", _SP, 1000, expect=1),
    _modbus("vendor", "read device identification (FC 43/14)", "read_device_information", expect=1),
    _modbus("vendor", "clear the diagnostic counters (FC 8/0A)", "diag_clear_counters", expect=1),
    _logix("operator", "read tag Setpoint", lambda d: d.read("Setpoint"), expect=0),
    _logix("operator", "write tag Setpoint = 1200", lambda d: d.write("Setpoint", 1200), expect=0),
    _logix(
        "operator",
        "write tag Setpoint = 2000",
        lambda d: d.write("Setpoint", 2000),
        expect=PRIVILEGE_VIOLATION,
    ),
    _logix("operator", "Reset the controller (Identity)", _reset, expect=PRIVILEGE_VIOLATION),
    _logix("vendor", "read tag Tank1_Level", lambda d: d.read("Tank1_Level"), expect=0),
    _logix(
        "vendor", "write tag Setpoint = 1000", lambda d: d.write("Setpoint", 1000), expect=PRIVILEGE_VIOLATION
    ),
    _opcua("operator", "read Tank1.Level", lambda c, ns: _ua_read(c, ns, "Level"), expect=0),
    _opcua("operator", "write Tank1.Setpoint = 1200", lambda c, ns: _ua_setpoint(c, ns, 1200.0), expect=0),
    _opcua(
        "operator",
        "write Tank1.Setpoint = 2000",
        lambda c, ns: _ua_setpoint(c, ns, 2000.0),
        expect=BAD_USER_ACCESS_DENIED,
    ),
    _opcua("operator", "call Tank1.Acknowledge()", lambda c, ns: _ua_call(c, ns, "Acknowledge"), expect=0),
    _opcua("vendor", "read Tank1.Setpoint", lambda c, ns: _ua_read(c, ns, "Setpoint"), expect=0),
    _opcua(
        "vendor", "call Tank1.Stop()", lambda c, ns: _ua_call(c, ns, "Stop"), expect=BAD_USER_ACCESS_DENIED
    ),
    Step("intruder", "Modbus: read with a certificate from another CA", lambda c: c.intruder(), "refused"),
)

# Connection upkeep a Logix client does around every call (and its start-up reads): not the request
# a row of the table is about.
_UPKEEP = frozenset(("forward_open", "large_forward_open", "forward_close"))


def _decided_by(lab: DemoLab, identity: str | None) -> str:
    """What the gateway's audit trail says about the latest decision for ``identity`` (None: the latest
    refused session, whose certificate proved no identity)."""
    lab.gateway.audit.flush()
    last: dict[str, Any] | None = None
    for line in (lab.work / "audit.jsonl").read_bytes().splitlines():
        event = orjson.loads(line)
        kind = event.get("event")
        if (identity is None and kind == "session_refused") or (
            identity is not None
            and event.get("identity") == identity
            and kind == "decision"
            and event.get("service") not in _UPKEEP
        ):
            last = event
    if last is None:
        return ""
    if last["event"] == "session_refused":
        return str(last["reason"])
    rule = str(last.get("rule") or "default deny")
    return rule if last.get("decision") == "allow" else f"{rule}: {last.get('reason')}"


async def _readyz(lab: DemoLab) -> dict[str, Any]:
    import aiohttp

    url = f"http://127.0.0.1:{lab.gateway.admin_port}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        found: dict[str, Any] = orjson.loads(await response.read())
    return found


async def _until(check: Callable[[], bool], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


GRANT_WINDOW_S = 25  # the vendor's grant in the walkthrough: long enough for its steps, short to wait out
POLL_INTERVAL_S = 0.05


async def ztgate(who: str, lab: DemoLab, *args: str, show: tuple[str, ...] = ("",)) -> tuple[int, str]:
    """``ztgate ARGS`` as ``who`` runs it (their credentials in ``$ZTGATE_CREDENTIALS``): prints the
    command and its output (the lines holding one of ``show``); returns (exit status, output). A
    child process, so the lab's event loop (gateway, center, agents) keeps running meanwhile."""
    print(f"  $ ZTGATE_CREDENTIALS={who}/ ztgate {' '.join(_quoted(a) for a in args)}")
    env = {**os.environ, "ZTGATE_CREDENTIALS": str(lab.work / who)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await process.communicate()
    text = out.decode().strip()
    for line in text.splitlines():
        if any(word in line for word in show):
            print(f"    {line}")
    return process.returncode or 0, text


def _quoted(arg: str) -> str:
    return f'"{arg}"' if " " in arg or "," in arg else arg


class Poller:
    """The vendor's pymodbus client through eve's agent, reading the setpoint every 50 ms until its
    connection goes: what a lock or the window's end cuts mid-poll."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reads = 0
        self.client: Any = None
        self.task: asyncio.Task[None] | None = None
        self.stopped_at = 0.0

    async def start(self) -> Outcome:
        from pymodbus.client import AsyncModbusTcpClient

        self.client = AsyncModbusTcpClient(
            "127.0.0.1", port=self.port, timeout=3, retries=0, reconnect_delay=0
        )
        await self.client.connect()
        first = await self.call("read_holding_registers", SETPOINT, count=1)
        if first[0] == 0:
            self.task = asyncio.get_running_loop().create_task(self._poll())
        return first

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Outcome:
        from pymodbus.exceptions import ModbusException

        try:
            result = await getattr(self.client, name)(*args, device_id=1, **kwargs)
        except ModbusException as error:
            return "cut", f"connection closed ({type(error).__name__})"
        if result.isError():
            return int(result.exception_code), f"exception 0x{result.exception_code:02X}"
        return 0, f"ok {getattr(result, 'registers', '')}".strip()

    async def _poll(self) -> None:
        while True:
            outcome, _ = await self.call("read_holding_registers", SETPOINT, count=1)
            if outcome != 0:
                self.stopped_at = asyncio.get_running_loop().time()
                return
            self.reads += 1
            await asyncio.sleep(POLL_INTERVAL_S)

    async def cut(self, timeout_s: float) -> bool:
        """Whether the poll stopped (its connection cut) within ``timeout_s``."""
        if self.task is None:
            return False
        done, _ = await asyncio.wait({self.task}, timeout=timeout_s)
        return bool(done)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.client is not None:
            self.client.close()


def _audit_events(lab: DemoLab, **match: Any) -> list[dict[str, Any]]:
    lab.gateway.audit.flush()
    events = [orjson.loads(line) for line in (lab.work / "audit.jsonl").read_bytes().splitlines()]
    return [e for e in events if all(e.get(k) == v for k, v in match.items())]


async def vendor_tour(lab: DemoLab) -> list[bool]:
    """Just-in-time access through the CLI: eve asks, bob approves, eve's pymodbus client works
    through her agent, a lock cuts it mid-poll, the lock goes, the window's end cuts it again."""
    results: list[bool] = []

    def say(ok: bool, text: str) -> None:
        results.append(ok)
        print(f"  {text}" + ("" if ok else "   <-- unexpected"))

    port = lab.ports[("vendor", MODBUS_ASSET)]
    print("\nJust-in-time vendor access (docs/access.md): eve (vendor), bob (approver), through the CLI:")
    before = Poller(port)
    await before.start()
    outcome, text = await before.call("write_register", SETPOINT, 1000)
    before.close()
    say(outcome == 1, f"eve writes setpoint HR {SETPOINT} = 1000 without a grant: {text} (vendor-read-only)")
    ops = f"read 0-99, write {SETPOINT} 0..1500"
    status, out = await ztgate(
        "eve", lab, "access", "request", "--asset", MODBUS_ASSET, "--protocol", "modbus", "--ops", ops,
        "--for", f"{GRANT_WINDOW_S}s", "--reason", "tune the pressure loop",
    )  # fmt: skip
    grant = out.split()[0] if status == 0 and out else ""
    say(grant.startswith("gr-"), f"eve asked: grant {grant or '(none)'} pending")
    if not grant.startswith("gr-"):
        return results
    await ztgate("bob", lab, "access", "ls")
    status, out = await ztgate("bob", lab, "access", "approve", grant)
    revision = out.rsplit("policy revision ", 1)[-1].rstrip(")") if "policy revision" in out else ""
    reached = await _until(lambda: lab.gateway.policy.revision == revision, 10.0)
    say(
        status == 0 and reached, f"bob approved: revision {revision} carries rule {grant}, the gateway has it"
    )

    poller = Poller(port)
    outcome, text = await poller.start()
    say(outcome == 0, f"eve polls setpoint HR {SETPOINT} every {POLL_INTERVAL_S * 1000:.0f} ms: {text}")
    outcome, text = await poller.call("write_register", SETPOINT, 1000)
    say(outcome == 0, f"eve writes setpoint HR {SETPOINT} = 1000 under the grant: {text}")
    outcome, text = await poller.call("write_register", SETPOINT, 2000)
    say(outcome == 3, f"eve writes setpoint HR {SETPOINT} = 2000 (outside the grant): {text}")
    outcome, text = await poller.call("write_register", SETPOINT + 1, 5)
    say(outcome == 2, f"eve writes HR {SETPOINT + 1} = 5 (outside the grant): {text}")

    reads = poller.reads
    status, out = await ztgate(
        "bob", lab, "lock", "create", "--target", f"grant={grant}", "--reason", "pressure alarm: hands off"
    )
    cut = status == 0 and await poller.cut(5.0)
    say(cut, f"the lock cut eve's session mid-poll (after {poller.reads - reads} more reads)")
    poller.close()
    lock = out.split()[0] if out else ""
    record = _audit_events(lab, event="session_cut", lock=lock)
    if record:
        print("    " + orjson.dumps(record[0]).decode())
    refused = Poller(port)
    outcome, text = await refused.start()
    refused.close()
    say(outcome != 0, f"while locked, eve connects again: {text}")

    await ztgate("bob", lab, "lock", "rm", lock)
    await _until(lambda: len(lab.gateway.runtime.locks) == 0, 5.0)
    poller = Poller(port)
    outcome, text = await poller.start()
    say(outcome == 0, f"lock removed: eve polls again: {text}")
    cut = await poller.cut(GRANT_WINDOW_S + 10.0)
    say(cut, "the window ended: the gateway cut eve's session on its own timer")
    poller.close()
    record = _audit_events(lab, event="session_cut", rule=grant)
    if record:
        print("    " + orjson.dumps(record[0]).decode())
    after = Poller(port)
    await after.start()
    outcome, text = await after.call("write_register", SETPOINT, 1000)
    after.close()
    say(
        outcome == 1, f"after the window, eve writes setpoint HR {SETPOINT} = 1000: {text} (vendor-read-only)"
    )
    print("  The center's audit of it (ztgate center audit, the grant and lock events):")
    await ztgate("bob", lab, "center", "audit", show=("grant_", "lock_"))
    return results


async def center_tour(lab: DemoLab, clients: Clients) -> list[bool]:
    """A push reaching the gateway; the center stopped, the gateway enforcing what it holds (stale,
    then closing its Modbus and EtherNet/IP PLCs, the OPC UA PLC static); the center back, a new
    revision applied. Prints each step; returns whether each went as promised."""
    link = lab.gateway.link
    assert link is not None
    results: list[bool] = []

    def say(ok: bool, text: str) -> None:
        results.append(ok)
        print(f"  {text}" + ("" if ok else "   <-- unexpected"))

    async def alice_reads(address: int) -> Outcome:
        return await clients.modbus_call("operator", "read_holding_registers", address, 1)

    print("\nThe center (its policy log: ztgate center policy log, with the admin's credentials):")
    policy = (lab.work / "policy.toml").read_text()
    outcome, text = await alice_reads(50)
    say(outcome == 0, f"revision {lab.gateway.policy.revision}: alice reads holding register 50: {text}")
    narrower = policy.replace(
        'modbus = [{ fc = [1, 2, 3, 4], address = "0-99" }]',
        'modbus = [{ fc = [1, 2, 3, 4], address = "0-9" }]',
    )
    revision = await lab.push(narrower, "operators read registers 0-9 only")
    pushed = asyncio.get_running_loop().time()
    reached = await _until(lambda: lab.gateway.policy.revision == str(revision), 5.0)
    took_ms = (asyncio.get_running_loop().time() - pushed) * 1000
    say(
        reached,
        f"pushed revision {revision} (registers 0-9 only): the gateway applied it {took_ms:.0f} ms later",
    )
    outcome, text = await alice_reads(50)
    say(outcome == 2, f"revision {revision}: alice reads holding register 50: {text}")

    await lab.stop_center()
    await _until(lambda: not link.connected, 5.0)
    await asyncio.sleep(1.0)  # pacing for the reader: let the staleness show
    outcome, text = await alice_reads(5)
    ready = (await _readyz(lab))["center"]
    say(
        outcome == 0 and not ready["connected"],
        f"center stopped: alice reads register 5: {text} (the last bundle decides)",
    )
    limit = ready["max_staleness_s"]
    print(f"  /readyz: center connected {ready['connected']}, stale for {ready['stale_s']} s of {limit:g}")
    await _until(lambda: link.stale, link.max_staleness_s + 5)
    outcome, text = await alice_reads(5)
    say(
        outcome == 1,
        f"past max_staleness_s: alice reads register 5 on {MODBUS_ASSET} (on_stale closed): {text}",
    )
    print(f"    decided by: {_decided_by(lab, OPERATOR)}")
    outcome, text = await clients.opcua("operator", lambda c, ns: _ua_read(c, ns, "Level"))
    say(
        outcome == 0,
        f"past max_staleness_s: alice reads Tank1.Level on {OPCUA_ASSET} (on_stale static): {text}",
    )
    ready = (await _readyz(lab))["center"]
    print(f"  /readyz: stale {ready['stale']}, closed assets {ready['closed_assets']} (not ready)")

    await lab.start_center()
    revision = await lab.push(policy, "operators read registers 0-99 again")
    caught_up = await _until(lambda: lab.gateway.policy.revision == str(revision) and not link.stale, 15.0)
    say(
        caught_up,
        f"center back, revision {revision} pushed: the gateway caught up and reopened {MODBUS_ASSET}",
    )
    outcome, text = await alice_reads(50)
    say(outcome == 0, f"revision {revision}: alice reads holding register 50: {text}")
    return results


def _print_table(lab: DemoLab, rows: list[tuple[str, str, str, str]], as_promised: list[bool]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = ("who", "request", "outcome", "decided by (from the audit trail)")
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row, ok in zip(rows, as_promised, strict=True):
        mark = "" if ok else "   <-- unexpected"
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + mark)
    for line in (lab.work / "audit.jsonl").read_bytes().splitlines():
        event = orjson.loads(line)
        if event.get("decision") == "deny" and event.get("fc") == 6 and event.get("values") == [2000]:
            print("\nThe audit record of the refused Modbus setpoint write:")
            print(orjson.dumps(event, option=orjson.OPT_INDENT_2).decode())
            break


async def walkthrough(lab: DemoLab) -> int:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the table says what happened
    logging.getLogger("pycomm3").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    logging.getLogger("ztgate").setLevel(logging.CRITICAL)  # the center tour says what happened
    clients = Clients(lab)
    await clients.open()
    identities = {"operator": OPERATOR, "vendor": VENDOR}
    names = {"operator": "alice (operator)", "vendor": "eve (vendor)", "intruder": "mallory (intruder)"}
    rows: list[tuple[str, str, str, str]] = []
    as_promised: list[bool] = []
    print("Enrolled with one-time tokens (ztgate center token create, then ztgate enroll on each host):")
    for line in lab.enrolled:
        print(f"  {line}")
    try:
        for step in STEPS:
            outcome, text = await step.run(clients)
            decided = _decided_by(lab, identities.get(step.who))
            rows.append((names[step.who], step.text, text, decided))
            as_promised.append(outcome == step.expect)
        _print_table(lab, rows, as_promised)
        vendor = await vendor_tour(lab)
        tour = await center_tour(lab, clients)
    finally:
        clients.close()
    failures = as_promised.count(False)
    print(f"\n{len(rows) - failures} of {len(rows)} outcomes as the policy says.")
    vendor_failures = vendor.count(False)
    print(f"{len(vendor) - vendor_failures} of {len(vendor)} vendor access steps as promised.")
    tour_failures = tour.count(False)
    print(f"{len(tour) - tour_failures} of {len(tour)} center steps as promised.")
    print(f"Audit trail: {lab.work}/audit.jsonl")
    return 1 if failures or vendor_failures or tour_failures else 0
