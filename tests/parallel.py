"""The suite on pytest-xdist's workers (``./run test`` passes ``-n auto --dist worksteal``); a plugin that
tests/conftest.py loads. docs/testing.md says what a new test must do to run safely in parallel.

- ``-n auto`` starts one worker more than the machine has cores: the suite's tests spend much of their
  time waiting on processes they started (gateways, simulators, PostgreSQL, rsyslog) and on the network,
  so one worker per core leaves cores idle.
- A test marked ``alone`` runs while no other test of the run does: the workers share a read-write lock,
  every test holds it shared from its setup to its teardown, an ``alone`` test holds it exclusively.
  For tests whose outcome depends on having the machine (a load test with a bound in wall-clock time).
  A gate, taken before the lock and let go once it is held, keeps the shared holders from starving a
  waiting ``alone`` test (a reader-writer lock with writer preference).
- Without xdist (``-n 0``, ``-p no:xdist``) the mark does nothing: the tests run one at a time anyway.

Why ``worksteal``: it hands each worker a contiguous run of the collection, so a module's tests mostly
share one worker and its module-scoped fixtures, and moves the tail of a busy worker's queue to an idle
one, which balances a suite of multi-second and sub-millisecond tests. ``loadfile``/``loadscope`` keep
each module whole on one worker but leave workers idle behind the longest modules; ``xdist_group``
marks do nothing with pytest 9.2 (xdist 3.8's ``loadgroup`` appends the group to an attribute pytest no
longer reads), so a module-scoped fixture is per worker, like every fixture: nothing may rely on the
tests of a module running in one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_LOCK_DIR = "ztgate_lock_dir"  # the key in the workers' workerinput
_lock_key = pytest.StashKey["RunLock"]()
_controller_dir_key = pytest.StashKey[Path]()


class RunLock:
    """The run's read-write lock over files in a directory the controller made for this run."""

    def __init__(self, directory: Path) -> None:
        self.gate = directory / "gate"
        self.tests = directory / "tests"

    @contextlib.contextmanager
    def held(self, *, exclusive: bool) -> Iterator[None]:
        with self.gate.open("a") as gate, self.tests.open("a") as tests:
            fcntl.flock(gate, fcntl.LOCK_EX)
            try:
                fcntl.flock(tests, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
            try:
                yield
            finally:
                fcntl.flock(tests, fcntl.LOCK_UN)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return len(os.sched_getaffinity(0)) + 1


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """On the controller, for each worker it starts: the lock's directory, made once per run."""
    config: pytest.Config = node.config
    if _controller_dir_key not in config.stash:
        config.stash[_controller_dir_key] = Path(tempfile.mkdtemp(prefix="ztgate-pytest-lock-"))
    node.workerinput[_LOCK_DIR] = str(config.stash[_controller_dir_key])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "alone: runs while no other test of the run does (tests/parallel.py)")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and _LOCK_DIR in workerinput:
        config.stash[_lock_key] = RunLock(Path(workerinput[_LOCK_DIR]))


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_controller_dir_key, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: the wait is not part of the test's timeout
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    lock = item.config.stash.get(_lock_key, None)
    if lock is None:
        return (yield)
    with lock.held(exclusive=item.get_closest_marker("alone") is not None):
        return (yield)
