"""An EtherNet/IP soft PLC that looks like a ControlLogix controller (Logix tags over CIP), on loopback
by default: the tank cell of ``gateway.lab.sim.plant`` behind Logix tags.

Controller tags (the plant rewrites the program outputs every scan; client writes to them last until the
next scan; nothing a client writes to a command or memory tag is ever touched by the plant)
  Tank1_Level      REAL        %          program output: tank level LT-101, starts at 50.0
  Tank1_Temp       REAL        degC       program output: 21.5 +- 3, slow sine
  Tank1_Pressure   REAL        mbar       program output: follows Setpoint with a lag, +- 5 ripple
  Flow             REAL        l/min      program output: 48.0 +- 1.2 while the pump runs, else 0
  Pump_Running     BOOL                   program output: pump P-101 running
  Inlet_Open       BOOL                   program output: inlet valve XV-101 open
  Drain_Open       BOOL                   program output: drain valve XV-102 open
  Heartbeat        BOOL                   program output: toggles every scan
  Counter          DINT                   program output: scans since start
  Line1_Speed      INT         rpm        program output: pump speed, 1450 running, 0 stopped
  Alarms           DINT                   program output: bit 0 level high, 1 level low, 2 temperature
                                          high, 3 pressure deviation, 4 pump held off by low level
  Status_Word      UINT                   program output: bit 0 pump running, 1 inlet open, 2 drain open,
                                          3 any alarm, 4 heartbeat
  Valve_Pos        USINT       %          program output: inlet valve position, 100 open, 0 closed
  Pump_Runtime     UDINT       scans      program output: scans with the pump running
  Energy_Wh        ULINT       Wh         program output: +15 per scan with the pump running
  Total_Flow       LREAL       l          program output: the sum of Flow over the scans
  Trend            REAL[200]   %          program output: Tank1_Level of scan n at [n mod 200]
  Pump_Run         BOOL                   command, initial 1: run pump P-101
  Inlet_Cmd        BOOL                   command, initial 1: open the inlet valve
  Drain_Cmd        BOOL                   command, initial 0: open the drain valve
  Setpoint         DINT        mbar       command, initial 1000: pressure setpoint
  Recipe           DINT[10]               memory, initial 100, 200, ... 1000
  Zone_Temps       REAL[2,3]   degC       memory, initial 20.0, 20.5, ... 22.5
  Batch_ID         LINT                   memory, initial 202600000001
  Mode             SINT                   memory, initial 2
Program tags (program Main; read them as Program:Main.NAME)
  Step             DINT                   program output: 10 filling, 20 draining, 30 pump held off
  Fill_Count       DINT                   program output: how many times the inlet has reopened
  Enable           BOOL                   memory, initial 1

The controller answers to pycomm3's LogixDriver with its default start-up and to pylogix: identity,
tag list (Get Instance Attribute List), Read/Write Tag and their fragmented forms, Read-Modify-Write,
Multiple Service Packets, Forward Open (large from revision 20 on), Unconnected Send to 1/0. Atomic types
and arrays only: no structures, no BOOL arrays. Reset on Identity is answered and counted, never acted on.
--static keeps the initial values (scan 0) for deterministic tests: nothing changes on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from gateway.lab.sim.cli import add_simulator_parser, format_hostport, mode_text, serve
from gateway.lab.sim.enip_objects import MIN_LARGE_FORWARD_OPEN_REVISION, ConnectionManager, Identity
from gateway.lab.sim.enip_router import MessageRouter, Received
from gateway.lab.sim.enip_server import DEFAULT_CAPS, Caps, EnipServer
from gateway.lab.sim.enip_tags import TagSpec, TagTable, Value
from gateway.lab.sim.plant import INITIAL_SETPOINT, Commands, Plant
from gateway.lab.sim.scans import run_scans
from protocols.enip import DEFAULT_LIMITS, CipLimits

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:44818"
DEFAULT_REVISION = Identity().revision  # 20.11: pycomm3 reads tags by name below v21
TREND_LENGTH = 200
ENERGY_PER_SCAN_WH = 15

TAGS: tuple[TagSpec, ...] = (
    TagSpec("Tank1_Level", "REAL"),
    TagSpec("Tank1_Temp", "REAL"),
    TagSpec("Tank1_Pressure", "REAL"),
    TagSpec("Flow", "REAL"),
    TagSpec("Pump_Running", "BOOL"),
    TagSpec("Inlet_Open", "BOOL"),
    TagSpec("Drain_Open", "BOOL"),
    TagSpec("Heartbeat", "BOOL"),
    TagSpec("Counter", "DINT"),
    TagSpec("Line1_Speed", "INT"),
    TagSpec("Alarms", "DINT"),
    TagSpec("Status_Word", "UINT"),
    TagSpec("Valve_Pos", "USINT"),
    TagSpec("Pump_Runtime", "UDINT"),
    TagSpec("Energy_Wh", "ULINT"),
    TagSpec("Total_Flow", "LREAL"),
    TagSpec("Trend", "REAL", (TREND_LENGTH,)),
    TagSpec("Pump_Run", "BOOL", initial=True),
    TagSpec("Inlet_Cmd", "BOOL", initial=True),
    TagSpec("Drain_Cmd", "BOOL", initial=False),
    TagSpec("Setpoint", "DINT", initial=INITIAL_SETPOINT),
    TagSpec("Recipe", "DINT", (10,), initial=[100 * (i + 1) for i in range(10)]),
    TagSpec("Zone_Temps", "REAL", (2, 3), initial=[20.0 + 0.5 * i for i in range(6)]),
    TagSpec("Batch_ID", "LINT", initial=202600000001),
    TagSpec("Mode", "SINT", initial=2),
    TagSpec("Step", "DINT", program="Main"),
    TagSpec("Fill_Count", "DINT", program="Main"),
    TagSpec("Enable", "BOOL", initial=True, program="Main"),
)


def parse_revision(text: str) -> tuple[int, int]:
    """``"20.11"`` -> ``(20, 11)``: the major revision decides how pycomm3 addresses tags."""
    major, dot, minor = text.partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise ValueError(f"a revision is MAJOR.MINOR, such as 20.11, not {text!r}")
    return int(major), int(minor)


class EnipSim:
    """A running simulator: ``async with EnipSim() as sim`` or ``start_enip_sim``.

    ``tag("Recipe[3]")`` and ``set_tag("Setpoint", 1200)`` read and write the values clients see (a
    whole array reads as a list; ``Program:Main.Step`` names a program's tag); KeyError for an unknown
    tag, IndexError outside an array, ValueError for a value the type does not hold. ``received`` is the
    log of CIP requests answered, for tests to show what arrived (and what never did).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        static: bool = False,
        interval_s: float = 1.0,
        revision: tuple[int, int] | str | None = None,
        identity: Identity | None = None,
        caps: Caps = DEFAULT_CAPS,
        limits: CipLimits = DEFAULT_LIMITS,
        max_log: int = 10_000,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        identity = Identity() if identity is None else identity
        if revision is not None:
            revision = parse_revision(revision) if isinstance(revision, str) else revision
            identity = dataclasses.replace(identity, revision=revision)
        self.identity = identity
        self.host = host
        self.port = port
        self.static = static
        self.interval_s = interval_s
        self.scans = 0
        self.plant = Plant()
        self.tags = TagTable(TAGS)
        self.router = MessageRouter(
            self.tags,
            self.identity,
            _connection_manager(self.identity, caps),
            limits=limits,
            max_log=max_log,
        )
        self.server = EnipServer(self.router, caps=caps, limits=limits)
        self._running = False
        self._scanner: asyncio.Task[None] | None = None
        self._scanned = asyncio.Event()
        self._publish()

    # ------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._running:
            raise RuntimeError("the simulator is already running")
        await self.server.start(self.host, self.port)
        self._running = True
        self.host, self.port = self.server.host, self.server.port
        if not self.static:
            self._scanner = asyncio.create_task(run_scans(self.interval_s, self.step), name="enip-sim-scans")

    async def stop(self) -> None:
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scanner
            self._scanner = None
        if self._running:
            await self.server.stop()
            self._running = False

    async def __aenter__(self) -> Self:
        if not self._running:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------------------------- tags

    def tag(self, name: str) -> Value | list[Value]:
        tag, element = self.tags.lookup(name)
        if element is None:
            return tag.values() if tag.dims else tag.values()[0]
        return tag.values(element, 1)[0]

    def set_tag(self, name: str, value: Value | Sequence[Value]) -> None:
        """A scalar, an element (``Recipe[3]``), or a list from an element on (or the whole array)."""
        tag, element = self.tags.lookup(name)
        if isinstance(value, str | bytes):
            raise ValueError(f"{tag.full_name}: atomic tags hold numbers, not {value!r}")
        values = list(value) if isinstance(value, Sequence) else [value]
        if tag.dims and element is None and isinstance(value, Sequence) and len(values) != tag.count:
            raise ValueError(f"{tag.full_name} holds {tag.count} elements, got {len(values)}")
        tag.store(element or 0, values)

    @property
    def received(self) -> list[Received]:
        return list(self.router.received)

    def writes(self, tag: str | None = None) -> list[Received]:
        """The tag writes received (Write Tag, fragmented or not, and Read-Modify-Write), of one tag
        (case-insensitive, element included: ``Recipe[3]``) or of all."""
        key = None if tag is None else tag.lower()
        return [r for r in self.router.received if r.writes and (key is None or (r.tag or "").lower() == key)]

    @property
    def resets(self) -> int:
        """How many Reset requests on the Identity object arrived (the simulator never resets)."""
        return self.router.resets

    # ---------------------------------------------------------------------------------- scans

    def step(self, scans: int = 1) -> None:
        """Run the plant for ``scans`` scans now (also in static mode, which only stops the timer)."""
        for _ in range(scans):
            setpoint = self._int("Setpoint")
            commands = Commands(
                bool(self.tag("Pump_Run")),
                bool(self.tag("Inlet_Cmd")),
                bool(self.tag("Drain_Cmd")),
                min(0xFFFF, max(0, setpoint)),
            )
            inlet_was_open = self.plant.inlet_open
            self.plant.scan(commands)
            if self.plant.inlet_open and not inlet_was_open:
                self.set_tag("Program:Main.Fill_Count", self._int("Program:Main.Fill_Count") + 1)
            if self.plant.pump_running:
                self.set_tag("Pump_Runtime", self._int("Pump_Runtime") + 1)
                self.set_tag("Energy_Wh", self._int("Energy_Wh") + ENERGY_PER_SCAN_WH)
            self.set_tag("Total_Flow", self._float("Total_Flow") + self.plant.flow / 10)
            self._publish()
            self.scans += 1
        self._scanned.set()
        self._scanned = asyncio.Event()

    async def wait_scans(self, scans: int = 1, timeout_s: float = 5.0) -> None:
        """Wait until the timer has run ``scans`` more scans (TimeoutError after ``timeout_s``)."""
        target = self.scans + scans
        async with asyncio.timeout(timeout_s):
            while self.scans < target:
                await self._scanned.wait()

    def _int(self, name: str) -> int:
        value = self.tag(name)
        if not isinstance(value, int):
            raise TypeError(f"{name} is not an integer tag")
        return value

    def _float(self, name: str) -> float:
        value = self.tag(name)
        if not isinstance(value, float):
            raise TypeError(f"{name} is not a REAL or LREAL tag")
        return value

    def _publish(self) -> None:
        """Write the plant's readings into the tags the program owns."""
        plant = self.plant
        alarms = plant.alarms
        alarm_bits = (
            alarms.level_high
            | alarms.level_low << 1
            | alarms.temperature_high << 2
            | alarms.pressure_deviation << 3
            | alarms.pump_blocked << 4
        )
        status = (
            plant.pump_running
            | plant.inlet_open << 1
            | plant.drain_open << 2
            | (alarms.count() > 0) << 3
            | plant.heartbeat << 4
        )
        level = plant.level / 10
        step = 30 if alarms.pump_blocked else 10 if plant.inlet_open else 20
        outputs: dict[str, Value] = {
            "Tank1_Level": level,
            "Tank1_Temp": plant.temperature / 10,
            "Tank1_Pressure": float(plant.pressure_reading),
            "Flow": plant.flow / 10,
            "Pump_Running": plant.pump_running,
            "Inlet_Open": plant.inlet_open,
            "Drain_Open": plant.drain_open,
            "Heartbeat": plant.heartbeat,
            "Counter": plant.scans & 0x7FFF_FFFF,
            "Line1_Speed": plant.pump_speed,
            "Alarms": alarm_bits,
            "Status_Word": status,
            "Valve_Pos": 100 if plant.inlet_open else 0,
            f"Trend[{plant.scans % TREND_LENGTH}]": level,
            "Program:Main.Step": step,
        }
        for name, value in outputs.items():
            self.set_tag(name, value)


def _connection_manager(identity: Identity, caps: Caps) -> ConnectionManager:
    # Logix took Large Forward Open with v20: an older controller answers it 0x08 and pycomm3 falls back.
    large = identity.revision[0] >= MIN_LARGE_FORWARD_OPEN_REVISION
    return ConnectionManager(
        max_connections=caps.max_connections, large_forward_open=large, max_size=caps.max_connection_size
    )


async def start_enip_sim(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    static: bool = False,
    interval_s: float = 1.0,
    revision: tuple[int, int] | str | None = None,
) -> EnipSim:
    """Start a simulator; with port 0 the system picks a free port, read back from ``EnipSim.port``."""
    sim = EnipSim(host, port, static=static, interval_s=interval_s, revision=revision)
    await sim.start()
    return sim


# ---------------------------------------------------------------------------------------------- CLI


def _revision(text: str) -> tuple[int, int]:
    try:
        major, minor = parse_revision(text)
        Identity(revision=(major, minor))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return major, minor


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "EtherNet/IP soft PLC with Logix tags (pycomm3, pylogix)"
    parser = add_simulator_parser(subparsers, "enip", summary, __doc__, DEFAULT_LISTEN)
    parser.add_argument(
        "--revision",
        type=_revision,
        default=DEFAULT_REVISION,
        metavar="MAJOR.MINOR",
        help="firmware revision to report (default 20.11; from 21 on pycomm3 reads tags by symbol instance)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen

    async def start() -> EnipSim:
        try:
            return await start_enip_sim(
                host, port, static=args.static, interval_s=args.interval_s, revision=args.revision
            )
        except OSError as exc:
            raise OSError(f"cannot listen on {format_hostport(host, port)}: {exc}") from exc

    def listening(sim: EnipSim) -> str:
        major, minor = args.revision
        where = format_hostport(sim.host, sim.port)
        return f"listening on {where}, revision {major}.{minor} ({mode_text(args.static, args.interval_s)})"

    return asyncio.run(serve("enip", start, listening))


__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_REVISION",
    "TAGS",
    "Caps",
    "EnipSim",
    "Identity",
    "Received",
    "configure",
    "parse_revision",
    "run",
    "start_enip_sim",
]
