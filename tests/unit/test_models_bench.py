"""bench.models' pure parts: gate arithmetic, inputs from a signature, report splicing, interleaved timing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.models import BEGIN, END, gate_lines, source_text, time_interleaved, write_report
from bench.models_inputs import FREE_DIM, workload
from bench.models_report import render

pytestmark = pytest.mark.unit


def _result(int8_ms: float, int8_bytes: int, failures: list[str] | None = None, kind: str = "build") -> dict:
    return {
        "name": "minilm", "version": "1", "kind": kind, "task": "embedding", "source": "x",
        "sizes": {"FP32 ONNX": 90_000_000, "INT8 ONNX": int8_bytes, "FP32 torch file": 90_000_000},
        "runtimes": ["torch FP32", "ORT FP32", "ORT INT8"],
        "latency": {"1": {"torch FP32": 9.0, "ORT FP32": 6.0, "ORT INT8": 3.0},
                    "8": {"torch FP32": 30.0, "ORT FP32": 27.0, "ORT INT8": int8_ms}},
        "gate_column": "8", "description": "inputs", "details": [], "recipe": {},
        "fidelity": {"text": "cosine 0.998", "remeasured": kind == "build", "failures": failures or []},
    }  # fmt: skip


def test_speed_gates_are_judged_on_the_gate_column() -> None:
    result = _result(10.0, 25_000_000)
    result["latency"]["8 real"] = {"torch FP32": 30.0, "ORT FP32": 27.0, "ORT INT8": 13.0}
    result["gate_column"] = "8 real"
    lines = dict(gate_lines(result))
    assert lines["ORT INT8 batch 8 real 2.31x faster than torch FP32 (gate >= 2.5x)"] is False


def test_gates_pass_and_fail_on_the_numbers() -> None:
    good = gate_lines(_result(10.0, 25_000_000))
    assert all(ok for _, ok in good)
    bad = dict(gate_lines(_result(16.0, 40_000_000, ["minilm: INT8 mean cosine 0.9900 is below the gate 0.995"])))
    assert [ok for ok in bad.values()] == [False, False, False, False]
    assert any("1.69x faster than ORT FP32" in text for text in bad)


def test_an_import_is_judged_by_its_fidelity_gate_only() -> None:
    slow = _result(40.0, 80_000_000, kind="import")
    assert gate_lines(slow) == [("fidelity gates: all met", True)]
    below = _result(40.0, 80_000_000, ["imported below its gate"], kind="import")
    assert gate_lines(below) == [("fidelity gates: imported below its gate", False)]


def test_a_model_without_a_torch_form_has_no_torch_gate_or_row() -> None:
    result = _result(10.0, 25_000_000)
    result["runtimes"] = ["ORT FP32", "ORT INT8"]
    for column in result["latency"].values():
        del column["torch FP32"]
    assert not any("torch" in text for text, _ in gate_lines(result))
    text = render([result], "_header_")
    assert "| `minilm` v1 | x | 90.00 MB | 25.00 MB (3.60x) | n/a | 6.000 / 27.0 | 3.000 / 10.0 |" in text
    assert "| torch FP32 |" not in text and "No torch form" in text


def test_tensor_inputs_come_from_the_signature(tmp_path: Path) -> None:
    manifest = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8], "value_range": [0.0, 16.0]},
                           {"name": "steps", "datatype": "INT64", "shape": [-1, -1]}]}  # fmt: skip
    load = workload(tmp_path, manifest)
    assert list(load.feeds) == ["1", "8"] and load.gate_column == "8"
    feed = load.feeds["8"][0]
    assert feed["image"].shape == (8, 8, 8) and feed["image"].dtype == np.float32
    assert feed["image"].min() >= 0.0 and feed["image"].max() <= 16.0
    assert feed["steps"].shape == (8, FREE_DIM) and feed["steps"].dtype == np.int64
    assert "uniform in [0, 16]" in load.description


def test_source_text_says_how_the_version_was_made() -> None:
    build = {"build": {"revision": 9}, "artifacts": {"full_torchscript": "full/model.pt"},
             "import": {"source": {"kind": "onnx"}}}  # fmt: skip
    assert source_text(build) == "`fogline models build`: ONNX + TorchScript .pt"
    assert source_text({"artifacts": {"full_program": "f"}, "import": {"source": {"kind": "torch_export"}}}) == \
        "import: torch.export .pt2"


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
