"""``--ref REF``: a commit from before the compiled build runs as the pure Python it is, instead of
failing to build (the comparison with 2026-11-26's code, issue 17's pure-build target, needs it)."""

from __future__ import annotations

from pathlib import Path

from bench.paths import REPO, _compiles


def test_a_tree_is_compiled_only_when_it_names_modules_to_compile(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "ztgate"\n\n[tool.ruff]\nline-length = 110\n')
    assert not _compiles(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.ztgate]\ncompiled = ["protocols/modbus/pdu.py"]\n')
    assert _compiles(tmp_path)
    assert _compiles(REPO)
