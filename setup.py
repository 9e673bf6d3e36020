"""ztgate's build: the modules of the Modbus request path compiled with mypyc when a C compiler and the
Python headers are present, the same source as pure Python otherwise (docs/build.md).

Everything else about the package is in pyproject.toml, and so is the list of compiled modules
(``[tool.ztgate] compiled``). ``ZTGATE_PURE=1`` at install time forces the pure build.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from setuptools import setup

ROOT = Path(__file__).resolve().parent
# mypyc's shared library for the group: its runtime and every compiled module's code. The modules keep
# their own names as small extension modules that load it.
GROUP = "ztgate_hotpath"


def compiled_sources() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        sources: list[str] = tomllib.load(file)["tool"]["ztgate"]["compiled"]
    return sources


def why_pure() -> str | None:
    """Why this build cannot be compiled, or None when it can."""
    if os.environ.get("ZTGATE_PURE", "") not in ("", "0"):
        return "ZTGATE_PURE is set"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h; Debian: python3-dev)"
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed"
    return None


def remove_in_place_builds(sources: list[str]) -> None:
    """An editable install builds in place: compiled modules sit beside their sources and are imported
    instead of them. A pure build removes what an earlier compiled one left there."""
    for source in sources:
        stem = ROOT / source[: -len(".py")]
        for suffix in EXTENSION_SUFFIXES:
            stem.with_name(stem.name + suffix).unlink(missing_ok=True)
    for suffix in EXTENSION_SUFFIXES:
        (ROOT / f"{GROUP}__mypyc{suffix}").unlink(missing_ok=True)


# The commands that build code. Others (egg_info, dist_info: the metadata pip asks for first) need no
# extension modules, and computing them runs mypy over the sources.
BUILD_COMMANDS = frozenset(("build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"))


def ext_modules() -> list[Any]:
    if not BUILD_COMMANDS.intersection(sys.argv[1:]):
        return []
    sources = compiled_sources()
    reason = why_pure()
    if reason is not None:
        print(f"ztgate: pure-Python build ({reason})", file=sys.stderr)
        remove_in_place_builds(sources)
        return []
    from mypyc.build import mypycify

    print(f"ztgate: compiling {len(sources)} modules with mypyc", file=sys.stderr)
    # mypyc reads the type hints with the project's mypy settings (pyproject.toml [tool.mypy]); the
    # modules it only imports are checked by ./run test's mypy, where every dependency is installed,
    # while the build environment has only the build requirements. Its own cache directory: the one
    # ./run test's mypy leaves in the checkout knows the dependencies' types, so a build that read it
    # would pass here and fail on a fresh checkout, where those types are Any.
    cache = ROOT / "build" / "mypyc-cache"
    return mypycify(
        ["--follow-imports=silent", f"--cache-dir={cache}", *sources], opt_level="3", group_name=GROUP
    )


setup(ext_modules=ext_modules())
