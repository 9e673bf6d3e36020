"""The import direction ``protocols <- policies <- gateway`` (DESIGN §4), and sans-IO, deterministic lower
layers: protocols/ and policies/ import no asyncio, sockets, logging or clocks (DESIGN §9: "time is an
argument"). Checked on the source with ``ast``, so an import that only runs on some path counts too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each layer must not import: the layers above it.
UPPER_LAYERS = {"protocols": frozenset(("policies", "gateway")), "policies": frozenset(("gateway",))}
# Modules that do I/O, schedule, log or read a clock.
IMPURE_MODULES = frozenset(
    (
        "asyncio",
        "uvloop",
        "socket",
        "socketserver",
        "ssl",
        "select",
        "selectors",
        "logging",
        "time",
        "threading",
    )
)
CLOCK_READS = frozenset(("now", "utcnow", "today"))  # datetime.now(), date.today(), ...


@dataclass(frozen=True)
class Import:
    file: Path
    line: int
    module: str  # absolute, dotted


def python_files(root: Path, layer: str) -> list[Path]:
    return sorted((root / layer).rglob("*.py"))


def imports_of(root: Path, file: Path) -> Iterator[Import]:
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    package = list(file.relative_to(root).with_suffix("").parts[:-1])  # a/b/c.py and a/b/__init__.py: a.b
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(file, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            if node.module:
                yield Import(file, node.lineno, prefix)
            else:  # from . import x: x is a module of that package
                for alias in node.names:
                    yield Import(file, node.lineno, ".".join(part for part in (prefix, alias.name) if part))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            yield Import(file, node.lineno, node.args[0].value)


def clock_reads(root: Path, file: Path) -> Iterator[str]:
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOCK_READS
            and ast.unparse(node.func.value).split(".")[-1] in ("datetime", "date")
        ):
            yield f"{file.relative_to(root)}:{node.lineno}: {ast.unparse(node)}"


def layering_violations(root: Path, layer: str) -> list[str]:
    found = []
    for file in python_files(root, layer):
        for imported in imports_of(root, file):
            top = imported.module.split(".")[0]
            where = f"{file.relative_to(root)}:{imported.line}"
            if top in UPPER_LAYERS[layer]:
                found.append(f"{where}: {layer} imports {imported.module}")
            if top in IMPURE_MODULES:
                found.append(f"{where}: {layer} imports {imported.module}")
        found.extend(f"{read}: reads the clock" for read in clock_reads(root, file))
    return found


@pytest.mark.parametrize("layer", sorted(UPPER_LAYERS))
def test_layer_imports_nothing_above_it_and_nothing_impure(layer: str) -> None:
    assert python_files(ROOT, layer), f"no sources found under {layer}/"
    assert layering_violations(ROOT, layer) == []


def test_the_walk_sees_the_imports_that_are_there() -> None:
    # policies/ is built on protocols' request type: the check must see that edge, or it sees nothing.
    seen = {imported.module for file in python_files(ROOT, "policies") for imported in imports_of(ROOT, file)}
    assert any(module.startswith("protocols.modbus") for module in seen)
    pdu = ROOT / "protocols" / "modbus" / "pdu.py"
    assert "protocols.modbus.spec" in {imported.module for imported in imports_of(ROOT, pdu)}


def write(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")


def test_the_check_catches_every_kind_of_violation(tmp_path: Path) -> None:
    write(tmp_path, "protocols/__init__.py", "")
    write(tmp_path, "protocols/modbus/__init__.py", "from ... import gateway\n")  # the top-level gateway
    write(
        tmp_path,
        "protocols/modbus/codec.py",
        "import asyncio\n"
        "import logging.handlers\n"
        "from ...policies import loader\n"
        "from gateway.server import Server\n"
        "from time import monotonic\n"
        "import importlib\n"
        "importlib.import_module('gateway.audit')\n"
        "from datetime import datetime\n"
        "stamp = datetime.now()\n",
    )
    # protocols.gateway would be a sub-package of protocols, not the gateway layer.
    write(tmp_path, "protocols/modbus/fine.py", "import struct\nfrom . import spec\nfrom .. import gateway\n")
    write(
        tmp_path, "policies/rules.py", "from protocols.modbus import Request\nimport socket\nimport gateway\n"
    )
    found = layering_violations(tmp_path, "protocols")
    assert len(found) == 8, found
    assert all("fine.py" not in line for line in found)
    assert any(line.endswith("protocols imports policies") for line in found)  # relative, resolved
    assert any(line.endswith("protocols imports gateway") for line in found)
    assert any("datetime.now()" in line for line in found)
    policies = layering_violations(tmp_path, "policies")
    assert [line.split(": ", 1)[1] for line in policies] == [
        "policies imports socket",
        "policies imports gateway",
    ]
