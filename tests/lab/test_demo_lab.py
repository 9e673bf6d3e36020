"""The demo lab's ports: it prefers fixed ones (so the printed commands stay the same) and takes free ones
when those are in use, also when two demos start at the same time."""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path

import pytest

from gateway.lab.demo import lab as demo_lab
from gateway.lab.demo.lab import DemoLab, start_lab


def _ports(lab: DemoLab) -> set[int]:
    return {
        lab.center.port,
        lab.modbus_plc.port,
        lab.enip_plc.port,
        lab.opcua_plc.port,
        lab.gateway.port,
        lab.gateway.admin_port,
        *lab.ports.values(),
    }


async def test_two_demos_started_together_each_get_their_own_ports(tmp_path: Path) -> None:
    # Both probe the same preferred ports; without the lock held from probe to bind, one of them finds its
    # center's or PLC's port taken by the other and fails to start.
    labs = await asyncio.gather(start_lab(tmp_path / "a"), start_lab(tmp_path / "b"), return_exceptions=True)
    try:
        started = [lab for lab in labs if isinstance(lab, DemoLab)]
        assert len(started) == 2, [lab for lab in labs if not isinstance(lab, DemoLab)]
        first, second = (_ports(lab) for lab in started)
        assert len(first) == len(second) == 1 + 3 + 2 + 6
        assert not first & second
    finally:
        for lab in labs:
            if isinstance(lab, DemoLab):
                await lab.stop()


async def test_a_lock_held_past_its_wait_is_reported_and_the_demo_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = tmp_path / "ports.lock"
    monkeypatch.setattr(demo_lab, "PORTS_LOCK", lock)
    monkeypatch.setattr(demo_lab, "PORTS_LOCK_WAIT_S", 0.2)
    with lock.open("w") as stuck:  # a demo that took the lock and never finished starting
        fcntl.flock(stuck, fcntl.LOCK_EX)
        async with demo_lab._ports_held():
            pass
    assert f"{lock}: held by a demo that does not finish starting" in capsys.readouterr().err
    async with demo_lab._ports_held():  # free again: taken without a word
        pass
    assert capsys.readouterr().err == ""
