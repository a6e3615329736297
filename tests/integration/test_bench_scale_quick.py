"""The scale-out benchmark's quick mode end to end: replicas, agents and load generators as processes.

A tiny run on whatever host runs the tests (1 and 2 replicas of ``digits``, seconds each): the figures
mean nothing here (the real run needs a 16-core host), only that every part ran, both replicas served,
the kill run lost nothing, the added replica got traffic, and the report was written with its gates.
"""

from __future__ import annotations

import math

import pytest

from bench.scale import build_parser, measure, resolve, write_report

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_mode_scales_kills_and_adds(model_repo, tmp_path):
    out = tmp_path / "scale.md"
    args = resolve(build_parser().parse_args(["--quick", "--models", str(model_repo), "--out", str(out)]))
    assert (args.replicas, args.model) == ([1, 2], "digits")

    results = measure(args)

    assert sorted(results.scaling) == [1, 2]
    for window in results.scaling.values():
        assert window.lost == 0 and window.cloud > 0
    assert all(share >= 0.2 for share in results.shares[2]), results.shares[2]
    assert results.kill["all"].lost == 0 and results.kill["after"].cloud > 0
    assert results.add["lost"] == 0 and not math.isnan(results.add["first_s"])

    text = write_report(out, args, results, "quick test")
    assert out.read_text() == text
    assert "## Kill" in text and "## Add" in text
    assert text.count("PASS") + text.count("FAIL") == 2
