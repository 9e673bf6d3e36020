"""Shared test set-up: end-to-end tests run once on uvloop and once on the standard asyncio loop; the
overlay load tests drive their many clients from uvloop, the loop a gateway runs on; one PKI per run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

from tests.e2e.harness import Pki, make_pki

LOOPS: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if "e2e" in item.path.parts:
        return LOOPS
    if "overlay" in item.path.parts or "fuzz" in item.path.parts:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
