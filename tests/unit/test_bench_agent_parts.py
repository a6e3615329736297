"""The agent benchmark's pure parts: flag parsing, the added-latency arithmetic, the gate, the report."""

from __future__ import annotations

import json

import pytest

from bench.agent import QUICK, agent_specs, main, write_fleet
from bench.agent_measure import Series
from bench.agent_report import AgentSpec, Result, write_json, write_markdown

pytestmark = pytest.mark.unit


def test_agent_specs_parse_default_and_numbers():
    specs = agent_specs(["default", "0", "1.5"])
    assert specs == [AgentSpec("defaults", None), AgentSpec("delay 0 ms", 0.0), AgentSpec("delay 1.5 ms", 1.5)]
    with pytest.raises(ValueError, match=">= 0"):
        agent_specs(["-1"])
    with pytest.raises(ValueError, match="differ"):
        agent_specs(["0", "0.0"])
    with pytest.raises(ValueError):
        agent_specs(["fast"])


@pytest.mark.parametrize("argv", [["--queue-delay-ms", "-2"], ["--concurrency", "0"], ["--queue-delay-ms", "x"]])
def test_bad_flags_exit_2_before_starting_anything(argv, capsys):
    assert main(argv, prog="bench agent") == 2
    assert capsys.readouterr().err.startswith("bench agent: ")


def test_fleet_file_sets_the_delay_only_when_asked(tmp_path):
    import yaml

    default = yaml.safe_load(write_fleet(tmp_path, AgentSpec("defaults", None)).read_text())
    zero = yaml.safe_load(write_fleet(tmp_path, AgentSpec("delay 0 ms", 0.0)).read_text())
    assert "batching" not in default["defaults"]
    assert zero["defaults"]["batching"] == {"max_queue_delay_ms": 0.0}
    assert default["defaults"]["routing"] == {"policy": "edge_only"}


def _result(stream_ms: float) -> Result:
    specs = [AgentSpec("defaults", None), AgentSpec("delay 0 ms", 0.0)]
    result = Result(command="bench agent --quick", plan=QUICK, agents=specs, cloud_mode="none",
                    concurrency=[1, 8])
    for model in ("digits", "minilm"):
        lat = {"in-process": Series("in-process", [0.1] * 99 + [0.5])}
        for spec in specs:
            lat[Result.key("stream", spec)] = Series("s", [0.1 + stream_ms] * 99 + [2.0])
            lat[Result.key("unary", spec)] = Series("u", [0.4] * 100)
        result.latency[model] = lat
        result.throughput[model] = [Series("agent stream, defaults, c=8", [1.0] * 50, seconds=0.5)]
    result.machine = {"cores": 2, "load1_start": 1.0, "load1_mean": 1.2, "load1_max": 1.5, "samples": 3}
    result.agent_exits = [0, 0]
    return result


def test_added_latency_and_gate():
    fast, slow = _result(0.5), _result(1.5)
    assert fast.added("digits", "agent stream, defaults", 50) == pytest.approx(0.5)
    assert fast.gate() and not slow.gate()
    slow.latency["minilm"]["agent stream, defaults"].latencies_ms[:] = [0.2] * 100
    assert not slow.gate()  # every model must pass
    assert fast.throughput["digits"][0].rate == pytest.approx(100.0)


def test_failures_are_counted_and_reported(tmp_path):
    result = _result(0.5)
    result.latency["digits"]["agent unary, defaults"].fail("UNAVAILABLE: gone")
    assert result.errors() == 1
    write_markdown(tmp_path / "a.md", result)
    write_json(tmp_path / "a.json", result)
    text = (tmp_path / "a.md").read_text()
    assert "errors: **1**" in text and "UNAVAILABLE: gone" in text and "**PASS**" in text
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["errors"] == 1 and data["gate"]["pass"] is True
    assert data["added_ms"]["digits"]["agent stream, defaults"]["p50"] == pytest.approx(0.5)
