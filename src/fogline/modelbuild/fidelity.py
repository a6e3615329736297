"""How closely an edge (INT8) model follows its full-precision model, and the gates it must pass.

Pure numpy. ``minilm`` is judged on the fixed sentence set in ``data/sentences.txt``: the mean cosine
similarity between INT8 and FP32 embeddings of each sentence, and nearest-neighbour agreement (for
each sentence, is its closest other sentence the same under both models?). ``digits`` is judged on
the held-out test split: INT8 accuracy may trail its FP32 ONNX by at most one point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"

#: Release gates: a build that misses one fails (unless accepted), and ``fogline models verify`` checks
#: them again. Names end in ``_min`` or ``_max`` (the direction a stricter value goes).
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


def gated_metrics(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The part of a model's recorded metrics the gates read (minilm: its ``int8`` figures)."""
    return metrics["int8"] if name == "minilm" else metrics


def gate_misses(name: str, metrics: dict[str, Any], gates: Mapping[str, float] | None = None) -> list[str]:
    """What ``metrics`` (the gated figures of model ``name``) miss of ``gates`` (default: the release
    gates ``GATES[name]``): one phrase per gate, each with the measured figure and the limit."""
    gates = GATES.get(name, {}) if gates is None else gates
    misses = []
    if "cosine_mean_min" in gates and metrics["cosine_mean"] < gates["cosine_mean_min"]:
        misses.append(f"INT8 mean cosine {metrics['cosine_mean']:.4f} is below the gate {gates['cosine_mean_min']:g}")
    if "nn_agreement_min" in gates and metrics["nn_agreement"] < gates["nn_agreement_min"]:
        misses.append(f"INT8 nearest-neighbour agreement {metrics['nn_agreement']:.3f} is below the gate "
                      f"{gates['nn_agreement_min']:g}")
    if "accuracy_drop_points_max" in gates:
        drop = 100.0 * (metrics["fp32_onnx_accuracy"] - metrics["int8_accuracy"])
        if drop > gates["accuracy_drop_points_max"]:
            misses.append(
                f"INT8 accuracy {100 * metrics['int8_accuracy']:.2f}% is {drop:.2f} points below FP32 "
                f"{100 * metrics['fp32_onnx_accuracy']:.2f}%, more than the gate allows "
                f"({gates['accuracy_drop_points_max']:g} points)"
            )
    return misses


def gate_failures(name: str, metrics: dict[str, Any], gates: Mapping[str, float] | None = None) -> list[str]:
    """One line per gate that ``metrics`` (as measured for model ``name``) does not meet."""
    return [f"{name}: {miss}" for miss in gate_misses(name, metrics, gates)]


def parse_gate(text: str) -> tuple[str, str, float]:
    """``"MODEL.GATE=VALUE"`` -> ``(model, gate, value)`` for a gate made *stricter* than its release
    value (a build may demand more, never less: keeping a model below a gate is ``--accept-fidelity``).
    Raises ``ValueError`` saying what would be valid."""
    target, sep, value_text = text.partition("=")
    model, dot, gate = target.strip().partition(".")
    if not sep or not dot:
        raise ValueError(f"expected MODEL.GATE=VALUE (e.g. digits.accuracy_drop_points_max=0.5), got {text!r}")
    if model not in GATES:
        raise ValueError(f"no gates for model {model!r}; models with gates: {', '.join(GATES)}")
    if gate not in GATES[model]:
        raise ValueError(f"{model} has no gate {gate!r}; its gates: {', '.join(GATES[model])}")
    try:
        value = float(value_text)
    except ValueError:
        raise ValueError(f"{model}.{gate}: expected a number, got {value_text.strip()!r}") from None
    release = GATES[model][gate]
    looser = value < release if gate.endswith("_min") else value > release
    if looser or value != value:  # NaN compares false both ways
        raise ValueError(
            f"{model}.{gate}={value_text.strip()} is looser than the release gate {release:g}; a gate may only "
            "be made stricter (keep a model below its gate with --accept-fidelity)"
        )
    return model, gate, value


def effective_gates(overrides: Sequence[tuple[str, str, float]] = ()) -> dict[str, dict[str, float]]:
    """The release gates with the ``parse_gate`` results in ``overrides`` applied."""
    gates = {name: dict(limits) for name, limits in GATES.items()}
    for model, gate, value in overrides:
        gates[model][gate] = value
    return gates
