"""Which build is running: the Modbus request path compiled with mypyc, or pure Python (docs/build.md).

Found from the files, without importing the modules: a compiled module is an extension module beside
(or instead of) its source. An editable install builds in place, so a source edited after the build is
shadowed by its older compiled module until the next install: such modules are reported as stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from gateway import __version__

PACKAGES = ("protocols", "policies", "gateway")
ROOT = Path(__file__).resolve().parent.parent
# A wheel installs a module's source and its compiled module within moments of each other; an edit
# after an in-place build comes later than this.
_STALE_AFTER_S = 2.0


@dataclass(frozen=True)
class Build:
    compiled: tuple[str, ...]  # dotted names of the modules loaded from compiled code
    stale: tuple[str, ...]  # compiled modules whose source changed after they were built

    @property
    def kind(self) -> str:
        return "compiled" if self.compiled else "pure"

    def describe(self) -> str:
        if not self.compiled:
            return "pure Python"
        text = f"compiled with mypyc: {len(self.compiled)} modules ({', '.join(self.compiled)})"
        if self.stale:
            text += f"; STALE, their sources changed since the build: {', '.join(self.stale)}"
        return text


def _module_name(root: Path, path: Path) -> tuple[str, Path] | None:
    """The dotted name of the compiled module at ``path`` and its source file, if it is one."""
    for suffix in EXTENSION_SUFFIXES:
        if path.name.endswith(suffix):
            stem = path.name[: -len(suffix)]
            relative = path.parent.relative_to(root).parts
            return ".".join((*relative, stem)), path.with_name(stem + ".py")
    return None


def current_build(root: Path = ROOT) -> Build:
    """The build of the packages under ``root`` (the installed ones by default)."""
    compiled: list[str] = []
    stale: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.*")):
            found = _module_name(root, path)
            if found is None:
                continue
            name, source = found
            compiled.append(name)
            if source.exists() and source.stat().st_mtime > path.stat().st_mtime + _STALE_AFTER_S:
                stale.append(name)
    return Build(tuple(compiled), tuple(stale))


def version_text() -> str:
    """What ``ztgate --version`` prints."""
    return f"ztgate {__version__} ({current_build().describe()})"
