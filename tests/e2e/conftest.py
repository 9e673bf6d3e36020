"""Fixtures of the end-to-end tests: one PKI per run, a lab (gateway + real peers) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import Lab, Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def lab(pki: Pki, tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(pki, tmp_path)
    try:
        yield lab
    finally:
        await lab.close()
