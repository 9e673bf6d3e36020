"""The EtherNet/IP worker of :mod:`bench.proto_load`: pycomm3's ``LogixDriver`` (blocking), as an HMI
tool would use it, reading the same tags over and over; one tag is one Read Tag request, several tags
in one ``read()`` call are one Multiple Service Packet (pycomm3 packs them).

Every reply is checked: a tag whose ``error`` is set is an error, and a value different from the one
read when the worker connected (or from the simulator's documented scan-0 value, ``--static``) is a
mismatch.
"""

from __future__ import annotations

import logging
import time
from multiprocessing.connection import Connection
from typing import Any

from pycomm3 import LogixDriver

from bench.proto_load import WorkerSpec, run_sync

__all__ = ["KNOWN", "enip_worker"]

# Scan-0 values of ``ztgate sim enip --static`` (see its --help).
KNOWN: dict[str, Any] = {
    "Setpoint": 1000,
    "Tank1_Level": 50.0,
    "Recipe[3]": 400,
    "Mode": 2,
    "Program:Main.Step": 10,
    "Batch_ID": 202600000001,
    "Pump_Run": True,
}


def _read(driver: LogixDriver, tags: tuple[str, ...]) -> list[Any]:
    result = driver.read(*tags)
    return result if isinstance(result, list) else [result]


def enip_worker(conn: Connection, spec: WorkerSpec, index: int) -> dict[str, Any]:
    logging.getLogger("pycomm3").setLevel(logging.CRITICAL)
    init = spec.options.get("init_tags", "1") != "0"
    started = time.monotonic()
    driver = LogixDriver(f"{spec.host}:{spec.port}", init_tags=init, init_program_tags=init)
    driver.open()
    tags = spec.items
    try:
        first = _read(driver, tags)
        expected: list[Any] = []
        for tag in first:
            if tag.error:
                raise RuntimeError(f"reading {tag.tag} at start-up: {tag.error}")
            if tag.tag in KNOWN and tag.value != KNOWN[tag.tag]:
                raise RuntimeError(f"{tag.tag} = {tag.value!r} at start-up, expected {KNOWN[tag.tag]!r}")
            expected.append(tag.value)
        setup_s = time.monotonic() - started

        def request() -> str | None:
            got = _read(driver, tags)
            if len(got) != len(tags):
                return f"error:{len(got)} results for {len(tags)} tags"
            for tag, want in zip(got, expected, strict=True):
                if tag.error:
                    return f"error:{tag.tag}: {tag.error}"
                if tag.value != want:
                    return f"mismatch:{tag.tag}"
            return None

        return run_sync(conn, setup_s, request)
    finally:
        driver.close()
