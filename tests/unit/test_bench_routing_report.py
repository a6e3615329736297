"""The routing report from synthetic runs: tables, overview, winners, gates and the plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.routing import BenchConfig, BenchResult, PolicyRun, ScenarioResult
from bench.routing_driver import Outcome
from bench.routing_oracle import ServiceTimes, oracle_choices
from bench.routing_report import plot_scenario, render_markdown, write_report
from bench.routing_scenarios import Phase, scenario_from_mapping
from bench.routing_workload import Workload, poisson_schedule
from fogline.netproxy.proxy import NetConditions

pytestmark = pytest.mark.unit

TIMES = ServiceTimes({"minilm": 8.0, "digits": 4.0}, {"minilm": 20.0, "digits": 6.0},
                     {"minilm": 120.0, "digits": 310.0}, {"minilm": 1674.0, "digits": 180.0})


def _workload() -> Workload:
    emb = np.eye(4, 384, dtype=np.float32)
    quality = {("minilm", "cloud"): np.ones(4), ("minilm", "edge"): np.full(4, 0.99),
               ("digits", "cloud"): np.ones(6), ("digits", "edge"): np.array([1, 1, 1, 1, 1, 0.0])}
    return Workload(("a", "b", "c", "d"), emb, np.zeros((6, 8, 8), np.float32), np.arange(6), "six digits", quality)


def _result(tmp_path: Path) -> BenchResult:
    scenario = scenario_from_mapping({"name": "step_up", "description": "good then bad", "duration_s": 4,
                                      "phases": [{"at_s": 0, "delay_ms": 5}, {"at_s": 2, "delay_ms": 250}]}, "t")
    arrivals = poisson_schedule(4, 25, streams=2, item_counts={"minilm": 4, "digits": 6}, seed=1)
    timeline = [Phase(0.0, NetConditions(delay_ms=5)), Phase(2.01, NetConditions(delay_ms=250))]

    def run(policy: str, pick) -> PolicyRun:
        outs = []
        for a in arrivals:
            by, lat = pick(a)
            q = 1.0 if by == "cloud" else (0.99 if a.model == "minilm" else 1.0)
            outs.append(Outcome(a.index, a.model, a.t_s, status="ok", latency_ms=lat, served_by=by, quality=q))
        return PolicyRun(policy, outs, timeline, 4.0, 1.0)

    good = lambda a: a.t_s < 2.0  # noqa: E731
    runs = {
        "edge_only": run("edge_only", lambda a: ("edge", 7.0)),
        "cloud_only": run("cloud_only", lambda a: ("cloud", 25.0) if good(a) else ("edge", 101.0)),
        "latency_aware": run("latency_aware", lambda a: ("cloud", 25.0) if good(a) else ("edge", 8.0)),
    }
    sr = ScenarioResult(scenario, 100.0, arrivals, runs, {"hedged": "the agent refused it at start: x"})
    sr.oracle = oracle_choices(arrivals, timeline, TIMES, 100.0)
    config = BenchConfig(models_dir=tmp_path, scenarios=(scenario,),
                         policies=("edge_only", "cloud_only", "latency_aware", "hedged"), out_dir=tmp_path)
    return BenchResult(config, TIMES, "six digits", [sr], 12.0)


def test_markdown_states_gates_winners_and_skips(tmp_path):
    md = render_markdown(_result(tmp_path), _workload(), "python -m bench.routing")
    assert "## Gates" in md and "| zero lost | yes |" in md
    assert "| SLO within 1 point of oracle | yes |" in md
    assert "| beats cloud_only on SLO (bad network) | yes |" in md
    assert "| beats edge_only on quality (good network) | yes |" in md
    assert "| step_up | latency_aware |" in md  # the winner table
    assert "| step_up | 100 / 0 |" in md  # overview: edge_only met every SLO, never the full model
    assert "skipped |" in md  # hedged's overview cell
    assert "Skipped `hedged`: the agent refused it at start" in md
    assert "cloud_ms = (t' - t) + D_up(t') + S_cloud(model)" in md
    assert "| **latency_aware** |" in md
    assert "| 2.01 s, to bad: misses for | 0.00 |" in md  # edge_only: no misses after the turn


def test_report_files_are_written(tmp_path):
    result = _result(tmp_path)
    path = write_report(result, _workload(), "cmd")
    assert path.read_text().startswith("# Routing benchmark")
    assert (tmp_path / "routing.json").stat().st_size > 100
    png = tmp_path / "routing_step_up.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_scenario(result.scenarios[0], tmp_path / "again.png")
    assert (tmp_path / "again.png").stat().st_size > 10_000
