"""The flood benchmark's quick mode end to end: a real cloud with tokens, a flooder process, a victim.

One short round: the flooder (16 in flight against a limit of 4) must be refused with
RESOURCE_EXHAUSTED and still be served, the victim must be answered in both conditions with no
error, and the report must be written with its gate line. The gate itself is not asserted: a timed
ratio on a shared machine is the benchmark's job, not a test's.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.flood import build_parser, measure, resolve, write_report

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.models]


def test_quick_mode_refuses_the_flooder_and_serves_the_victim(model_repo, tmp_path):
    out = tmp_path / "flood.md"
    args = resolve(build_parser().parse_args(["--quick", "--models", str(model_repo), "--out", str(out)]))
    assert (args.rounds, args.limit, args.flood_inflight) == (1, 4, 16)

    result = asyncio.run(measure(args))

    assert len(result.floods) == 1
    flood = result.floods[0]
    assert flood["exhausted"] > 0, flood  # past its limit the flooder is refused ...
    assert flood["ok"] > 0, flood  # ... but what fits under the limit is served
    assert flood["other"] == 0, flood["first_other"]
    for phase in (result.unloaded, result.loaded):
        assert phase.errors == []
        assert len(phase.latencies) > 10 and len(phase.p99) == 1

    text = write_report(out, args, result, "quick test")
    assert out.read_text() == text
    assert "flooder on" in text and "RESOURCE_EXHAUSTED" in text
    assert ("PASS" in text) != ("FAIL" in text)
