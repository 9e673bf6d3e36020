"""``ztgate client modbus|enip``: small clients for trying a lab by hand, built on pymodbus and pycomm3.

``modbus`` connects to an agent's local port (plain TCP), or straight to a gateway with ``--tls`` and a
certificate, and prints values or the Modbus exception the gateway answered with. ``enip`` reads and
writes Logix tags through an agent's local port and prints values or the CIP error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from protocols.modbus.spec import ExceptionCode

_TABLES = {
    "coils": ("read_coils", 1),
    "discrete-inputs": ("read_discrete_inputs", 2),
    "holding": ("read_holding_registers", 3),
    "input": ("read_input_registers", 4),
}


def exception_text(code: int) -> str:
    try:
        name = ExceptionCode(code).name.lower().replace("_", " ")
    except ValueError:
        name = "unknown exception"
    return f"exception 0x{code:02X} ({name})"


async def _run(args: argparse.Namespace) -> int:
    from pymodbus.client import AsyncModbusTcpClient, AsyncModbusTlsClient
    from pymodbus.exceptions import ModbusException

    client: Any
    if args.tls:
        if not (args.cert and args.key and args.ca and args.asset):
            print("ztgate client: --tls needs --cert, --key, --ca and --asset", file=sys.stderr)
            return 2
        from gateway.tls import client_context

        context = client_context(args.cert, args.key, args.ca, alpn="modbus", server_name=args.asset)
        client = AsyncModbusTlsClient(
            args.host, port=args.port, sslctx=context, timeout=args.timeout, retries=0
        )
    else:
        client = AsyncModbusTcpClient(args.host, port=args.port, timeout=args.timeout, retries=0)
    if not await client.connect():
        print(f"ztgate client: cannot connect to {args.host}:{args.port}", file=sys.stderr)
        return 1
    try:
        if args.action == "read":
            method, fc = _TABLES[args.table]
            result = await getattr(client, method)(args.address, count=args.count, device_id=args.unit)
        elif args.table == "coils":
            fc = 5 if len(args.values) == 1 else 15
            if fc == 5:
                result = await client.write_coil(args.address, bool(args.values[0]), device_id=args.unit)
            else:
                result = await client.write_coils(
                    args.address, [bool(v) for v in args.values], device_id=args.unit
                )
        else:
            fc = 6 if len(args.values) == 1 else 16
            if fc == 6:
                result = await client.write_register(args.address, args.values[0], device_id=args.unit)
            else:
                result = await client.write_registers(args.address, args.values, device_id=args.unit)
    except ModbusException as exc:
        print(f"FC {fc}: no answer: {exc}")
        return 1
    finally:
        client.close()
    if result.isError():
        print(f"FC {fc}: refused with {exception_text(result.exception_code)}")
        return 1
    if args.action == "read":
        values = result.bits[: args.count] if fc in (1, 2) else result.registers
        for offset, value in enumerate(values):
            print(f"{args.table}[{args.address + offset}] = {int(value)}")
    else:
        print(f"FC {fc}: wrote {args.values} at {args.address}")
    return 0


def _run_enip(args: argparse.Namespace) -> int:
    import logging

    from pycomm3 import LogixDriver
    from pycomm3.exceptions import CommError, ResponseError

    logging.getLogger("pycomm3").setLevel(logging.CRITICAL)  # we print what happened, once
    try:
        with LogixDriver(f"{args.host}:{args.port}") as driver:
            if args.action == "read":
                tag = f"{args.tag}{{{args.count}}}" if args.count > 1 else args.tag
                result = driver.read(tag)
            else:
                value: int | float = float(args.value) if "." in args.value else int(args.value, 0)
                result = driver.write(args.tag, value)
    except (CommError, ResponseError) as exc:
        print(f"ztgate client: {exc}", file=sys.stderr)
        return 1
    if result.error is not None:
        print(f"{args.tag}: refused: {result.error}")
        return 1
    if args.action == "read":
        print(f"{args.tag} = {result.value}")
    else:
        print(f"{args.tag}: wrote {args.value}")
    return 0


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("client", help="try a lab by hand with a small Modbus or Logix client")
    protocols = parser.add_subparsers(dest="client_protocol", metavar="PROTOCOL", required=True)
    modbus = protocols.add_parser(
        "modbus",
        help="read or write over Modbus TCP",
        description="Read or write over Modbus TCP, through an agent's local port or directly with --tls.",
    )
    modbus.add_argument("--host", default="127.0.0.1")
    modbus.add_argument("--port", type=int, required=True)
    modbus.add_argument("--unit", type=int, default=1)
    modbus.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    modbus.add_argument("--tls", action="store_true", help="connect to a gateway directly with mutual TLS")
    modbus.add_argument("--cert", type=Path)
    modbus.add_argument("--key", type=Path)
    modbus.add_argument("--ca", type=Path)
    modbus.add_argument("--asset", help="asset name (TLS SNI) with --tls")
    actions = modbus.add_subparsers(dest="action", metavar="ACTION", required=True)
    read = actions.add_parser("read", help="read coils, discrete-inputs, holding or input registers")
    read.add_argument("table", choices=sorted(_TABLES))
    read.add_argument("address", type=int, help="0-based wire address")
    read.add_argument("--count", type=int, default=1)
    write = actions.add_parser("write", help="write coils or holding registers")
    write.add_argument("table", choices=("coils", "holding"))
    write.add_argument("address", type=int, help="0-based wire address")
    write.add_argument("values", type=int, nargs="+")
    modbus.set_defaults(func=lambda args: asyncio.run(_run(args)))

    enip = protocols.add_parser(
        "enip",
        help="read or write Logix tags over EtherNet/IP (pycomm3)",
        description="Read or write Logix tags through an agent's local EtherNet/IP port.",
    )
    enip.add_argument("--host", default="127.0.0.1")
    enip.add_argument("--port", type=int, required=True)
    tag_actions = enip.add_subparsers(dest="action", metavar="ACTION", required=True)
    read_tag = tag_actions.add_parser("read", help="read a tag (or --count elements of an array)")
    read_tag.add_argument("tag", help="tag as Logix writes it: Setpoint, Recipe[2], Program:Main.Step")
    read_tag.add_argument("--count", type=int, default=1)
    write_tag = tag_actions.add_parser("write", help="write one value to a tag")
    write_tag.add_argument("tag")
    write_tag.add_argument("value", help="a number: 1200, 21.5, 0x10")
    enip.set_defaults(func=_run_enip)
