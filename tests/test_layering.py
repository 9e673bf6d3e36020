"""The layers of docs/architecture.md ("Layers"), checked on the source with ``ast``, so an import that
only runs on some path (inside a function, under ``TYPE_CHECKING``) counts too:

- the import direction ``protocols <- policies <- gateway``, and sans-IO, deterministic lower layers:
  protocols/ and policies/ import no asyncio, sockets, logging or clocks ("time is an argument");
- the lab (gateway/lab/) outside the runtime: no runtime module imports it or the packages of its
  ``lab`` extra; gateway/cli.py names the lab's commands as strings, and nothing else does;
- no import circle inside a layer.
"""

from __future__ import annotations

import ast
import itertools
import re
import tomllib
from collections.abc import Iterable, Iterator
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
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(file, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            prefix = from_module(root, file, node)
            if node.module:
                yield Import(file, node.lineno, prefix)
            else:  # from . import x: x is a module of that package
                for alias in node.names:
                    yield Import(file, node.lineno, ".".join(part for part in (prefix, alias.name) if part))
        else:
            called = imported_by_call(node)
            if called is not None:
                yield Import(file, node.lineno, called)


def from_module(root: Path, file: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved."""
    package = list(file.relative_to(root).with_suffix("").parts[:-1])  # a/b/c.py and a/b/__init__.py: a.b
    if not node.level:
        return node.module or ""
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imported_by_call(node: ast.AST) -> str | None:
    """The module of ``importlib.import_module("x")`` or ``__import__("x")`` with a constant name."""
    if (
        isinstance(node, ast.Call)
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
        )
    ):
        return node.args[0].value
    return None


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


# ------------------------------------------------------------------------------------------ the lab

RUNTIME_LAYERS = ("protocols", "policies", "gateway")
LAB = "gateway.lab"
# The one place in the runtime that names the lab: the composition root's lazy, string-named commands.
LAB_NAMES_IN_RUNTIME = {
    "gateway/cli.py": {"gateway.lab", "gateway.lab.sim", "gateway.lab.client", "gateway.lab.demo"}
}


def module_name(root: Path, file: Path) -> str:
    parts = file.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_lab(module: str) -> bool:
    return module == LAB or module.startswith(LAB + ".")


def runtime_files(root: Path) -> list[Path]:
    return [
        file
        for layer in RUNTIME_LAYERS
        for file in python_files(root, layer)
        if not is_lab(module_name(root, file))
    ]


def lab_packages(root: Path) -> set[str]:
    """The import names of the ``lab`` extra's packages (their distribution names, here the same)."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    return {re.split(r"[<>=!~;\[ ]", requirement)[0] for requirement in extras.get("lab", ())}


def named_imports(root: Path, file: Path) -> Iterator[Import]:
    """Every import, plus ``package.name`` for each ``from package import name`` (which may be a module)."""
    yield from imports_of(root, file)
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            prefix = from_module(root, file, node)
            for alias in node.names:
                yield Import(file, node.lineno, f"{prefix}.{alias.name}")


def lab_violations(root: Path) -> list[str]:
    """Runtime modules importing the lab or its extra's packages, and runtime strings naming the lab
    anywhere but in LAB_NAMES_IN_RUNTIME."""
    packages = lab_packages(root)
    found = []
    if not packages:
        found.append("pyproject.toml: no lab extra")
    for file in runtime_files(root):
        where = file.relative_to(root).as_posix()
        lines = set()  # one report per import statement
        for imported in named_imports(root, file):
            if imported.line not in lines and (
                is_lab(imported.module) or imported.module.split(".")[0] in packages
            ):
                lines.add(imported.line)
                found.append(f"{where}:{imported.line}: the runtime imports {imported.module}")
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        names = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and is_lab(node.value)
        }
        if names != LAB_NAMES_IN_RUNTIME.get(where, set()):
            found.append(f"{where}: names the lab as {sorted(names)}")
    for where, names in LAB_NAMES_IN_RUNTIME.items():
        if not (root / where).exists():
            found.append(f"{where}: missing")
        for name in names:
            path = root / Path(*name.split("."))
            if not (path.with_suffix(".py").exists() or (path / "__init__.py").exists()):
                found.append(f"{where}: names {name}, which is no module")
    return found


def test_no_runtime_module_imports_the_lab() -> None:
    assert lab_violations(ROOT) == []


def test_the_lab_check_catches_every_kind_of_violation(tmp_path: Path) -> None:
    write(
        tmp_path, "pyproject.toml", '[project]\noptional-dependencies = {lab = ["pymodbus>=3", "pycomm3"]}\n'
    )
    for module in ("gateway/lab/__init__.py", "gateway/lab/sim/__init__.py", "gateway/lab/client.py"):
        write(tmp_path, module, "import pymodbus\nfrom gateway import server\n")  # the lab may
    write(tmp_path, "gateway/lab/demo/__init__.py", "")
    write(tmp_path, "gateway/__init__.py", "")
    write(
        tmp_path,
        "gateway/cli.py",
        'LAB = "gateway.lab"\nLAB_COMMANDS = ("gateway.lab.sim", "gateway.lab.client", "gateway.lab.demo")\n',
    )
    write(tmp_path, "gateway/server.py", "def f() -> None:\n    from gateway.lab.sim import plant\n")
    write(tmp_path, "gateway/agent.py", "from gateway import lab\nfrom . import lab as again\n")
    write(tmp_path, "gateway/admin.py", "import importlib\nimportlib.import_module('gateway.lab.demo')\n")
    write(tmp_path, "policies/loader.py", "from pycomm3 import LogixDriver\n")
    write(tmp_path, "protocols/modbus/pdu.py", "if False:\n    import pymodbus.pdu\n")
    write(
        tmp_path, "protocols/modbus/spec.py", "import struct  # pymodbus, gateway.lab: words, not imports\n"
    )
    found = sorted(lab_violations(tmp_path))
    assert found == [
        "gateway/admin.py: names the lab as ['gateway.lab.demo']",
        "gateway/admin.py:2: the runtime imports gateway.lab.demo",
        "gateway/agent.py:1: the runtime imports gateway.lab",
        "gateway/agent.py:2: the runtime imports gateway.lab",
        "gateway/server.py:2: the runtime imports gateway.lab.sim",
        "policies/loader.py:1: the runtime imports pycomm3",
        "protocols/modbus/pdu.py:2: the runtime imports pymodbus.pdu",
    ], found
    write(
        tmp_path,
        "gateway/cli.py",
        'LAB_COMMANDS = ("gateway.lab.sim", "gateway.lab.demo", "gateway.lab.x")\n',
    )
    assert "gateway/cli.py: names the lab as ['gateway.lab.demo', 'gateway.lab.sim', 'gateway.lab.x']" in (
        lab_violations(tmp_path)
    )


# --------------------------------------------------------------------------------- import circles


def import_graph(root: Path, layer: str) -> dict[str, dict[str, int]]:
    """Module -> {module of the same layer it imports: line}. ``from package import name`` imports
    ``package.name`` when that is a module, else ``package``; ``import a.b`` imports ``a.b``. Importing
    a submodule does not count as importing the packages above it: their ``__init__`` runs first, but
    cannot import back into a module still being imported."""
    modules = {module_name(root, file): file for file in python_files(root, layer)}
    graph: dict[str, dict[str, int]] = {}
    for name, file in modules.items():
        edges: dict[str, int] = {}
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                prefix = from_module(root, file, node)
                targets = [
                    f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                    for alias in node.names
                ]
            else:
                targets = [called] if (called := imported_by_call(node)) is not None else []
            for target in targets:
                if target in modules and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def import_circles(graph: dict[str, dict[str, int]]) -> list[str]:
    """One circle per strongly connected group of modules (Tarjan), as a path that returns to its start,
    with the group's other modules when there are more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    found = []
    for group in groups:
        circle = _circle_in(graph, group)
        others = sorted(group - set(circle))
        found.append(circle_text(graph, circle) + (f" (with {', '.join(others)})" if others else ""))
    return sorted(found)


def _circle_in(graph: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    """The shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(graph[module]):
                if target == start:
                    return [*paths[module], start]
                if target in group and target not in paths:
                    paths[target] = [*paths[module], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no circle in {sorted(group)}")  # a strongly connected group always has one


def circle_text(graph: dict[str, dict[str, int]], circle: Iterable[str]) -> str:
    steps = list(circle)
    return (
        " -> ".join(
            f"{module} (line {graph[module][target]})" for module, target in itertools.pairwise(steps)
        )
        + f" -> {steps[-1]}"
    )


@pytest.mark.parametrize("layer", RUNTIME_LAYERS)
def test_no_import_circle_inside_a_layer(layer: str) -> None:
    graph = import_graph(ROOT, layer)
    assert len(graph) > 5, f"no modules found under {layer}/"
    assert import_circles(graph) == []


def test_the_circle_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    write(tmp_path, "policies/__init__.py", "from policies.view import View\n")  # not an edge back up
    write(
        tmp_path,
        "policies/view.py",
        "from policies.modbus.evaluate import Table\nfrom policies import toml\n",
    )
    write(tmp_path, "policies/toml.py", "")
    write(tmp_path, "policies/modbus/__init__.py", "")
    write(
        tmp_path,
        "policies/modbus/evaluate.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..view import View\n",
    )
    write(tmp_path, "policies/a.py", "def f():\n    import policies.b\n")
    write(tmp_path, "policies/b.py", "import importlib\nimportlib.import_module('policies.c')\n")
    write(tmp_path, "policies/c.py", "from policies import a\nfrom policies import e\n")
    write(tmp_path, "policies/e.py", "from policies.b import x\n")
    write(tmp_path, "policies/d.py", "from policies import decision\nfrom policies.errors import x\n")
    write(tmp_path, "policies/decision.py", "import policies.errors\n")
    write(tmp_path, "policies/errors.py", "from policies import toml\n")
    graph = import_graph(tmp_path, "policies")
    circles = import_circles(graph)
    assert circles == [
        "policies.a (line 2) -> policies.b (line 2) -> policies.c (line 1) -> policies.a (with policies.e)",
        "policies.modbus.evaluate (line 3) -> policies.view (line 1) -> policies.modbus.evaluate",
    ], circles
