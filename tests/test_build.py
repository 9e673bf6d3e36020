"""The build that runs (docs/build.md): the Modbus request path compiled with mypyc, or pure Python."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from gateway.build_info import current_build

ROOT = Path(__file__).resolve().parent.parent


def listed_modules() -> list[str]:
    """The modules pyproject.toml asks setup.py to compile, by dotted name."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        sources: list[str] = tomllib.load(file)["tool"]["ztgate"]["compiled"]
    return [source.removesuffix(".py").replace("/", ".") for source in sources]


def test_the_build_reported_is_the_code_imported() -> None:
    build = current_build()
    assert set(build.compiled) <= set(listed_modules()), "only the listed modules are ever compiled"
    for name in listed_modules():
        module_file = importlib.import_module(name).__file__
        assert module_file is not None
        from_extension = module_file.endswith(tuple(EXTENSION_SUFFIXES))
        assert from_extension == (name in build.compiled), name


def test_a_compiled_build_compiles_every_listed_module() -> None:
    build = current_build()
    if build.kind == "pure":
        pytest.skip("the pure-Python build is running")
    assert sorted(build.compiled) == sorted(listed_modules())


def test_no_compiled_module_is_older_than_its_source() -> None:
    # An editable install compiles in place: after an edit, ./run (or pip install -e .) rebuilds.
    assert current_build().stale == ()


@pytest.mark.skipif(not os.environ.get("ZTGATE_EXPECT_BUILD"), reason="set by .ci/run for each build")
def test_the_build_is_the_one_ci_asked_for() -> None:
    assert current_build().kind == os.environ["ZTGATE_EXPECT_BUILD"]


def test_version_names_the_build() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    build = current_build()
    compiled = f"compiled with mypyc: {len(build.compiled)} modules"
    expected = "pure Python" if build.kind == "pure" else compiled
    assert done.stdout.startswith("ztgate ") and expected in done.stdout


def test_a_source_edited_after_the_build_is_reported_stale(tmp_path: Path) -> None:
    package = tmp_path / "protocols" / "modbus"
    package.mkdir(parents=True)
    source, compiled = package / "pdu.py", package / f"pdu{EXTENSION_SUFFIXES[0]}"
    source.write_text("")
    compiled.write_bytes(b"")
    os.utime(compiled, (1_000_000, 1_000_000))
    os.utime(source, (1_000_001, 1_000_001))  # within moments: a wheel's files, written one by one
    fresh = current_build(tmp_path)
    assert (fresh.kind, fresh.compiled, fresh.stale) == ("compiled", ("protocols.modbus.pdu",), ())
    os.utime(source, (1_000_060, 1_000_060))
    stale = current_build(tmp_path)
    assert stale.stale == ("protocols.modbus.pdu",)
    assert "STALE" in stale.describe() and "protocols.modbus.pdu" in stale.describe()
    assert current_build(tmp_path / "empty").describe() == "pure Python"


def test_the_compiled_modules_type_check_as_the_build_environment_sees_them(tmp_path: Path) -> None:
    """pip builds in an environment with only the build requirements: there, every dependency's value
    is Any, and a compiled module that returns one bare as a typed value fails the build (CI's fresh
    checkout did, while every local build passed). mypy without site-packages and with an empty cache
    sees what that build sees."""
    sources = [module.replace(".", "/") + ".py" for module in listed_modules()]
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-site-packages",
            "--follow-imports=silent",
            f"--cache-dir={tmp_path}",
            *sources,
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
