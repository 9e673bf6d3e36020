"""Fixtures of the end-to-end tests: a lab (gateway, real peers) per test; the PKI is in tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import Lab, Pki
from tests.peers.cpppo_server import CpppoProcess


@pytest.fixture
async def cpppo() -> AsyncIterator[CpppoProcess]:
    server = CpppoProcess()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def lab(pki: Pki, tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(pki, tmp_path)
    try:
        yield lab
    finally:
        await lab.close()
    # Every e2e run's audit records, of all three protocols, held to the one documented schema.
    problems = lab.schema_problems()
    assert not problems, "audit records off the schema (docs/audit.md):\n" + "\n".join(problems[:20])
