from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.center.harness import Site
from tests.e2e.harness import Lab, Pki


@pytest_asyncio.fixture
async def lab(pki: Pki, tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(pki, tmp_path)
    try:
        yield lab
    finally:
        await lab.close()


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    found = Site(tmp_path)
    try:
        yield found
    finally:
        await found.close()
