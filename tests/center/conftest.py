"""Fixtures of the center's tests: a site (a center folder and what the test starts around it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.center.harness import Site


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    found = Site(tmp_path)
    try:
        yield found
    finally:
        await found.close()
