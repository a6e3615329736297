"""bench.cloud's report: the ceiling is the best in-process row of all, and the gates read from it."""

from __future__ import annotations

import pytest

from bench.cloud import BATCH_SIZES, CONCURRENCY, SIDE_BY_SIDE_BATCHES, Run, write_report

pytestmark = pytest.mark.unit


def _run(label: str, rate: float, p50_ms: float, batch: int) -> Run:
    run = Run(label)
    run.add(int(rate), 1.0, [p50_ms] * 3, [batch] * 3)
    return run


def test_gates_use_the_best_in_process_row_and_the_single_caller_ratio_is_reported(tmp_path):
    runs = {("in", b): _run(f"in-process batch {b}", 100 + 5 * b if b <= 32 else 150, 5.0 * b, b)
            for b in BATCH_SIZES}
    runs |= {("side", b): _run(f"in-process batch {b}, 2 callers x 1 thread", 300 if b == 8 else 200, 40, b)
             for b in SIDE_BY_SIDE_BATCHES}
    runs |= {("on", c): _run(f"gRPC stream, batching on, c={c}", {1: 100, 8: 200, 32: 243}[c],
                             {1: 6.5, 8: 30, 32: 100}[c], 8) for c in CONCURRENCY}
    runs |= {("off", c): _run(f"gRPC stream, batching off, c={c}", 100, 8.0, 1) for c in CONCURRENCY}
    out = tmp_path / "cloud.md"
    write_report(out, "cpu", 1, 2.0, runs)
    text = out.read_text()
    assert "In-process ceiling: **300.0/s** (in-process batch 8, 2 callers x 1 thread)" in text
    assert "ceiling: **81.0%** (gate >= 90%: FAIL)" in text
    assert "best single-caller row (in-process batch 32, 260.0/s): 93.5%" in text
    assert "c=1 p50 over in-process batch-1 p50: **+1.50 ms** (gate <= +2 ms: pass)" in text
    assert (tmp_path / "cloud.png").exists()
