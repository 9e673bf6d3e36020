"""Health check for every role of the ztgate image: the image's HEALTHCHECK and the compose lab run it.

One image serves the gateway, the agent, the simulated PLC and one-shot jobs, so the check first finds
the ztgate process in the container's PID namespace, reads its command line with ztgate's own argument
parser, and then checks what that role serves:

- gateway: the admin HTTP ``/healthz`` at the address in its config answers ``{"status": "ok"}``;
  with the admin server switched off, the overlay port is listening.
- agent: every local port in its config is listening. It does not connect to them: each connection
  makes the agent open an overlay session to the gateway, which the gateway would audit at every check.
- sim: the simulator's port is listening.
- any other command (ca, policy, client) runs and exits: nothing to check, healthy.

Exit status 0 when healthy, 1 when not (the HEALTHCHECK convention), with one line saying why.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

TIMEOUT_S = 3.0
_TCP_LISTEN = "0A"  # the st column of /proc/net/tcp{,6}


def ztgate_processes(proc: Path = Path("/proc")) -> list[tuple[int, list[str], Path]]:
    """(pid, the arguments after ``ztgate``, working directory) of every ztgate process, lowest pid first."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone meanwhile, or another user's
            continue
        args = ztgate_arguments(argv)
        if args is not None:
            found.append((int(entry.name), args, cwd))
    return sorted(found)


def ztgate_arguments(argv: Sequence[str]) -> list[str] | None:
    """The arguments ztgate parses, for the ways it is started: the console script (run directly or by
    the interpreter named in its #! line), ``python -m gateway`` and ``python -m gateway.lab.sim``."""
    for index, arg in enumerate(argv[:2]):
        if os.path.basename(arg) == "ztgate":
            return list(argv[index + 1 :])
    if len(argv) >= 3 and argv[1] == "-m" and argv[2] in ("gateway", "gateway.lab.sim"):
        return (["sim"] if argv[2] == "gateway.lab.sim" else []) + list(argv[3:])
    return None


def listening_ports(proc_net: Path = Path("/proc/net")) -> set[int]:
    """TCP ports some socket in this network namespace listens on (any address, IPv4 or IPv6)."""
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:  # no IPv6 in this namespace
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def _reachable_host(host: str) -> str:
    # A wildcard bind is reached on loopback; the check runs in the same network namespace.
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _get_healthz(host: str, port: int) -> tuple[bool, str]:
    url = f"http://{_hostport(_reachable_host(host), port)}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body = json.loads(response.read())
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors, JSON errors ValueErrors
        return False, f"gateway: {url}: {exc}"
    if body.get("status") != "ok":
        return False, f"gateway: {url} answered {body}"
    return True, f"gateway {body.get('gateway')}: {url} ok"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ports_listening(role: str, wanted: Sequence[tuple[str, int]], ports: set[int]) -> tuple[bool, str]:
    missing = [_hostport(host, port) for host, port in wanted if port not in ports]
    if missing:
        return False, f"{role}: not listening on {', '.join(missing)}"
    return True, f"{role}: listening on {', '.join(_hostport(h, p) for h, p in wanted)}"


def check(args: Sequence[str], cwd: Path, ports: set[int] | None = None) -> tuple[bool, str]:
    """Check the ztgate process started with ``args`` (the arguments after ``ztgate``) in ``cwd``."""
    from gateway.cli import build_parser
    from gateway.config import ConfigError, load_agent_config, load_gateway_config

    try:
        parsed = build_parser().parse_args(list(args))
    except SystemExit:  # argparse has printed why; the process itself will have failed the same way
        return False, f"cannot parse the command line: ztgate {' '.join(args)}"
    role = parsed.command
    if role not in ("gateway", "agent", "sim"):
        return True, f"ztgate {role}: a one-shot command, nothing to check"
    if ports is None:
        ports = listening_ports()
    if role == "sim":
        return _ports_listening("sim", [parsed.listen], ports)
    config_path = parsed.config if parsed.config.is_absolute() else cwd / parsed.config
    try:
        if role == "agent":
            agent = load_agent_config(config_path)
            return _ports_listening("agent", [listener.listen for listener in agent.listeners], ports)
        gateway = load_gateway_config(config_path)
    except ConfigError as error:
        return False, f"{role}: configuration refused: {error}"
    if gateway.admin_listen is not None:
        return _get_healthz(*gateway.admin_listen)
    return _ports_listening("gateway", [gateway.listen], ports)


def main() -> int:
    processes = ztgate_processes()
    if not processes:
        print("no ztgate process in this container")
        return 1
    _, args, cwd = processes[0]
    healthy, message = check(args, cwd)
    print(message)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
