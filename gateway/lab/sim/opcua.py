"""An OPC UA soft PLC on asyncua's server: the tank cell of the Modbus simulator, as an address space.

Endpoint opc.tcp://HOST:PORT/ with SecurityPolicy None only and anonymous sessions, on loopback by default.
Namespace urn:ztgate:sim:plant (resolve its index by URI: it differs between servers). String node ids:

Objects
  Plant                      Folder     ns;s=Plant
    Line1                    Folder     ns;s=Plant.Line1
      Tank1                  Object     ns;s=Plant.Line1.Tank1
        Level                Double     %      read     tank level LT-101, 50.0 at start
        Temperature          Double     degC   read     TT-101, 21.5 +- 3
        Pressure             Double     mbar   read     PT-101, follows the setpoint with a lag
        Flow                 Double     l/min  read     FT-101, 48 +- 1.2 while the pump runs
        ScanCounter          UInt32            read     +1 per scan
        PumpRunning          Boolean           read     P-101 running
        InletOpen            Boolean           read     XV-101 open
        DrainOpen            Boolean           read     XV-102 open
        AlarmActive          Boolean           read     level high/low, temperature high, pressure
                                                        deviation or pump held off by low-level protection
        AlarmAcknowledged    Boolean           read     false from a new alarm until Acknowledge
        Setpoint             Double     mbar   read/write  pressure setpoint, 1000 at start; writes
                                                        outside 0-2500 get BadOutOfRange (EURange says so)
        DrainCommand         Boolean           read/write  opens the drain valve, false at start
        Start()              Method                     pump run command on
        Stop()               Method                     pump run command off
        Acknowledge() -> UInt32                         acknowledges the active alarms, returns how many

Commands take effect at the next scan, as in a PLC; Acknowledge at once. Every scan publishes the readings
with source and server timestamps, so subscriptions see the changes. --static keeps the scan-0 values:
nothing changes on its own.

Start-up: asyncua builds the standard address space (about 6,000 nodes) on every start, which takes 1-2 s;
the line printed at start says how long it took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from gateway.lab.sim.cli import add_simulator_parser, mode_text, serve
from gateway.lab.sim.plant import INITIAL_SETPOINT, Commands, Plant
from gateway.lab.sim.scans import run_scans

if TYPE_CHECKING:
    from asyncua import ua
    from asyncua.common.node import Node
    from asyncua.server.server import Server

log = logging.getLogger(__name__)

NAMESPACE_URI: Final = "urn:ztgate:sim:plant"
APPLICATION_URI: Final = "urn:ztgate:sim:opcua"
DEFAULT_LISTEN: Final = "127.0.0.1:4840"
SETPOINT_LOW: Final = 0.0
SETPOINT_HIGH: Final = 2500.0

FOLDERS: Final = ("Plant", "Line1")
TANK: Final = "Tank1"
# name -> (OPC UA type, unit, writable)
VARIABLES: Final = {
    "Level": ("Double", "%", False),
    "Temperature": ("Double", "degC", False),
    "Pressure": ("Double", "mbar", False),
    "Flow": ("Double", "l/min", False),
    "ScanCounter": ("UInt32", "", False),
    "PumpRunning": ("Boolean", "", False),
    "InletOpen": ("Boolean", "", False),
    "DrainOpen": ("Boolean", "", False),
    "AlarmActive": ("Boolean", "", False),
    "AlarmAcknowledged": ("Boolean", "", False),
    "Setpoint": ("Double", "mbar", True),
    "DrainCommand": ("Boolean", "", True),
}
METHODS: Final = ("Start", "Stop", "Acknowledge")


class _StartFailureFilter(logging.Filter):
    """asyncua logs a failed start (a port in use) with a traceback before raising; the simulator reports
    the OSError in one line itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("error starting server")


def _install_log_filter() -> None:
    server_log = logging.getLogger("asyncua.server.server")
    if not any(isinstance(f, _StartFailureFilter) for f in server_log.filters):
        server_log.addFilter(_StartFailureFilter())


def _check_free(host: str, port: int) -> None:
    """Bind ``host:port`` once as asyncio will (with SO_REUSEADDR) and let go: OSError if it is taken."""
    family, kind, protocol, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


async def stop_server(server: Server) -> None:
    """Stop an asyncua server promptly, with clients still trying to connect.

    asyncua's stop closes the connections it has, then the listener, then waits until every connection
    is gone: a client that reconnects in between (the gateway does, with backoff) would keep it waiting
    for as long as that connection lives. The listener is closed first here. And asyncua's stop waits for
    its once-a-second clock task to wake up; that task is cancelled instead."""
    listener = server.bserver._server if server.bserver is not None else None
    if listener is not None:
        listener.close()
    clock = server.iserver.time_task
    if clock is not None:
        clock.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await clock
        server.iserver.time_task = None
    await server.stop()


class OpcUaSim:
    """A running simulator: ``async with OpcUaSim() as sim`` or ``start_opcua_sim``.

    ``node_ids`` maps the names in the module docstring (folders, object, variables, methods) to their
    NodeIds. ``value``/``set_value`` read and write the address space directly, for test set-up and
    assertions; ``set_value`` skips the setpoint's bounds, as a programming tool would.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, static: bool = False, interval_s: float = 1.0
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        self.host = host
        self.port = port
        self.static = static
        self.interval_s = interval_s
        self.namespace_uri = NAMESPACE_URI
        self.namespace_index = 0
        self.node_ids: dict[str, ua.NodeId] = {}
        self.plant = Plant()
        self.scans = 0
        self.startup_s = 0.0
        self._pump_command = True
        self._acknowledged: frozenset[str] = frozenset()
        self._server: Server | None = None
        self._scanner: asyncio.Task[None] | None = None
        self._scanned = asyncio.Event()

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"opc.tcp://{host}:{self.port}/"

    # --------------------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        from asyncua import ua
        from asyncua.server.server import Server

        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        started = time.perf_counter()
        if self.port:
            _check_free(self.host, self.port)  # before the slow part: a port in use fails at once
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("ztgate simulated PLC (OPC UA)")
        await server.set_application_uri(APPLICATION_URI)
        # Only SecurityPolicy None: no certificates to make, nothing to negotiate, a lean start.
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.namespace_index = await server.register_namespace(NAMESPACE_URI)
        await self._build(server)
        self._bound_setpoint_writes(server)
        _install_log_filter()
        try:
            await server.start()  # on failure asyncua stops its internal server itself
        except OSError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self._server = server
        if server.bserver is not None:
            self.host, self.port = server.bserver.hostname, server.bserver.port
        await self._publish()
        self.startup_s = time.perf_counter() - started
        if not self.static:
            self._scanner = asyncio.create_task(run_scans(self.interval_s, self.step), name="opcua-sim-scans")

    async def stop(self) -> None:
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scanner
            self._scanner = None
        server, self._server = self._server, None
        if server is not None:
            await stop_server(server)

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------ process

    async def step(self, scans: int = 1) -> None:
        """Run the plant for ``scans`` scans now and publish (also in static mode, which only stops the
        timer): tests drive the process this way instead of waiting for it."""
        for _ in range(scans):
            setpoint = self.value("Setpoint")
            commands = Commands(
                pump_run=self._pump_command,
                inlet_open=True,
                drain_open=bool(self.value("DrainCommand")),
                pressure_setpoint=round(setpoint),
            )
            self.plant.scan(commands)
            self.scans += 1
        await self._publish()
        self._scanned.set()
        self._scanned = asyncio.Event()

    async def wait_scans(self, scans: int = 1, timeout_s: float = 5.0) -> None:
        """Wait until the timer has run ``scans`` more scans (TimeoutError after ``timeout_s``)."""
        target = self.scans + scans
        async with asyncio.timeout(timeout_s):
            while self.scans < target:
                await self._scanned.wait()

    def value(self, name: str) -> Any:
        """The value of variable ``name`` as a client reads it."""
        variant = self._running().read_attribute_value(self._node_id(name)).Value
        return None if variant is None else variant.Value

    async def set_value(self, name: str, value: Any) -> None:
        from asyncua import ua

        kind = VARIABLES[name][0] if name in VARIABLES else None
        if kind is None:
            raise KeyError(f"no variable {name!r} (variables: {', '.join(VARIABLES)})")
        variant = ua.Variant(value, getattr(ua.VariantType, kind))
        await self._running().write_attribute_value(self._node_id(name), self._data_value(variant))

    @property
    def pump_command(self) -> bool:
        return self._pump_command

    # ------------------------------------------------------------------------------ address space

    async def _build(self, server: Server) -> None:
        from asyncua import ua
        from asyncua.ua.object_ids import ObjectIds

        index = self.namespace_index

        def node_id(path: str) -> ua.NodeId:
            return ua.NodeId(ua.String(path), ua.Int16(index))

        parent: Node = server.nodes.objects
        path: list[str] = []
        for name in FOLDERS:
            path.append(name)
            parent = await parent.add_folder(node_id(".".join(path)), ua.QualifiedName(name, index))
            self.node_ids[name] = parent.nodeid
        path.append(TANK)
        tank = await parent.add_object(node_id(".".join(path)), ua.QualifiedName(TANK, index))
        self.node_ids[TANK] = tank.nodeid
        base = ".".join(path)
        for name, (kind, _unit, writable) in VARIABLES.items():
            initial = self._initial(name)
            variable = await tank.add_variable(
                node_id(f"{base}.{name}"),
                ua.QualifiedName(name, index),
                ua.Variant(initial, getattr(ua.VariantType, kind)),
            )
            if writable:
                await variable.set_writable()
            self.node_ids[name] = variable.nodeid
        await server.get_node(self.node_ids["Setpoint"]).add_property(
            node_id(f"{base}.Setpoint.EURange"),
            ua.QualifiedName("EURange", 0),
            ua.Range(Low=SETPOINT_LOW, High=SETPOINT_HIGH),
        )
        handlers: dict[str, tuple[Callable[[], Awaitable[list[ua.Variant]]], list[ua.Argument]]] = {
            "Start": (self._start_pump, []),
            "Stop": (self._stop_pump, []),
            "Acknowledge": (
                self._acknowledge,
                [
                    ua.Argument(
                        Name="Acknowledged", DataType=ua.NodeId(ua.Int32(ObjectIds.UInt32)), ValueRank=-1
                    )
                ],
            ),
        }
        for name in METHODS:
            handler, outputs = handlers[name]
            method = await tank.add_method(
                node_id(f"{base}.{name}"),
                ua.QualifiedName(name, index),
                _without_inputs(handler),
                [],
                outputs,
            )
            self.node_ids[name] = method.nodeid

    def _initial(self, name: str) -> Any:
        commands: dict[str, Any] = {"Setpoint": float(INITIAL_SETPOINT), "DrainCommand": False}
        return commands[name] if name in commands else self._readings()[name]

    def _readings(self) -> dict[str, Any]:
        plant = self.plant
        alarms = plant.alarms
        active = self._active_alarms()
        return {
            "Level": plant.level / 10,
            "Temperature": plant.temperature / 10,
            "Pressure": float(plant.pressure_reading),
            "Flow": plant.flow / 10,
            "ScanCounter": plant.scans & 0xFFFFFFFF,
            "PumpRunning": plant.pump_running,
            "InletOpen": plant.inlet_open,
            "DrainOpen": plant.drain_open,
            "AlarmActive": alarms.count() > 0,
            "AlarmAcknowledged": active <= self._acknowledged,
        }

    def _active_alarms(self) -> frozenset[str]:
        alarms = self.plant.alarms
        flags = {
            "LevelHigh": alarms.level_high,
            "LevelLow": alarms.level_low,
            "TemperatureHigh": alarms.temperature_high,
            "PressureDeviation": alarms.pressure_deviation,
            "PumpBlocked": alarms.pump_blocked,
        }
        return frozenset(name for name, active in flags.items() if active)

    async def _publish(self) -> None:
        from asyncua import ua

        server = self._running()
        # An alarm that cleared needs no acknowledgement any more; a new one does.
        self._acknowledged &= self._active_alarms()
        for name, value in self._readings().items():
            variant = ua.Variant(value, getattr(ua.VariantType, VARIABLES[name][0]))
            await server.write_attribute_value(self.node_ids[name], self._data_value(variant))

    @staticmethod
    def _data_value(variant: ua.Variant) -> ua.DataValue:
        from asyncua import ua

        now = ua.DateTime.now(datetime.UTC)
        return ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)

    def _bound_setpoint_writes(self, server: Server) -> None:
        """Writes of Setpoint outside its EURange get BadOutOfRange for that operation alone.

        asyncua's value setters can only fail a whole Write with a ServiceFault, so the server's Write is
        wrapped: out-of-range setpoints are answered here, everything else goes on to asyncua.
        """
        from asyncua import ua
        from asyncua.ua.attribute_ids import AttributeIds
        from asyncua.ua.status_codes import StatusCodes

        service = server.iserver.attribute_service
        write = service.write
        setpoint = self.node_ids["Setpoint"]

        def out_of_range(item: ua.WriteValue) -> bool:
            if item.NodeId != setpoint or item.AttributeId != AttributeIds.Value or item.Value.Value is None:
                return False
            number = item.Value.Value.Value
            if not isinstance(number, int | float) or isinstance(number, bool):
                return False  # asyncua answers BadTypeMismatch itself
            return math.isnan(number) or not SETPOINT_LOW <= number <= SETPOINT_HIGH

        async def bounded_write(params: ua.WriteParameters, *args: Any, **kwargs: Any) -> list[ua.StatusCode]:
            refused = [out_of_range(item) for item in params.NodesToWrite]
            if not any(refused):
                results: list[ua.StatusCode] = await write(params, *args, **kwargs)
                return results
            kept = [item for item, bad in zip(params.NodesToWrite, refused, strict=True) if not bad]
            done = iter(await write(ua.WriteParameters(NodesToWrite=kept), *args, **kwargs) if kept else [])
            return [
                ua.StatusCode(ua.UInt32(StatusCodes.BadOutOfRange)) if bad else next(done) for bad in refused
            ]

        service.write = bounded_write  # type: ignore[method-assign]

    # ------------------------------------------------------------------------------------ methods

    async def _start_pump(self) -> list[ua.Variant]:
        self._pump_command = True
        return []

    async def _stop_pump(self) -> list[ua.Variant]:
        self._pump_command = False
        return []

    async def _acknowledge(self) -> list[ua.Variant]:
        from asyncua import ua

        newly = self._active_alarms() - self._acknowledged
        self._acknowledged |= newly
        await self._publish()
        return [ua.Variant(len(newly), ua.VariantType.UInt32)]

    # ------------------------------------------------------------------------------------ helpers

    def _running(self) -> Server:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return self._server

    def _node_id(self, name: str) -> ua.NodeId:
        try:
            return self.node_ids[name]
        except KeyError:
            raise KeyError(f"no node {name!r} (nodes: {', '.join(self.node_ids)})") from None


def _without_inputs(
    handler: Callable[[], Awaitable[list[ua.Variant]]],
) -> Callable[..., Awaitable[list[ua.Variant] | ua.StatusCode]]:
    """asyncua passes whatever arguments a client sends and answers a handler's TypeError with
    BadUnexpectedError (and a logged traceback); these methods take none, so say so properly."""

    async def call(_parent: ua.NodeId, *arguments: ua.Variant) -> list[ua.Variant] | ua.StatusCode:
        from asyncua import ua
        from asyncua.ua.status_codes import StatusCodes

        if arguments:
            return ua.StatusCode(ua.UInt32(StatusCodes.BadTooManyArguments))
        return await handler()

    return call


async def start_opcua_sim(
    host: str = "127.0.0.1", port: int = 0, *, static: bool = False, interval_s: float = 1.0
) -> OpcUaSim:
    """Start a simulator; with port 0 the system picks a free port, read back from ``OpcUaSim.port``."""
    sim = OpcUaSim(host, port, static=static, interval_s=interval_s)
    await sim.start()
    return sim


# ---------------------------------------------------------------------------------------------- CLI


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_simulator_parser(subparsers, "opcua", "OPC UA soft PLC (asyncua)", __doc__, DEFAULT_LISTEN)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # asyncua warns at every start that a None-only endpoint cannot sign or encrypt: that is the point.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    host, port = args.listen

    def listening(sim: OpcUaSim) -> str:
        mode = mode_text(args.static, args.interval_s)
        return (
            f"listening on {sim.endpoint}, namespace {sim.namespace_uri} "
            f"({mode}, started in {sim.startup_s:.1f} s)"
        )

    start = partial(start_opcua_sim, host, port, static=args.static, interval_s=args.interval_s)
    return asyncio.run(serve("opcua", start, listening))


__all__: Sequence[str] = ["NAMESPACE_URI", "OpcUaSim", "configure", "run", "start_opcua_sim", "stop_server"]
