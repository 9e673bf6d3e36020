"""A Modbus TCP soft PLC on pymodbus's server: a small tank cell per unit id, on loopback by default.

Register map, per unit (0-based wire addresses; every table holds addresses 0-9999, anything beyond
answers exception 2, illegal data address):

Input registers (FC 4, read-only), rewritten by the plant every scan
   0  tank level LT-101        0.1 %       starts at 500; saw-tooths between about 300 and 900
   1  temperature TT-101       0.1 degC    215 +- 30, slow sine
   2  pressure PT-101          mbar        follows the setpoint (HR 40) with a lag, +- 5 ripple
   3  flow FT-101              0.1 l/min   480 +- 12 while the pump runs, else 0
   4  scan counter                         +1 per scan, wraps at 65536
   5  active setpoint          mbar        HR 40 as the last scan read it
   6  pump P-101 speed         rpm         1450 running, 0 stopped
   7  unit id                              the unit id these tables belong to
   8  status word                          bit 0 pump running, 1 inlet open, 2 drain open,
                                           3 any alarm, 4 heartbeat
   9  active alarms                        how many of DI 0-4 are set
  10-9999                                  0
Holding registers (FC 3, 6, 16, 22, 23): read/write memory; the plant reads HR 40, never writes any
  40  pressure setpoint, mbar, initial 1000
  all others initial 0
Coils (FC 1, 5, 15)
   0  pump P-101 run command          client-owned, initial 1
   1  inlet valve XV-101 open command client-owned, initial 1
   2  drain valve XV-102 open command client-owned, initial 0
   3-7  spare commands                client-owned, initial 0
   8  pump P-101 running              program output
   9  inlet valve open                program output
  10  drain valve open                program output
  11  heartbeat, toggles every scan   program output
  12-15  chaser: one of the four on, moving one place per scan (program outputs)
  16-9999  memory, initial 0
  Program outputs are rewritten every scan, as a PLC program rewrites its outputs: a client's write to
  coils 8-15 lasts until the next scan. Nothing else a client writes is ever touched by the plant.
Discrete inputs (FC 2, read-only), rewritten every scan
   0  LAH level high (level >= 900)     1  LAL level low (level <= 100)
   2  TAH temperature high (>= 240)     3  PDA pressure deviation (|PT-101 - setpoint| > 50)
   4  pump held off by low-level protection although commanded
   5  watchdog, toggles every scan     15  power OK, always 1
   6-14 and 16-9999  0

Plant: the inlet fills 12 per scan, the pump drains 8, the drain valve 10 (0.1 % units); the inlet closes
at 900 and reopens at 300; the pump trips at 100 and restarts at 200.

Each --unit gets its own tables and plant. A unit id that is not served is answered with exception 4
(server device failure): that is pymodbus's answer when no catch-all device is configured, and like a
real device the simulator has none (unit 0 is refused because pymodbus would make it the catch-all).
--static keeps the initial values (scan 0) for deterministic tests: nothing changes on its own.
--fault KIND puts a fault front before the server (gateway/lab/sim/faults.py): wrong-tid, late, short
or trickle, on --fault-replies replies (default 1; 0 for all) after --fault-after good ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from gateway.lab.sim.cli import add_simulator_parser, format_hostport, mode_text, serve
from gateway.lab.sim.faults import FAULT_KINDS, Fault, FaultFront
from gateway.lab.sim.plant import INITIAL_SETPOINT, Commands, Plant
from gateway.lab.sim.scans import run_scans

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import SimDevice

log = logging.getLogger(__name__)

TABLE_SIZE = 10_000
SETPOINT_REGISTER = 40
PROGRAM_COILS = range(8, 16)
ALARM_INPUTS = 16  # discrete inputs 0-15
DEFAULT_LISTEN = "127.0.0.1:5020"

_COMMAND_COILS = 0  # coils 0-2: pump run, inlet open, drain open
_INITIAL_COMMAND_COILS = (True, True)  # coils 0 and 1; the rest start at 0

# Which of pymodbus's four tables a function code works on (its own mapping is private).
_TABLE_OF_FC = {1: "c", 5: "c", 15: "c", 2: "d", 3: "h", 6: "h", 16: "h", 22: "h", 23: "h", 4: "i"}

_Action = Callable[[int, int, int, int, list[int], list[int] | list[bool] | None], Coroutine[Any, Any, None]]


def _check_span(address: int, count: int) -> None:
    if count < 1 or address < 0 or address + count > TABLE_SIZE:
        raise IndexError(f"addresses {address}..{address + count - 1} are outside 0..{TABLE_SIZE - 1}")


class _WordTable:
    """A register table, through the very list pymodbus serves requests from."""

    def __init__(self, start: int, words: list[int]) -> None:
        self._start = start
        self._words = words

    def read(self, address: int, count: int) -> list[int]:
        _check_span(address, count)
        offset = address - self._start
        return self._words[offset : offset + count]

    def write(self, address: int, values: Sequence[int]) -> None:
        _check_span(address, len(values))
        if any(not 0 <= value <= 0xFFFF for value in values):
            raise ValueError("register values are 16-bit unsigned (0..65535)")
        offset = address - self._start
        self._words[offset : offset + len(values)] = values


class _BitTable:
    """A coil or discrete-input table: pymodbus packs 16 bits per list item, bit 0 first."""

    def __init__(self, start: int, words: list[int]) -> None:
        self._start = start
        self._words = words

    def read(self, address: int, count: int) -> list[bool]:
        _check_span(address, count)
        words, start = self._words, self._start
        return [bool(words[a // 16 - start] >> (a % 16) & 1) for a in range(address, address + count)]

    def write(self, address: int, values: Sequence[bool]) -> None:
        _check_span(address, len(values))
        for a, value in enumerate(values, start=address):
            index, mask = a // 16 - self._start, 1 << (a % 16)
            self._words[index] = self._words[index] | mask if value else self._words[index] & ~mask


@dataclass
class _Unit:
    plant: Plant
    coils: _BitTable
    discrete_inputs: _BitTable
    holding: _WordTable
    inputs: _WordTable


def _device(unit: int, action: _Action) -> SimDevice:
    from pymodbus.simulator import DataType, SimData, SimDevice

    command_coils = list(_INITIAL_COMMAND_COILS)
    # Bits are given as value lists: pymodbus 3.16 builds a BITS block with count=N in O(N**2).
    coils = [False] * TABLE_SIZE
    coils[: len(command_coils)] = command_coils
    holding = [
        SimData(0, count=SETPOINT_REGISTER, values=0, datatype=DataType.REGISTERS),
        SimData(SETPOINT_REGISTER, values=INITIAL_SETPOINT, datatype=DataType.REGISTERS),
        SimData(
            SETPOINT_REGISTER + 1,
            count=TABLE_SIZE - SETPOINT_REGISTER - 1,
            values=0,
            datatype=DataType.REGISTERS,
        ),
    ]
    return SimDevice(
        unit,
        # Four separate tables (coils, discrete inputs, holding, input), bit-addressed like most PLCs.
        simdata=(
            [SimData(0, values=coils, datatype=DataType.BITS)],
            [SimData(0, values=[False] * TABLE_SIZE, datatype=DataType.BITS)],
            holding,
            [SimData(0, count=TABLE_SIZE, values=0, datatype=DataType.REGISTERS)],
        ),
        action=action,
    )


def _install_log_filter() -> None:
    """pymodbus logs an unknown unit id as an error with a KeyError traceback and a frame dump; the
    simulator logs one line per unknown unit itself, so that record is dropped."""
    pymodbus_log = logging.getLogger("pymodbus.logging")
    if not any(isinstance(f, _UnknownUnitFilter) for f in pymodbus_log.filters):
        pymodbus_log.addFilter(_UnknownUnitFilter())


class _UnknownUnitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Datastore unable to fulfill request") and "KeyError" in message)


class ModbusSim:
    """A running simulator: ``async with ModbusSim(units=(1, 17)) as sim`` or ``start_modbus_sim``.

    The accessors read and write the tables the server answers from, for test set-up and assertions;
    they raise KeyError for a unit that is not served and IndexError outside addresses 0-9999.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        units: Sequence[int] = (1,),
        static: bool = False,
        interval_s: float = 1.0,
        fault: Fault | None = None,
    ) -> None:
        units = tuple(units)
        if not units:
            raise ValueError("serve at least one unit id")
        if len(set(units)) != len(units):
            raise ValueError(f"unit ids repeat: {units}")
        for unit in units:
            if not 1 <= unit <= 255:
                # 0 would be pymodbus's catch-all device, answering every unit id.
                raise ValueError(f"unit id {unit} is outside 1..255")
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        self.host = host
        self.port = port
        self.units = units
        self.static = static
        self.interval_s = interval_s
        self.scans = 0
        self.fault = fault
        self.front: FaultFront | None = None  # on host:port when there is a fault; the server behind it
        self._server: ModbusTcpServer | None = None
        self._scanner: asyncio.Task[None] | None = None
        self._units: dict[int, _Unit] = {}
        self._scanned = asyncio.Event()
        self._warned_units: set[int] = set()

    async def start(self) -> None:
        from pymodbus.server import ModbusTcpServer

        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        _install_log_filter()
        captured: dict[tuple[int, str], tuple[int, list[int]]] = {}

        def capture(unit: int) -> _Action:
            async def action(
                func_code: int,
                start_address: int,
                _address: int,
                _count: int,
                registers: list[int],
                _values: list[int] | list[bool] | None,
            ) -> None:
                # pymodbus hands every action the live table ("modify inline"): keep it for direct access.
                captured.setdefault((unit, _TABLE_OF_FC[func_code]), (start_address, registers))

            return action

        listen = (self.host, 0 if self.fault is not None else self.port)
        server = ModbusTcpServer(
            [_device(unit, capture(unit)) for unit in self.units],
            address=listen,
            trace_pdu=self._trace_pdu,
        )
        for unit in self.units:
            for func_code in (1, 2, 3, 4):
                await server.async_getValues(unit, func_code, 0, 1)
            try:
                self._units[unit] = _Unit(
                    plant=Plant(),
                    coils=_BitTable(*captured[unit, "c"]),
                    discrete_inputs=_BitTable(*captured[unit, "d"]),
                    holding=_WordTable(*captured[unit, "h"]),
                    inputs=_WordTable(*captured[unit, "i"]),
                )
            except KeyError as exc:
                raise RuntimeError("pymodbus did not pass its tables to the device action") from exc
            self._publish(unit)

        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            # pymodbus has logged the OSError itself; it raises only this generic error.
            raise OSError(f"cannot listen on {format_hostport(self.host, self.port)}") from exc
        # The listener is the loop's server object: asyncio.Server, or uvloop's look-alike that is no
        # subclass of it, so only its documented ``sockets`` attribute is relied on.
        sockets: Sequence[socket.socket] | None = getattr(server.transport, "sockets", None)
        if not sockets:
            await server.shutdown()  # type: ignore[no-untyped-call]
            raise RuntimeError("pymodbus's listener has no socket")
        # A name such as "localhost" may bind several sockets (each its own port when port is 0);
        # report the first one's real address so host:port always reaches this simulator.
        device_host, device_port = sockets[0].getsockname()[:2]
        self._server = server
        if self.fault is not None:
            self.front = FaultFront(self.fault, (device_host, device_port), self.host, self.port)
            await self.front.start()
            device_host, device_port = self.front.host, self.front.port
        self.host, self.port = device_host, device_port
        if not self.static:
            self._scanner = asyncio.create_task(
                run_scans(self.interval_s, self.step), name="modbus-sim-scans"
            )

    async def stop(self) -> None:
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scanner
            self._scanner = None
        if self.front is not None:
            await self.front.stop()
            self.front = None
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def step(self, scans: int = 1) -> None:
        """Run the plant for ``scans`` scans on every unit now (also in static mode, which only stops the
        timer): tests drive the process this way instead of waiting for it."""
        for _ in range(scans):
            for unit, tables in self._units.items():
                pump, inlet, drain = tables.coils.read(_COMMAND_COILS, 3)
                setpoint = tables.holding.read(SETPOINT_REGISTER, 1)[0]
                tables.plant.scan(Commands(pump, inlet, drain, setpoint))
                self._publish(unit)
            self.scans += 1
        self._scanned.set()
        self._scanned = asyncio.Event()

    async def wait_scans(self, scans: int = 1, timeout_s: float = 5.0) -> None:
        """Wait until the timer has run ``scans`` more scans (TimeoutError after ``timeout_s``)."""
        target = self.scans + scans
        async with asyncio.timeout(timeout_s):
            while self.scans < target:
                await self._scanned.wait()

    def holding(self, unit: int, address: int, count: int = 1) -> list[int]:
        return self._unit(unit).holding.read(address, count)

    def set_holding(self, unit: int, address: int, values: Sequence[int]) -> None:
        self._unit(unit).holding.write(address, values)

    def input_registers(self, unit: int, address: int, count: int = 1) -> list[int]:
        return self._unit(unit).inputs.read(address, count)

    def coils(self, unit: int, address: int, count: int = 1) -> list[bool]:
        return self._unit(unit).coils.read(address, count)

    def set_coils(self, unit: int, address: int, values: Sequence[bool]) -> None:
        self._unit(unit).coils.write(address, values)

    def discrete_inputs(self, unit: int, address: int, count: int = 1) -> list[bool]:
        return self._unit(unit).discrete_inputs.read(address, count)

    def plant(self, unit: int) -> Plant:
        return self._unit(unit).plant

    def _unit(self, unit: int) -> _Unit:
        try:
            return self._units[unit]
        except KeyError:
            served = ", ".join(map(str, self.units))
            raise KeyError(f"unit {unit} is not served (units: {served})") from None

    def _publish(self, unit: int) -> None:
        """Write the plant's readings into the tables the plant owns (never holding registers)."""
        tables = self._units[unit]
        plant = tables.plant
        alarms = plant.alarms
        status = (
            plant.pump_running
            | plant.inlet_open << 1
            | plant.drain_open << 2
            | (alarms.count() > 0) << 3
            | plant.heartbeat << 4
        )
        tables.inputs.write(
            0,
            [
                plant.level,
                plant.temperature,
                plant.pressure_reading,
                plant.flow,
                plant.scans & 0xFFFF,
                plant.setpoint,
                plant.pump_speed,
                unit,
                status,
                alarms.count(),
            ],
        )
        chaser = [plant.scans % 4 == i for i in range(4)]
        tables.coils.write(
            PROGRAM_COILS.start,
            [plant.pump_running, plant.inlet_open, plant.drain_open, plant.heartbeat, *chaser],
        )
        inputs = [False] * ALARM_INPUTS
        inputs[:6] = [
            alarms.level_high,
            alarms.level_low,
            alarms.temperature_high,
            alarms.pressure_deviation,
            alarms.pump_blocked,
            plant.heartbeat,
        ]
        inputs[15] = True
        tables.discrete_inputs.write(0, inputs)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        unit: int = pdu.dev_id
        if not sending and unit not in self._units and unit not in self._warned_units:
            self._warned_units.add(unit)
            log.warning("request for unit %d, which is not served: answered exception 4", unit)
        return pdu


async def start_modbus_sim(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    units: Sequence[int] = (1,),
    static: bool = False,
    interval_s: float = 1.0,
    fault: Fault | None = None,
) -> ModbusSim:
    """Start a simulator; with port 0 the system picks a free port, read back from ``ModbusSim.port``."""
    sim = ModbusSim(host, port, units=units, static=static, interval_s=interval_s, fault=fault)
    await sim.start()
    return sim


# ---------------------------------------------------------------------------------------------- CLI


def _unit_id(text: str) -> int:
    try:
        unit = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a unit id: {text!r}") from None
    if not 1 <= unit <= 255:
        raise argparse.ArgumentTypeError(f"unit id {unit} is outside 1..255")
    return unit


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "Modbus TCP soft PLC (pymodbus)"
    parser = add_simulator_parser(subparsers, "modbus", summary, __doc__, DEFAULT_LISTEN)
    parser.add_argument(
        "--unit",
        type=_unit_id,
        action="append",
        dest="units",
        metavar="ID",
        help="unit id to serve, 1-255; repeat for several (default 1)",
    )
    parser.add_argument("--fault", choices=FAULT_KINDS, help="spoil replies on purpose (see above)")
    parser.add_argument("--fault-after", type=int, default=0, metavar="N", help="good replies first")
    parser.add_argument(
        "--fault-replies", type=int, default=1, metavar="N", help="replies to spoil (0: all; default 1)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    units: list[int] = args.units or [1]
    if len(set(units)) != len(units):
        print(f"ztgate sim modbus: unit ids repeat: {units}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen

    def listening(sim: ModbusSim) -> str:
        served = ", ".join(map(str, sim.units))
        where = format_hostport(sim.host, sim.port)
        faulty = f", fault {sim.fault.kind}" if sim.fault is not None else ""
        return f"listening on {where}, units {served} ({mode_text(args.static, args.interval_s)}){faulty}"

    fault = None
    if args.fault is not None:
        try:
            fault = Fault(args.fault, args.fault_after, args.fault_replies or None)
        except ValueError as exc:
            print(f"ztgate sim modbus: {exc}", file=sys.stderr)
            return 2
    start = partial(
        start_modbus_sim, host, port, units=units, static=args.static, interval_s=args.interval_s, fault=fault
    )
    return asyncio.run(serve("modbus", start, listening))
