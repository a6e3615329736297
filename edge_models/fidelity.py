"""How closely an edge (INT8) model follows its full-precision model, and the gates it must pass.

Pure numpy. ``minilm`` is judged on the fixed sentence set in ``data/sentences.txt``: the mean cosine
similarity between INT8 and FP32 embeddings of each sentence, and nearest-neighbour agreement (for
each sentence, is its closest other sentence the same under both models?). ``digits`` is judged on
the held-out test split: INT8 accuracy may trail its FP32 ONNX by at most one point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"

#: Release gates, checked by the build (recorded) and by ``fogline models verify`` (enforced).
GATES: dict[str, dict[str, float]] = {
    "minilm": {"cosine_mean_min": 0.995, "nn_agreement_min": 0.93},
    "digits": {"accuracy_drop_points_max": 1.0},
}


def load_sentences(name: str = "sentences.txt") -> list[str]:
    """Non-empty, non-comment lines of a file in ``edge_models/data``."""
    lines = (DATA_DIR / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    """Index of each row's most similar other row (cosine), ties to the lower index."""
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    return sims.argmax(axis=1)


def embedding_fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Cosine (mean, min) and nearest-neighbour agreement of ``candidate`` against ``reference``."""
    cos = cosine_rows(reference, candidate)
    agree = nearest_neighbours(reference) == nearest_neighbours(candidate)
    return {
        "cosine_mean": round(float(cos.mean()), 6),
        "cosine_min": round(float(cos.min()), 6),
        "nn_agreement": round(float(agree.mean()), 6),
        "sentences": len(cos),
    }


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return float((np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)).mean())


def gate_failures(name: str, metrics: dict[str, Any]) -> list[str]:
    """One line per gate that ``metrics`` (as measured for model ``name``) does not meet."""
    gates = GATES.get(name, {})
    failures = []
    if "cosine_mean_min" in gates and metrics["cosine_mean"] < gates["cosine_mean_min"]:
        failures.append(f"{name}: mean cosine {metrics['cosine_mean']:.4f} < gate {gates['cosine_mean_min']}")
    if "nn_agreement_min" in gates and metrics["nn_agreement"] < gates["nn_agreement_min"]:
        failures.append(
            f"{name}: nearest-neighbour agreement {metrics['nn_agreement']:.3f} < gate {gates['nn_agreement_min']}"
        )
    if "accuracy_drop_points_max" in gates:
        drop = 100.0 * (metrics["fp32_onnx_accuracy"] - metrics["int8_accuracy"])
        if drop > gates["accuracy_drop_points_max"]:
            failures.append(
                f"{name}: INT8 accuracy {100 * metrics['int8_accuracy']:.2f}% is {drop:.2f} points below "
                f"FP32 {100 * metrics['fp32_onnx_accuracy']:.2f}% (gate {gates['accuracy_drop_points_max']})"
            )
    return failures
