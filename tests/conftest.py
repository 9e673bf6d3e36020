"""Shared test set-up: end-to-end tests run once on uvloop and once on the standard asyncio loop; the
overlay load tests drive their many clients from uvloop, the loop a gateway runs on; one PKI and, for
the tests that need one, one PostgreSQL cluster (tests/postgres.py) per pytest-xdist worker; the
workers' plugin (tests/parallel.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Mapping

import pytest
import uvloop

from tests import postgres
from tests.e2e.harness import Pki, make_pki
from tests.postgres import Cluster

pytest_plugins = ["tests.parallel"]  # the suite on pytest-xdist's workers

LOOPS: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if "e2e" in item.path.parts or item.get_closest_marker("both_loops") is not None:
        return LOOPS
    if "overlay" in item.path.parts or "fuzz" in item.path.parts:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster for the whole session, started when a test first asks for it."""
    with postgres.cluster() as found:
        yield found


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh database of its own for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_cluster.sql(f'CREATE DATABASE "{name}"')
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
