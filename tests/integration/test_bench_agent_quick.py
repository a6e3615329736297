"""The agent benchmark's quick mode end to end: real ``fogline agent run`` processes on loopback.

Checks the structure of the report and that every request was answered by the edge with the
in-process model's numbers; the timing gate itself lives in the benchmark, not here.
"""

from __future__ import annotations

import json

import pytest

from bench.agent import MODELS, QUICK, main

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.models]


def test_quick_run_answers_everything_and_writes_the_report(model_repo, tmp_path):
    out, raw = tmp_path / "agent.md", tmp_path / "agent.json"
    rc = main(["--quick", "--models", str(model_repo), "--out", str(out), "--json", str(raw)], prog="bench")
    assert rc == 0

    data = json.loads(raw.read_text())
    assert data["errors"] == 0 and data["requests"] > 0
    assert data["agent_exits"] == [0, 0]  # both agents drained and exited cleanly on SIGTERM
    assert [a["queue_delay_ms"] for a in data["agents"]] == [None, 0.0]
    floor = ["gRPC floor stream (no model)", "gRPC floor unary (no model)"]
    agents = ["agent stream, defaults", "agent unary, defaults", "agent stream, delay 0 ms", "agent unary, delay 0 ms"]
    paths = ["in-process", "in-process, 1 ms apart", *floor, *agents]
    for model in MODELS:
        latency = data["latency"][model]
        assert list(latency) == paths
        for series in latency.values():
            assert series["errors"] == 0 and series["problems"] == []
            assert series["count"] == QUICK.rounds * QUICK.blocks[model]
            assert 0 < series["p50_ms"] <= series["p99_ms"]
            assert series["max_abs_diff"] <= 1e-4  # the agent's answer is the in-process model's answer
        assert set(data["added_ms"][model]) == set(agents)
        rows = data["throughput"][model]
        assert len(rows) == 2 + 2 * 2 * 2  # in-process x2, then agents x modes x concurrency (1, 8)
        assert all(row["count"] > 0 and row["errors"] == 0 and row["rate_per_s"] > 0 for row in rows)
    assert isinstance(data["gate"]["pass"], bool) and data["gate"]["judged_on"] == "defaults"
    assert data["machine"]["cores"] >= 1 and data["machine"]["samples"] > 0

    report = out.read_text()
    for heading in ("## Latency (ms)", "## Throughput", "## Gate", "Machine:", "Load average", "Command:"):
        assert heading in report
    for model in MODELS:
        for path in paths:
            assert f"| {model} | {path} | {QUICK.rounds * QUICK.blocks[model]} |" in report
        assert f"| {model} | agent stream, defaults, c=8 |" in report
    assert "errors: **0**" in report
