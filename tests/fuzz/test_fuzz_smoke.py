"""A short run of each fuzz campaign (tests/fuzz, docs/testing.md): the long form runs a million inputs
per protocol by hand; the suite checks that the campaign works and finds nothing in its first inputs."""

from __future__ import annotations

import pytest

from tests.fuzz.campaign import run_campaign
from tests.fuzz.targets import TARGETS


@pytest.mark.parametrize("protocol", sorted(TARGETS))
async def test_a_short_fuzz_campaign_finds_nothing(protocol: str) -> None:
    report = await run_campaign(TARGETS[protocol], 2000, seed=20261207, check_every_s=0.5)
    assert report.inputs == 2000 and report.answered > 1000 and report.closed > 0  # both paths exercised
    assert not report.problems(64 << 20), report
