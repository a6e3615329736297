"""How an imported model's INT8 form is judged against its FP32 form: one metric set per task.

Measured on the evaluation rows (``--eval``, else the calibration rows), INT8 ONNX against FP32 ONNX,
on the task's primary output (a classifier's scores output; every output for the others):

| task | metrics | default gate |
| --- | --- | --- |
| ``classification`` | ``top1_agreement`` (argmax equal); with ``labels``: ``accuracy_fp32``, ``accuracy_int8``, ``accuracy_drop_points`` | ``top1_agreement_min`` 0.97, ``accuracy_drop_points_max`` 1.0 |
| ``embedding`` | ``cosine_mean``, ``cosine_min`` (row-wise cosine) | ``cosine_mean_min`` 0.99 |
| ``generic`` | ``relative_error`` (‖INT8 - FP32‖ / ‖FP32‖ over each output; the largest) | ``relative_error_max`` 0.05 |

``--gate NAME=VALUE`` replaces a default for one import (looser or stricter: the user owns the model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fogline.modelbuild.fidelity import cosine_rows
from fogline.modelbuild.import_errors import ImportRefused

TASKS = ("classification", "embedding", "generic")

DEFAULT_GATES: dict[str, dict[str, float]] = {
    "classification": {"top1_agreement_min": 0.97, "accuracy_drop_points_max": 1.0},
    "embedding": {"cosine_mean_min": 0.99},
    "generic": {"relative_error_max": 0.05},
}


def gates_for(task: str, overrides: Sequence[str] = ()) -> dict[str, float]:
    """The task's default gate with ``NAME=VALUE`` overrides applied; ``ImportRefused`` on a bad one."""
    limits = dict(DEFAULT_GATES[task])
    for text in overrides:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or key not in limits:
            raise ImportRefused(f"--gate {text!r}: expected NAME=VALUE with NAME one of {', '.join(limits)} "
                                f"(the {task} gates)")
        try:
            limits[key] = float(value)
        except ValueError:
            raise ImportRefused(f"--gate {text!r}: {value.strip()!r} is not a number") from None
    return limits


def measure(task: str, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
            scores_output: str | None, labels: np.ndarray | None) -> dict[str, float]:
    """The task's metrics of ``candidate`` (INT8 outputs) against ``reference`` (FP32 outputs)."""
    if task == "classification":
        assert scores_output is not None
        ref, cand = np.asarray(reference[scores_output]), np.asarray(candidate[scores_output])
        metrics = {"top1_agreement": _round(np.mean(ref.argmax(1) == cand.argmax(1)))}
        if labels is not None:
            fp32, int8 = np.mean(ref.argmax(1) == labels), np.mean(cand.argmax(1) == labels)
            metrics.update(accuracy_fp32=_round(fp32), accuracy_int8=_round(int8),
                           accuracy_drop_points=_round(100 * (fp32 - int8)))
        return metrics
    if task == "embedding":
        cos = np.concatenate([cosine_rows(_rows(reference[k]), _rows(candidate[k])) for k in reference])
        return {"cosine_mean": _round(cos.mean()), "cosine_min": _round(cos.min())}
    errors = [relative_error(reference[k], candidate[k]) for k in reference]
    return {"relative_error": _round(max(errors))}


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """‖candidate - reference‖ / ‖reference‖ (Frobenius), 0 when both are zero."""
    ref = np.asarray(reference, dtype=np.float64)
    diff = np.linalg.norm(np.asarray(candidate, dtype=np.float64) - ref)
    scale = np.linalg.norm(ref)
    return float(diff / scale) if scale > 0 else float(diff)


def misses(metrics: Mapping[str, float], limits: Mapping[str, float]) -> list[str]:
    """One short line per limit the metrics do not meet (a limit whose metric was not measured is skipped)."""
    out = []
    for key, limit in limits.items():
        metric = key.rsplit("_", 1)[0]
        if metric not in metrics:
            continue
        value = metrics[metric]
        low = key.endswith("_min")
        if (value < limit) if low else (value > limit):
            out.append(f"{metric} {value:g} {'<' if low else '>'} {limit:g}")
    return out


def score(task: str, metrics: Mapping[str, float]) -> float:
    """One number to rank tries by (higher is closer to FP32)."""
    if task == "classification":
        return metrics["top1_agreement"] - metrics.get("accuracy_drop_points", 0.0) / 100
    if task == "embedding":
        return metrics["cosine_mean"]
    return -metrics["relative_error"]


def describe(metrics: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in metrics.items())


def _rows(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return array.reshape(array.shape[0], -1)


def _round(value: Any) -> float:
    return round(float(value), 6)
