"""The routing benchmark's quick mode end to end: real cloud, proxy and agent processes on loopback.

Two shortened scenarios (a good link; a link that goes dark) with ``latency_aware`` and ``cloud_only``:
every request must be answered (zero errors, zero lost), the cloud must answer many requests while
the link is good and the edge most of them while it is dark, and the report with one plot per
scenario must be written.
"""

from __future__ import annotations

import pytest

from bench.routing import build_config, build_parser, run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.models]


def test_quick_mode_loses_nothing(model_repo, tmp_path):
    args = build_parser("bench").parse_args(["--quick", "--models", str(model_repo), "--out", str(tmp_path)])
    config = build_config(args)
    assert {s.name for s in config.scenarios} == {"steady_good", "outage"}
    assert all(s.duration_s <= 6 for s in config.scenarios)

    result = run_benchmark(config, command="quick test")

    assert result.problems() == []  # the zero-loss property: no errors, no lost requests
    for sr in result.scenarios:
        assert set(sr.runs) == {"latency_aware", "cloud_only"}
        for run in sr.runs.values():
            assert len(run.outcomes) == len(sr.arrivals) > 20
            assert all(o.status == "ok" and o.latency_ms is not None for o in run.outcomes)
            assert all(o.served_by in ("edge", "cloud") for o in run.outcomes)
    good = next(sr for sr in result.scenarios if sr.scenario.name == "steady_good")
    served = [o.served_by for o in good.runs["latency_aware"].outcomes]
    assert served.count("cloud") >= 0.25 * len(served)  # a good link: the full model answers (CPU noise aside)
    outage = next(sr for sr in result.scenarios if sr.scenario.name == "outage")
    dark = [o for o in outage.runs["cloud_only"].outcomes
            if outage.scenario.conditions_at(o.t_s - 0.3).blackhole and outage.scenario.conditions_at(o.t_s).blackhole]
    assert dark and sum(o.served_by == "edge" for o in dark) >= 0.5 * len(dark)  # the link is dark: the edge

    report = (tmp_path / "routing.md").read_text()
    assert "## Gates" in report and "latency_aware" in report
    assert (tmp_path / "routing_steady_good.png").stat().st_size > 10_000
    assert (tmp_path / "routing_outage.png").stat().st_size > 10_000


def test_a_policy_the_agent_refuses_is_reported_as_a_start_error(tmp_path):
    """The benchmark skips a policy when the agent exits with code 2 at start; this is that signal."""
    from bench import routing_procs as procs

    fleet = procs.write_fleet(tmp_path, "no_such_policy", cloud_port=9, slo_ms=100)
    with pytest.raises(procs.StartError, match="code 2") as info:
        procs.start_agent(fleet, cloud_port=9, models_dir=tmp_path, timeout_s=60)
    assert "policy" in str(info.value)
