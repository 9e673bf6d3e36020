"""The OPC UA worker of :mod:`bench.proto_load`: an asyncua ``Client`` (security mode None, anonymous
session) sending one Read of all the workload's nodes (Value attribute) at a time, as
``client.read_values(nodes)`` does, but keeping the DataValues so every status is checked.

With the ``overlay_*`` options (certificate, key, CA and asset) the client reaches the gateway itself over
mutual TLS 1.3, with SNI = the asset, as the Modbus rows' load generator does: an OPC UA client holding a
ztgate identity of its own, no agent between. asyncua has no TLS option; its client opens its socket
with ``loop.create_connection`` and nothing else, so the worker's event loop adds the overlay's TLS to
every connection it makes.

The nodes are string node ids in the simulator's namespace (``urn:ztgate:sim:plant``), whose index is
resolved by URI at start-up. Every reply is checked: a bad status on any of the nodes is an error, and a
value different from the one read at start-up (or from the simulator's documented scan-0 value,
``--static``) is a mismatch.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop
from asyncua import Client, ua

from bench.proto_load import WorkerSpec, run_async
from gateway.tls import client_context

__all__ = ["KNOWN", "NAMESPACE", "OVERLAY_OPTIONS", "opcua_worker"]

OVERLAY_OPTIONS = ("overlay_cert", "overlay_key", "overlay_ca", "overlay_asset")

NAMESPACE = "urn:ztgate:sim:plant"

# Scan-0 values of ``ztgate sim opcua --static`` (see its --help).
KNOWN: dict[str, Any] = {
    "Plant.Line1.Tank1.Level": 50.0,
    "Plant.Line1.Tank1.Setpoint": 1000.0,
    "Plant.Line1.Tank1.DrainCommand": False,
}


async def _run(conn: Connection, spec: WorkerSpec) -> dict[str, Any]:
    started = time.monotonic()
    client = Client(f"opc.tcp://{spec.host}:{spec.port}/", timeout=10)
    await client.connect()
    try:
        ns = await client.get_namespace_index(spec.options.get("namespace", NAMESPACE))
        nodes = [client.get_node(ua.NodeId(item, ns)) for item in spec.items]
        first = await client.read_attributes(nodes, ua.AttributeIds.Value)
        expected: list[Any] = []
        for item, value in zip(spec.items, first, strict=True):
            if value.StatusCode is not None and not value.StatusCode.is_good():
                raise RuntimeError(f"reading {item} at start-up: {value.StatusCode}")
            got = value.Value.Value if value.Value is not None else None
            if item in KNOWN and got != KNOWN[item]:
                raise RuntimeError(f"{item} = {got!r} at start-up, expected {KNOWN[item]!r}")
            expected.append(got)
        setup_s = time.monotonic() - started

        async def request() -> str | None:
            values = await client.read_attributes(nodes, ua.AttributeIds.Value)
            if len(values) != len(nodes):
                return f"error:{len(values)} results for {len(nodes)} nodes"
            for item, value, want in zip(spec.items, values, expected, strict=True):
                if value.StatusCode is not None and not value.StatusCode.is_good():
                    return f"error:{item}: {value.StatusCode.name}"
                if (value.Value.Value if value.Value is not None else None) != want:
                    return f"mismatch:{item}"
            return None

        return await run_async(conn, setup_s, request)
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), 5)
        except (TimeoutError, OSError, ua.UaError):
            pass


class _OverlayLoop(uvloop.Loop):
    """uvloop, with every TCP connection made over the gateway's mutual-TLS overlay."""

    overlay: ssl.SSLContext

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is None:
            kwargs["ssl"] = self.overlay
        return await super().create_connection(*args, **kwargs)


def _loop_factory(options: dict[str, Any]) -> Callable[[], asyncio.AbstractEventLoop]:
    given = [key for key in OVERLAY_OPTIONS if options.get(key)]
    if not given:
        return uvloop.new_event_loop
    if len(given) != len(OVERLAY_OPTIONS):
        raise ValueError(f"the overlay needs all of {', '.join(OVERLAY_OPTIONS)}; given: {', '.join(given)}")
    # The context fixes the SNI to the asset, whatever host name asyncua connects to.
    context = client_context(
        Path(options["overlay_cert"]),
        Path(options["overlay_key"]),
        Path(options["overlay_ca"]),
        server_name=options["overlay_asset"],
    )

    def factory() -> asyncio.AbstractEventLoop:
        loop = _OverlayLoop()
        loop.overlay = context
        return loop

    return factory


def opcua_worker(conn: Connection, spec: WorkerSpec, index: int) -> dict[str, Any]:
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    with asyncio.Runner(loop_factory=_loop_factory(spec.options)) as runner:
        return runner.run(_run(conn, spec))
