"""bench.models' pure parts: gate arithmetic, report splicing, interleaved timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.models import BEGIN, END, gate_lines, time_interleaved, write_report

pytestmark = pytest.mark.unit


def _result(int8_ms: float, int8_bytes: int, cosine: float) -> dict:
    return {
        "name": "minilm",
        "sizes": {"FP32 ONNX": 90_000_000, "INT8 ONNX": int8_bytes, "FP32 torch weights": 90_000_000},
        "latency": {"8": {"torch FP32": 30.0, "ORT FP32": 27.0, "ORT INT8": int8_ms}},
        "metrics": {"int8": {"cosine_mean": cosine, "nn_agreement": 0.95}},
    }


def test_minilm_speed_gates_are_judged_on_realistic_batches() -> None:
    result = _result(10.0, 25_000_000, 0.998)
    result["latency"]["8 real"] = {"torch FP32": 30.0, "ORT FP32": 27.0, "ORT INT8": 13.0}
    lines = dict(gate_lines(result))
    assert "ORT INT8 batch 8 real 2.31x faster than torch FP32 (gate >= 2.5x)" in lines
    assert lines["ORT INT8 batch 8 real 2.31x faster than torch FP32 (gate >= 2.5x)"] is False


def test_gates_pass_and_fail_on_the_numbers() -> None:
    good = gate_lines(_result(10.0, 25_000_000, 0.998))
    assert all(ok for _, ok in good)
    bad = dict(gate_lines(_result(16.0, 40_000_000, 0.99)))
    assert [ok for ok in bad.values()] == [False, False, False, False]
    assert any("1.69x faster than ORT FP32" in text for text in bad)


def test_report_section_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    out = tmp_path / "models.md"
    out.write_text(f"# notes\nhand-written\n{BEGIN}\nold numbers\n{END}\ntrailer\n")
    write_report(out, f"{BEGIN}\nnew numbers\n{END}")
    text = out.read_text()
    assert "hand-written" in text and "trailer" in text and "new numbers" in text
    assert "old numbers" not in text
    fresh = tmp_path / "fresh.md"
    write_report(fresh, f"{BEGIN}\nx\n{END}")
    assert fresh.read_text().count(BEGIN) == 1


def test_time_interleaved_returns_a_median_per_function() -> None:
    calls = {"a": 0, "b": 0}

    def bump(key: str) -> None:
        calls[key] += 1

    result = time_interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, repeats=7, warmup=2)
    assert set(result) == {"a", "b"} and all(v >= 0 for v in result.values())
    assert calls == {"a": 9, "b": 9}
