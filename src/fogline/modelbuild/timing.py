"""Median latency of one model call at a few batch sizes (what an import records for both forms), and
the comparison of the INT8 edge form with FP32 ONNX an import records and warns about."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

BATCHES = (1, 8)
EDGE_KEY = "edge_int8_onnxruntime"
#: The FP32 ONNX timing to compare with: the reference ONNX of a torch-served model, else the full form.
FP32_ONNX_KEYS = ("fp32_onnxruntime", "full_fp32_onnxruntime")
#: INT8 counts as slower when its median exceeds FP32's by more than this fraction and by more than
#: ``SLOWER_MIN_MS`` (below that, a model of a few microseconds flips with the machine's noise).
SLOWER_MARGIN = 0.05
SLOWER_MIN_MS = 0.05


def tile_rows(arrays: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """``rows`` rows of every array, repeating the first rows when there are fewer."""
    out = {}
    for name, array in arrays.items():
        reps = -(-rows // array.shape[0])
        out[name] = np.ascontiguousarray(np.concatenate([array] * reps)[:rows])
    return out


def median_ms(call: Callable[[dict[str, np.ndarray]], object], arrays: Mapping[str, np.ndarray],
              batches: Sequence[int] = BATCHES, repeats: int = 7) -> dict[str, float]:
    """``{"batch_1": ms, "batch_8": ms}``: the median of ``repeats`` calls after one warm-up call."""
    out = {}
    for rows in batches:
        feed = tile_rows(arrays, rows)
        call(feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call(feed)
            times.append(time.perf_counter() - start)
        out[f"batch_{rows}"] = round(1000 * float(np.median(times)), 3)
    return out


def int8_vs_fp32(latency_ms: Mapping[str, Mapping[str, float]], batch: str = "batch_1") -> dict[str, Any] | None:
    """What an import records under ``latency`` in its manifest: both medians at ``batch`` and
    ``int8_slower_than_fp32``; None when ``latency_ms`` lacks either form's timing."""
    fp32 = next((latency_ms[k] for k in FP32_ONNX_KEYS if k in latency_ms), None)
    edge = latency_ms.get(EDGE_KEY)
    if fp32 is None or edge is None or batch not in fp32 or batch not in edge:
        return None
    int8_ms, fp32_ms = edge[batch], fp32[batch]
    slower = int8_ms > fp32_ms * (1 + SLOWER_MARGIN) and int8_ms - fp32_ms > SLOWER_MIN_MS
    return {"compared_at": batch, "int8_ms": int8_ms, "fp32_onnx_ms": fp32_ms, "int8_slower_than_fp32": slower}


def slower_warning(name: str, comparison: Mapping[str, Any] | None, method: str) -> str | None:
    """The one line an import ends with when its INT8 edge form is slower than FP32 ONNX; None otherwise."""
    if not comparison or not comparison.get("int8_slower_than_fp32"):
        return None
    other = "dynamic" if method == "static_qdq" else "static"
    return (f"warning: {name}: the INT8 edge form is smaller but slower than FP32 ONNX on this CPU "
            f"({comparison['compared_at'].replace('_', ' ')}: {comparison['int8_ms']:g} vs "
            f"{comparison['fp32_onnx_ms']:g} ms); you may serve it anyway, or re-import with a different "
            f"--quantization (this one was {method}; e.g. --quantization {other})")
