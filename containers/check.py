"""Check the container lab without a container engine.

    .venv/bin/python containers/check.py          the files, and the PKI job's script (a few seconds)
    .venv/bin/python containers/check.py --run    also the lab itself, on loopback (about 10 seconds)

The files: lab/gateway.toml, lab/agent.toml and lab/policy.toml are loaded with ztgate's own loaders,
and compose.yaml is held to the lab's layout (which networks are internal, who shares them, what is
published, which config and certificate each container reads, start order, health checks, hardening).
compose.yaml is read with PyYAML when it is importable, else with the small reader below, which knows
the YAML this file uses and refuses anything else.

The PKI job: lab/pki.sh runs twice with /bin/sh (dash on Debian, the image's shell), into temporary
folders standing in for the job's volumes; every certificate file the configs name must be there, load
into ztgate's TLS contexts, and carry an identity the policy grants.

--run: the simulator, the gateway and the agent run as processes with the lab's configs (container
addresses swapped for free loopback ports, volumes for the temporary folders), containers/healthcheck.py
judges each of them, and the Modbus requests docs/containers.md shows go through the agent with the
answers the page promises. Exit status 0 when everything holds, 1 otherwise, with one line per problem.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LAB = HERE / "lab"
HEALTHCHECK = ["CMD", "python", "/usr/local/lib/ztgate/healthcheck.py"]
SERVICES = ("pki", "plc-1", "gateway", "agent")
LOOPBACK = ("127.0.0.1", "::1", "localhost")

problems: list[str] = []


def expect(ok: object, message: str) -> bool:
    if not ok:
        problems.append(message)
    return bool(ok)


# ------------------------------------------------------------------------------------ YAML subset


class YamlSubsetError(ValueError):
    pass


_PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_PLAIN_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")
# Plain scalars YAML 1.1 (PyYAML) reads differently from YAML 1.2: booleans, sexagesimal and octal.
_AMBIGUOUS = re.compile(r"(?i:y|n|yes|no|on|off)|[0-9]+(:[0-9]+)+|[-+]?0[0-9]+")


def _strip_comment(line: str) -> str:
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'" and (index == 0 or line[index - 1] in " \t[,-:"):
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index].rstrip()
    return line.rstrip()


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, start, quote = [], 0, None
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == separator:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _key_split(text: str) -> tuple[str, str] | None:
    """``key: value`` or ``key:`` -> (key, value text); None for a plain scalar."""
    if text[:1] in "\"'[{":
        return None
    match = re.match(r"([^\s:#][^:#]*?):(\s+|$)", text)
    return (match.group(1), text[match.end() :]) if match else None


def _scalar(text: str, where: str) -> Any:
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlSubsetError(f"{where}: a flow sequence must end on its own line")
        inner = text[1:-1].strip()
        return [_scalar(item.strip(), where) for item in _split_outside_quotes(inner, ",")] if inner else []
    if text == "{}":
        return {}
    if text[:1] in "{&*!|>%@`":
        raise YamlSubsetError(f"{where}: {text[:1]!r} is beyond this reader; install PyYAML to check it")
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise YamlSubsetError(f"{where}: unterminated string")
        try:  # the escapes YAML and JSON share; any other is refused rather than guessed
            return json.loads(text)
        except ValueError:
            raise YamlSubsetError(f"{where}: {text}: an escape this reader does not know") from None
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise YamlSubsetError(f"{where}: unterminated string")
        return text[1:-1].replace("''", "'")
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return text.lower() == "true"
    if _AMBIGUOUS.fullmatch(text):
        raise YamlSubsetError(f"{where}: {text!r} means different things in YAML 1.1 and 1.2: quote it")
    if _PLAIN_INT.fullmatch(text):
        return int(text)
    if _PLAIN_FLOAT.fullmatch(text):
        return float(text)
    return text


def parse_yaml_subset(text: str) -> Any:
    """Block mappings and sequences, flow sequences of scalars, ``{}``, quoted and plain scalars,
    comments. No anchors, tags, block scalars, multi-line flows or several documents."""
    lines: list[tuple[int, int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip() in ("---", "..."):
            raise YamlSubsetError(f"line {number}: document markers are beyond this reader")
        line = _strip_comment(raw)
        if not line.strip():
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise YamlSubsetError(f"line {number}: tab in indentation")
        lines.append((number, len(line) - len(line.lstrip()), line.strip()))

    def block(pos: int, indent: int) -> tuple[Any, int]:
        if lines[pos][2] == "-" or lines[pos][2].startswith("- "):
            return sequence(pos, indent)
        return mapping(pos, indent)

    def nested(pos: int, indent: int, allow_same_indent_sequence: bool) -> tuple[Any, int]:
        if pos < len(lines) and lines[pos][1] > indent:
            return block(pos, lines[pos][1])
        # "key:" followed by "- item" at the key's own indentation is a sequence too.
        same_indent = allow_same_indent_sequence and pos < len(lines) and lines[pos][1] == indent
        if same_indent and (lines[pos][2] == "-" or lines[pos][2].startswith("- ")):
            return sequence(pos, indent)
        return None, pos

    def sequence(pos: int, indent: int) -> tuple[list[Any], int]:
        items: list[Any] = []
        while pos < len(lines) and lines[pos][1] == indent:
            number, _, content = lines[pos]
            if not (content == "-" or content.startswith("- ")):
                break
            rest = content[1:].lstrip()
            if not rest:
                value, pos = nested(pos + 1, indent, False)
            elif _key_split(rest) is not None:
                # "- key: value": a mapping whose keys line up with the first one's.
                lines[pos] = (number, indent + len(content) - len(rest), rest)
                value, pos = mapping(pos, lines[pos][1])
            else:
                value, pos = _scalar(rest, f"line {number}"), pos + 1
            items.append(value)
        return items, pos

    def mapping(pos: int, indent: int) -> tuple[dict[str, Any], int]:
        table: dict[str, Any] = {}
        while pos < len(lines) and lines[pos][1] == indent:
            number, _, content = lines[pos]
            if content == "-" or content.startswith("- "):
                break
            split = _key_split(content)
            if split is None:
                raise YamlSubsetError(f"line {number}: expected 'key: value', got {content!r}")
            key, rest = split
            key = _scalar(key, f"line {number}")
            if key in table:
                raise YamlSubsetError(f"line {number}: duplicate key {key!r}")
            if rest:
                table[key], pos = _scalar(rest, f"line {number}"), pos + 1
            else:
                table[key], pos = nested(pos + 1, indent, True)
        if pos < len(lines) and lines[pos][1] > indent:
            raise YamlSubsetError(f"line {lines[pos][0]}: unexpected indentation")
        return table, pos

    if not lines:
        return None
    document, end = block(0, lines[0][1])
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end][0]}: unexpected indentation")
    return document


def load_compose(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    subset_error: str | None = None
    try:
        subset = parse_yaml_subset(text)
    except YamlSubsetError as exc:
        subset, subset_error = None, str(exc)
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        if subset_error:
            raise SystemExit(f"{path}: {subset_error}") from None
        print(f"{path}: read with check.py's YAML subset reader (PyYAML is not installed)")
        return subset  # type: ignore[no-any-return]
    document = yaml.safe_load(text)
    # Both readers agreeing keeps the subset reader honest for the runs without PyYAML.
    expect(
        subset == document, f"{path}: the subset reader disagrees with PyYAML ({subset_error or 'values'})"
    )
    print(f"{path}: read with PyYAML {yaml.__version__}")
    return document  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------ compose


class Mounts:
    """A service's short-syntax volumes: container path -> a host path (bind) or a named volume."""

    def __init__(self, name: str, service: dict[str, Any], declared: dict[str, Any]) -> None:
        self.binds: dict[PurePosixPath, Path] = {}
        self.volumes: dict[PurePosixPath, tuple[str, bool]] = {}
        for entry in service.get("volumes") or []:
            source, target, *options = str(entry).split(":")
            read_only = "ro" in ",".join(options).split(",")
            if source.startswith((".", "/")):
                self.binds[PurePosixPath(target)] = (HERE / source).resolve()
            else:
                expect(source in declared, f"{name}: volume {source!r} is not declared under volumes:")
                self.volumes[PurePosixPath(target)] = (source, read_only)

    def host_file(self, path: str | PurePosixPath) -> Path | None:
        path = PurePosixPath(path)
        for target, source in self.binds.items():
            if path == target or target in path.parents:
                return source / path.relative_to(target)
        return None

    def volume_file(self, path: str | PurePosixPath) -> tuple[str, PurePosixPath] | None:
        path = PurePosixPath(path)
        for target, (volume, _) in self.volumes.items():
            if target in path.parents:
                return volume, path.relative_to(target)
        return None


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port); without an address, an engine publishes on all."""
    mappings = []
    for entry in service.get("ports") or []:
        parts = str(entry).split(":")
        if expect(len(parts) in (2, 3), f"port {entry!r}: write it as HOST_IP:HOST_PORT:CONTAINER_PORT"):
            host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
            mappings.append((host_ip, int(parts[-2]), int(parts[-1])))
    return mappings


def networks_of(service: dict[str, Any]) -> set[str]:
    value = service.get("networks") or []
    return set(value if isinstance(value, list) else value.keys())


def config_argument(name: str, service: dict[str, Any], mounts: Mounts) -> Path | None:
    command = service.get("command") or []
    if not expect(command[:2] == [name, "--config"] and len(command) == 3, f"{name}: command {command}"):
        return None
    host = mounts.host_file(command[2])
    expect(host is not None and host.is_file(), f"{name}: {command[2]} is not a file bind-mounted from lab/")
    return host if host is not None and host.is_file() else None


def check_compose(compose: dict[str, Any]) -> dict[str, Any]:
    """The layout checks; returns what the later steps need (configs, mounts, the pki job's volumes)."""
    services: dict[str, dict[str, Any]] = compose.get("services") or {}
    networks: dict[str, Any] = compose.get("networks") or {}
    volumes: dict[str, Any] = compose.get("volumes") or {}
    expect(sorted(services) == sorted(SERVICES), f"services are {sorted(services)}, expected {SERVICES}")
    expect(all(services.get(s) for s in SERVICES), "a service is empty")
    if problems:
        return {}
    mounts = {name: Mounts(name, service, volumes) for name, service in services.items()}

    builders = [name for name, service in services.items() if "build" in service]
    if expect(len(builders) == 1, f"one service should build the image, not {builders}"):
        build = services[builders[0]]["build"]
        context = (HERE / build["context"]).resolve()
        expect(context == ROOT, f"build context {context} is not the repository root")
        expect((context / build["dockerfile"]).resolve() == HERE / "Containerfile", "build.dockerfile")
        # plc-1 runs `ztgate sim`, which only an image with the lab extra has.
        expect((build.get("args") or {}).get("EXTRAS") == "lab", "build.args: EXTRAS should be lab")
    for name, service in services.items():
        expect(service.get("image") == "ztgate", f"{name}: image {service.get('image')!r}, not ztgate")
        expect(service.get("pull_policy") == "never", f"{name}: pull_policy should be never")
        expect(service.get("read_only") is True, f"{name}: root file system not read-only")
        expect(service.get("cap_drop") == ["ALL"], f"{name}: capabilities not all dropped")
        expect("no-new-privileges" in (service.get("security_opt") or []), f"{name}: no-new-privileges")
        expect(
            "user" not in service and "privileged" not in service,
            f"{name}: runs as another user, or privileged",
        )

    # The chamber: internal, the PLC and the gateway alone, nothing published from it.
    expect((networks.get("chamber") or {}).get("internal") is True, "network chamber is not internal")
    in_chamber = {name for name, service in services.items() if "chamber" in networks_of(service)}
    expect(in_chamber == {"gateway", "plc-1"}, f"chamber members are {sorted(in_chamber)}")
    expect(networks_of(services["plc-1"]) == {"chamber"}, "plc-1 must be on the chamber network only")
    expect(not services["plc-1"].get("ports"), "plc-1 publishes ports")
    expect("network_mode" not in services["plc-1"], "plc-1 has a network_mode")
    expect(services["pki"].get("network_mode") == "none", "pki should have no network")
    for name, service in services.items():
        for host_ip, host_port, _ in published(service):
            expect(host_ip in LOOPBACK, f"{name}: port {host_port} is published beyond the host's loopback")
        if service.get("ports"):
            internal = [n for n in networks_of(service) if (networks.get(n) or {}).get("internal")]
            expect(
                len(internal) < len(networks_of(service)),
                f"{name}: publishes ports on internal networks only",
            )
    ca_users = [n for n, m in mounts.items() if any(v == "pki-ca" for v, _ in m.volumes.values())]
    expect(ca_users == ["pki"], f"the CA volume is mounted by {ca_users}, not by the pki job alone")
    for name in ("gateway", "agent", "plc-1"):
        expect(all(ro for _, ro in mounts[name].volumes.values()), f"{name}: mounts a volume read-write")

    # Start order and health.
    wanted = {
        "gateway": {"pki": "service_completed_successfully", "plc-1": "service_healthy"},
        "agent": {"pki": "service_completed_successfully", "gateway": "service_healthy"},
    }
    for name, dependencies in wanted.items():
        got = {
            dep: (cond or {}).get("condition")
            for dep, cond in (services[name].get("depends_on") or {}).items()
        }
        expect(got == dependencies, f"{name}: depends_on {got}, expected {dependencies}")
    for name in ("plc-1", "gateway", "agent"):
        expect((services[name].get("healthcheck") or {}).get("test") == HEALTHCHECK, f"{name}: healthcheck")
    expect((services["pki"].get("healthcheck") or {}).get("disable") is True, "pki: healthcheck not disabled")
    containerfile = (HERE / "Containerfile").read_text(encoding="utf-8")
    expect(
        f"COPY containers/healthcheck.py {HEALTHCHECK[2]}" in containerfile,
        "the Containerfile does not install healthcheck.py where the health checks run it",
    )

    # Every COPY source must survive the ignore file, or the build fails on a file that is there.
    ignore = (HERE / "Containerfile.dockerignore").read_text(encoding="utf-8").split()
    for line in containerfile.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            for source in words[1:-1]:
                expect(
                    f"!{source.rstrip('/')}" in ignore,
                    f"COPY {source}: left out by Containerfile.dockerignore",
                )
                expect((ROOT / source).exists(), f"COPY {source}: not in the repository")

    # The pki job: its script from lab/, its volumes where the script writes by default.
    entrypoint = services["pki"].get("entrypoint") or []
    script = mounts["pki"].host_file(entrypoint[1]) if len(entrypoint) == 2 else None
    expect(entrypoint[:1] == ["/bin/sh"] and script == LAB / "pki.sh", f"pki: entrypoint {entrypoint}")
    defaults = dict(re.findall(r"^(\w+_DIR)=\$\{\1:-(.+)\}$", (LAB / "pki.sh").read_text(), re.MULTILINE))
    pki_volumes = {}
    for variable, path in defaults.items():
        target = mounts["pki"].volumes.get(PurePosixPath(path))
        if expect(target is not None, f"pki.sh writes {variable}={path}, where the pki job mounts no volume"):
            pki_volumes[variable] = target[0]  # type: ignore[index]

    return {
        "services": services,
        "mounts": mounts,
        "pki_volumes": pki_volumes,
        "gateway_config": config_argument("gateway", services["gateway"], mounts["gateway"]),
        "agent_config": config_argument("agent", services["agent"], mounts["agent"]),
    }


# ------------------------------------------------------------------------------------ configs


def tls_files(name: str, tls: Any, mounts: Mounts) -> dict[str, tuple[str, PurePosixPath]]:
    found = {}
    for field in ("cert", "key", "ca"):
        path = getattr(tls, field)
        where = mounts.volume_file(path)
        if where is not None:
            found[field] = where
        else:
            expect(False, f"{name}: tls.{field} {path} is not in a volume the container mounts")
    return found


def check_configs(layout: dict[str, Any]) -> dict[str, Any]:
    from gateway.config import ConfigError, load_agent_config, load_gateway_config
    from policies import PolicyError, load_policy

    services, mounts = layout["services"], layout["mounts"]
    if layout["gateway_config"] is None or layout["agent_config"] is None:
        return {}
    try:
        gateway = load_gateway_config(layout["gateway_config"])
        agent = load_agent_config(layout["agent_config"])
        policy = load_policy(gateway.policy)
    except (ConfigError, PolicyError) as error:
        expect(False, f"refused by ztgate's loader:\n{error}")
        return {}
    print(f"{gateway.source}: OK, gateway {gateway.name}, overlay {gateway.listen}")
    print(f"{agent.source}: OK, {len(agent.listeners)} listener(s)")
    print(f"{gateway.policy}: OK, revision {policy.revision}, assets {sorted(policy.assets)}")
    expect(
        gateway.policy.parent == layout["gateway_config"].parent, "the policy is outside the mounted folder"
    )

    # Loopback in a container is that container's alone: every listener must take outside connections.
    expect(gateway.listen[0] not in LOOPBACK, f"gateway listens on {gateway.listen}: unreachable for agents")
    admin_ports = {port for _, _, port in published(services["gateway"])}
    expect(gateway.admin_listen and gateway.admin_listen[0] not in LOOPBACK, "gateway admin on loopback")
    expect(gateway.admin_listen and gateway.admin_listen[1] in admin_ports, "the admin port is not published")
    agent_ports = {port for _, _, port in published(services["agent"])}
    for listener in agent.listeners:
        expect(listener.listen[0] not in LOOPBACK, f"agent listens on {listener.listen}: unreachable")
        expect(listener.listen[1] in agent_ports, f"agent port {listener.listen[1]} is not published")
        expect(listener.gateway == ("gateway", gateway.listen[1]), f"agent reaches {listener.gateway}")
        expect(listener.asset in policy.assets, f"agent listener for unknown asset {listener.asset!r}")
    expect(
        networks_of(services["agent"]) & networks_of(services["gateway"]),
        "agent and gateway share no network",
    )

    sim = services["plc-1"]["command"]
    listen = sim[sim.index("--listen") + 1] if "--listen" in sim else None
    expect(sim[:2] == ["sim", "modbus"] and listen, f"plc-1: command {sim}")
    asset = policy.assets.get("plc-1")
    expect(asset is not None, "the policy has no asset plc-1")
    if asset is not None and listen:
        host, _, port = listen.rpartition(":")
        expect(host not in LOOPBACK, f"the simulator listens on {listen}: unreachable for the gateway")
        expect(
            (asset.upstream_host, asset.upstream_port) == ("plc-1", int(port)),
            f"plc-1's upstream {asset.upstream_host}:{asset.upstream_port} is not the simulator's {listen}",
        )
    return {
        "gateway": gateway,
        "agent": agent,
        "policy": policy,
        "tls": {
            "gateway": tls_files("gateway", gateway.tls, mounts["gateway"]),
            "agent": tls_files("agent", agent.tls, mounts["agent"]),
        },
    }


# ------------------------------------------------------------------------------------ PKI


def run_pki(layout: dict[str, Any], configs: dict[str, Any], work: Path) -> dict[str, Path]:
    """Run lab/pki.sh twice into stand-ins for its volumes; returns volume name -> folder."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from gateway.identity import identity_from_certificate
    from gateway.tls import client_context, server_context

    folders = {volume: work / "volumes" / volume for volume in layout["pki_volumes"].values()}
    for folder in folders.values():
        folder.mkdir(parents=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.update({variable: str(folders[volume]) for variable, volume in layout["pki_volumes"].items()})
    ca_files: list[bytes] = []
    for attempt in ("first", "second"):
        result = subprocess.run(
            ["/bin/sh", str(LAB / "pki.sh")], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        if not expect(result.returncode == 0, f"pki.sh, {attempt} run, failed:\n{result.stderr.strip()}"):
            return {}
        ca_files.append(b"".join(p.read_bytes() for p in sorted(work.glob("volumes/*/ca.pem"))))
    expect(ca_files[0] == ca_files[1], "pki.sh made a new CA on its second run")

    paths: dict[str, dict[str, Path]] = {}
    for name, files in configs["tls"].items():
        paths[name] = {}
        for field, (volume, relative) in files.items():
            path = folders.get(volume, work / "missing") / relative
            if expect(path.is_file(), f"{name}: tls.{field} {relative} is not made by pki.sh in {volume}"):
                paths[name][field] = path
    if problems:
        return {}
    policy = configs["policy"]
    for name, make_context in (("gateway", server_context), ("agent", client_context)):
        files = paths[name]
        der = x509.load_pem_x509_certificate(files["cert"].read_bytes()).public_bytes(Encoding.DER)
        try:
            make_context(files["cert"], files["key"], files["ca"])
            identity = identity_from_certificate(der, policy.trust_domain)
        except (OSError, ValueError) as exc:  # ssl.SSLError and IdentityError among them
            expect(False, f"pki.sh: the {name}'s certificate does not do: {exc}")
            continue
        print(f"pki.sh: {name} certificate is {identity}")
        if name == "agent":
            for listener in configs["agent"].listeners:
                expect(
                    policy.view(str(identity), listener.asset), f"no rule grants {identity} {listener.asset}"
                )
    return folders


# ------------------------------------------------------------------------------------ --run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rewrite(source: Path, target: Path, swaps: dict[str, str]) -> None:
    text = source.read_text(encoding="utf-8")
    for old, new in swaps.items():
        expect(text.count(f'"{old}') == 1, f"{source.name}: cannot find {old!r} once, to run it on loopback")
        text = text.replace(f'"{old}', f'"{new}')
    target.write_text(text, encoding="utf-8")


# What docs/containers.md promises for these requests through the agent: exit status, text in the output.
CLIENT_TRIES = [
    (["read", "input", "0", "--count", "10"], 0, "input[7] = 1"),
    (["write", "holding", "40", "1200"], 0, "wrote [1200] at 40"),
    (["read", "holding", "40"], 0, "holding[40] = 1200"),
    (["write", "holding", "40", "2000"], 1, "exception 0x03"),
    (["write", "coils", "2", "1"], 1, "exception 0x02"),
    (["read", "holding", "5000"], 1, "exception 0x02"),
]


def run_lab(layout: dict[str, Any], configs: dict[str, Any], folders: dict[str, Path], work: Path) -> None:
    sys.path.insert(0, str(HERE))
    import healthcheck

    ztgate = str(Path(sys.executable).parent / "ztgate")
    ports = {name: free_port() for name in ("plc", "overlay", "admin", "agent")}
    gateway, agent = configs["gateway"], configs["agent"]
    etc = work / "etc-ztgate"  # the gateway's /etc/ztgate
    shutil.copytree(LAB, etc)
    # Each certificate path, as written in the config, to the file pki.sh made for it.
    certs = {
        name: {
            str(getattr(config.tls, field)): str(folders[volume] / relative)
            for field, (volume, relative) in configs["tls"][name].items()
        }
        for name, config in (("gateway", gateway), ("agent", agent))
    }
    rewrite(
        LAB / "gateway.toml",
        etc / "gateway.toml",
        {
            f"{gateway.listen[0]}:{gateway.listen[1]}": f"127.0.0.1:{ports['overlay']}",
            f"{gateway.admin_listen[0]}:{gateway.admin_listen[1]}": f"127.0.0.1:{ports['admin']}",
            **certs["gateway"],
        },
    )
    asset = configs["policy"].assets["plc-1"]
    rewrite(
        LAB / "policy.toml",
        etc / "policy.toml",
        {f"{asset.upstream_host}:{asset.upstream_port}": f"127.0.0.1:{ports['plc']}"},
    )
    listener = agent.listeners[0]
    rewrite(
        LAB / "agent.toml",
        etc / "agent.toml",
        {
            f"{listener.gateway[0]}:{listener.gateway[1]}": f"127.0.0.1:{ports['overlay']}",
            f"{listener.listen[0]}:{listener.listen[1]}": f"127.0.0.1:{ports['agent']}",
            **certs["agent"],
        },
    )
    if problems:
        return
    sim_command = list(layout["services"]["plc-1"]["command"])
    sim_command[sim_command.index("--listen") + 1] = f"127.0.0.1:{ports['plc']}"
    commands = {
        "plc-1": sim_command,
        "gateway": ["gateway", "--config", str(etc / "gateway.toml")],
        "agent": ["agent", "--config", str(etc / "agent.toml")],
    }
    started: dict[str, subprocess.Popen[bytes]] = {}
    finished = False
    try:
        for name, args in commands.items():  # in the compose file's start order
            with open(work / f"{name}.out", "wb") as out, open(work / f"{name}.err", "wb") as err:
                started[name] = subprocess.Popen([ztgate, *args], stdout=out, stderr=err, cwd=work)
            deadline, verdict = time.monotonic() + 15, (False, "not checked")
            while time.monotonic() < deadline and started[name].poll() is None:
                verdict = healthcheck.check(args, work)
                if verdict[0]:
                    break
                time.sleep(0.2)
            print(f"--run: {name}: healthcheck.py says {verdict[1]}")
            if not expect(
                verdict[0], f"--run: {name} never became healthy:\n{(work / f'{name}.err').read_text()}"
            ):
                return
        seen = {pid: args for pid, args, _ in healthcheck.ztgate_processes()}
        for name, process in started.items():
            expect(
                seen.get(process.pid) == commands[name], f"--run: healthcheck.py cannot find {name}'s process"
            )
        for args, status, text in CLIENT_TRIES:
            argv = [ztgate, "client", "modbus", "--port", str(ports["agent"]), *args]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            shown = f"ztgate client modbus --port {ports['agent']} {' '.join(args)}"
            last_line = (result.stdout.strip().splitlines() or [""])[-1]
            print(f"--run: {shown}: exit {result.returncode}: {last_line}")
            expect(
                result.returncode == status and text in result.stdout,
                f"--run: {shown}: expected exit {status} and {text!r}, got {result.returncode}:\n"
                f"{result.stdout}{result.stderr}",
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/readyz", timeout=5) as response:
                ready = json.loads(response.read())
        except OSError as exc:  # HTTPError for a 503 among them
            ready = {"error": str(exc)}
        expect(ready.get("ready") is True, f"--run: /readyz says {ready}")
        finished = True
    finally:
        for name, process in reversed(started.items()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                status = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                status = process.wait()
            expect(
                status == 0,
                f"--run: {name} exited {status} on SIGTERM:\n{(work / f'{name}.err').read_text()}",
            )
    if not finished:
        return
    # The gateway flushes its audit when it stops, so the trail is complete only now.
    audit = [
        json.loads(line) for line in (work / "gateway.out").read_text().splitlines() if line.startswith("{")
    ]
    denied = [e for e in audit if e.get("event") == "decision" and e.get("rule") == "drain-is-local-only"]
    if expect(denied, "--run: the gateway's audit has no deny by rule drain-is-local-only"):
        print(f"--run: the gateway wrote {len(audit)} audit events, the drain write's deny among them")


# ------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="also run the lab on loopback")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder, and say where")
    args = parser.parse_args()
    try:
        import gateway  # noqa: F401  (the ztgate this interpreter has: .venv's editable one, or a wheel's)
    except ImportError:
        sys.path.insert(0, str(ROOT))

    layout = check_compose(load_compose(HERE / "compose.yaml"))
    configs = check_configs(layout) if layout and not problems else {}
    work = Path(tempfile.mkdtemp(prefix="ztgate-containers-check-"))
    try:
        folders = run_pki(layout, configs, work) if configs and not problems else {}
        if args.run and folders and not problems:
            run_lab(layout, configs, folders, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    print(f"{len(problems)} problem(s)" if problems else "containers/: all checks passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
