"""The process cell behind every simulated PLC: a tank with an inlet valve, a drain valve, a pump and a
pressure loop. Pure and deterministic (no clock, no randomness): one ``scan`` advances it by one PLC scan,
so tests can drive it step by step and every protocol simulator shows the same plant.

Units: level in 0.1 % of the tank (0-1000), temperature in 0.1 degC, pressure in mbar, flow in 0.1 l/min.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL_MAX = 1000
INLET_FILL_PER_SCAN = 12
PUMP_DRAIN_PER_SCAN = 8
DRAIN_VALVE_PER_SCAN = 10
# The inlet closes near full and reopens well below, so the level saw-tooths instead of chattering.
INLET_CLOSE_LEVEL = 900
INLET_REOPEN_LEVEL = 300
# Low-level protection keeps the pump from running dry; the restart level is higher for the same reason.
PUMP_TRIP_LEVEL = 100
PUMP_RESTART_LEVEL = 200

LEVEL_HIGH_ALARM = 900
LEVEL_LOW_ALARM = 100
TEMPERATURE_BASE = 215
TEMPERATURE_SWING = 30
TEMPERATURE_HIGH_ALARM = 240
PRESSURE_RIPPLE = 5
PRESSURE_DEVIATION_ALARM = 50
PUMP_FLOW = 480
PUMP_FLOW_RIPPLE = 12
PUMP_SPEED_RPM = 1450

INITIAL_LEVEL = 500
INITIAL_SETPOINT = 1000


@dataclass(frozen=True)
class Commands:
    """What the operator asks of the cell, read from the PLC's writable data before each scan."""

    pump_run: bool
    inlet_open: bool
    drain_open: bool
    pressure_setpoint: int


@dataclass(frozen=True)
class Alarms:
    level_high: bool
    level_low: bool
    temperature_high: bool
    pressure_deviation: bool
    pump_blocked: bool  # commanded to run but held off by low-level protection

    def count(self) -> int:
        flags = (self.level_high, self.level_low, self.temperature_high, self.pressure_deviation)
        return sum(flags) + self.pump_blocked


@dataclass
class Plant:
    """State after ``scans`` scans. The initial state is what a freshly started PLC shows (scan 0)."""

    scans: int = 0
    level: int = INITIAL_LEVEL
    pressure: float = float(INITIAL_SETPOINT)
    setpoint: int = INITIAL_SETPOINT
    pump_commanded: bool = True
    pump_running: bool = True
    inlet_open: bool = True
    drain_open: bool = False

    def scan(self, commands: Commands) -> None:
        self.pump_commanded = commands.pump_run
        if not commands.pump_run or self.level <= PUMP_TRIP_LEVEL:
            self.pump_running = False
        elif self.level >= PUMP_RESTART_LEVEL:
            self.pump_running = True
        if not commands.inlet_open or self.level >= INLET_CLOSE_LEVEL:
            self.inlet_open = False
        elif self.level <= INLET_REOPEN_LEVEL:
            self.inlet_open = True
        self.drain_open = commands.drain_open

        change = INLET_FILL_PER_SCAN * self.inlet_open
        change -= PUMP_DRAIN_PER_SCAN * self.pump_running + DRAIN_VALVE_PER_SCAN * self.drain_open
        self.level = min(LEVEL_MAX, max(0, self.level + change))

        self.setpoint = commands.pressure_setpoint
        self.pressure += (self.setpoint - self.pressure) / 4
        self.scans += 1

    @property
    def temperature(self) -> int:
        return TEMPERATURE_BASE + round(TEMPERATURE_SWING * math.sin(self.scans / 20))

    @property
    def pressure_reading(self) -> int:
        reading = round(self.pressure + PRESSURE_RIPPLE * math.sin(self.scans / 3))
        return min(0xFFFF, max(0, reading))

    @property
    def flow(self) -> int:
        if not self.pump_running:
            return 0
        return PUMP_FLOW + round(PUMP_FLOW_RIPPLE * math.sin(self.scans / 5))

    @property
    def pump_speed(self) -> int:
        return PUMP_SPEED_RPM if self.pump_running else 0

    @property
    def heartbeat(self) -> bool:
        return self.scans % 2 == 1

    @property
    def alarms(self) -> Alarms:
        return Alarms(
            level_high=self.level >= LEVEL_HIGH_ALARM,
            level_low=self.level <= LEVEL_LOW_ALARM,
            temperature_high=self.temperature >= TEMPERATURE_HIGH_ALARM,
            pressure_deviation=abs(self.pressure_reading - self.setpoint) > PRESSURE_DEVIATION_ALARM,
            pump_blocked=self.pump_commanded and not self.pump_running,
        )
