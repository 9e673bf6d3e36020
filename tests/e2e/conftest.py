"""Fixtures of the end-to-end tests: a lab (gateway, real peers) per test; the PKI is in tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import Lab, Pki


@pytest.fixture
async def lab(pki: Pki, tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(pki, tmp_path)
    try:
        yield lab
    finally:
        await lab.close()
