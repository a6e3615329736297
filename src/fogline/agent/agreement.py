"""How well the edge's INT8 answers match the cloud's full model on live traffic. Pure: numpy only.

The model build measured the INT8 model against the full one offline, on its evaluation rows, with
the task's fidelity metric, and wrote the figure and the gate it had to meet into the manifest.
Live agreement measures the same metric on the requests the device really gets (the shadowed ones,
``fogline.agent.shadow``), so the two figures can be read side by side:

| task | metric | per row | gate key in the manifest |
| --- | --- | --- | --- |
| ``classification`` | ``top1_agreement`` | 1 when the arg-max of the scores output is the same, else 0 | ``top1_agreement_min`` |
| ``embedding`` | ``cosine_mean`` | cosine of the two rows (mean over the outputs) | ``cosine_mean_min`` |
| ``generic`` (any other task) | ``relative_error`` | ‖edge - cloud‖ / ‖cloud‖ of the row (largest over the outputs) | ``relative_error_max`` |

The gate is read from the manifest's ``gate.limits`` (what the build checked), else from
``import.gate.limits`` (what ``fogline models import`` checked): ``digits`` keeps its top-1 limit in the
latter, ``minilm`` its cosine limit in the former. The offline figure is ``metrics.int8.<metric>``. A
model whose manifest names no gate for its metric is still measured, never judged.

``AgreementTracker`` keeps the last ``window`` rows' values (the running figure, the one judged) and
totals since start, and reports the moment the running figure crosses the gate, either way, once
at least ``min_rows`` rows are in the window: a single unlucky row must not raise an alarm.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: task -> (metric, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "classification": ("top1_agreement", True),
    "embedding": ("cosine_mean", True),
    "generic": ("relative_error", False),
}


class Crossing(str, enum.Enum):
    """The running figure just crossed the gate: it fails it now (``BELOW``) or passes again."""

    BELOW = "below"
    RECOVERED = "recovered"


@dataclass(frozen=True)
class Fidelity:
    """What to compare for one model version, and what the build promised."""

    task: str
    #: ``top1_agreement`` | ``cosine_mean`` | ``relative_error``
    metric: str
    #: The outputs compared (a classifier's scores output; every output otherwise).
    outputs: tuple[str, ...]
    higher_is_better: bool
    #: The manifest's limit for ``metric`` (None: not judged).
    gate: float | None = None
    #: The manifest's offline figure for ``metric`` (None: not recorded).
    offline: float | None = None

    def passes(self, value: float) -> bool:
        if self.gate is None:
            return True
        return value >= self.gate if self.higher_is_better else value <= self.gate

    @property
    def relation(self) -> str:
        """How a passing figure relates to the gate, for log lines: ``>=`` or ``<=``."""
        return ">=" if self.higher_is_better else "<="


def fidelity_of(task: str, outputs: Sequence[str], manifest: Mapping[str, Any],
                scores_output: str | None = None) -> Fidelity:
    """The fidelity check of a model from its manifest (``task``, output names and the classifier's
    scores output as ``fogline.models.repository.LoadedModel`` reads them)."""
    kind = task if task in METRICS else "generic"
    metric, higher = METRICS[kind]
    compared = (scores_output or outputs[0],) if kind == "classification" else tuple(outputs)
    limit_key = f"{metric}_{'min' if higher else 'max'}"
    gate = None
    for limits in (_dig(manifest, "gate", "limits"), _dig(manifest, "import", "gate", "limits")):
        if isinstance(limits, Mapping) and _number(limits.get(limit_key)) is not None:
            gate = _number(limits[limit_key])
            break
    offline = _number(_dig(manifest, "metrics", "int8", metric))
    return Fidelity(kind, metric, compared, higher, gate, offline)


def row_scores(fidelity: Fidelity, edge: Mapping[str, np.ndarray], cloud: Mapping[str, np.ndarray]) -> np.ndarray:
    """One value per row of the batch: the metric of the edge's row against the cloud's (float64).

    ``ValueError`` when an output is missing on either side or the two disagree in shape: such
    answers cannot be compared (and say more about the link than about the model)."""
    per_output = []
    for name in fidelity.outputs:
        if name not in edge or name not in cloud:
            raise ValueError(f"output {name!r} is missing from the {'edge' if name not in edge else 'cloud'} answer")
        a, b = _rows(edge[name]), _rows(cloud[name])
        if a.shape != b.shape:
            raise ValueError(f"output {name!r}: edge shape {list(a.shape)} vs cloud {list(b.shape)}")
        if fidelity.task == "classification":
            per_output.append((a.argmax(axis=1) == b.argmax(axis=1)).astype(np.float64))
        elif fidelity.task == "embedding":
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            per_output.append((a * b).sum(axis=1) / np.maximum(norms, 1e-12))
        else:
            per_output.append(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12))
    # Several outputs: a row agrees as well as its outputs do on average (embedding), or as badly as
    # its worst output (generic, like the offline figure's largest error).
    combine = np.mean if fidelity.task == "embedding" else np.max
    return combine(np.stack(per_output), axis=0)


@dataclass(frozen=True)
class AgreementReport:
    """A tracker's figures, for the status call and the metrics."""

    metric: str
    #: Mean over the last ``window`` rows (None before the first).
    value: float | None
    #: Mean over every row compared since start.
    total: float | None
    rows: int
    gate: float | None
    offline: float | None
    #: The running figure fails the gate (judged once ``min_rows`` rows are in the window).
    below_gate: bool

    def to_dict(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 6)

        return {"metric": self.metric, "value": rounded(self.value), "total": rounded(self.total),
                "rows": self.rows, "gate": self.gate, "offline": self.offline, "below_gate": self.below_gate}


class AgreementTracker:
    """The running (last ``window`` rows) and total agreement of one model version, and its gate state."""

    def __init__(self, fidelity: Fidelity, *, window: int, min_rows: int) -> None:
        if window < 1 or not 1 <= min_rows <= window:
            raise ValueError(f"window must be at least 1 and min_rows within 1..window, got {window}, {min_rows}")
        self.fidelity = fidelity
        self.min_rows = min_rows
        self._recent: deque[float] = deque(maxlen=window)
        self.rows = 0
        self._sum = 0.0
        self.below = False

    def resize(self, window: int, min_rows: int) -> None:
        """Take a reloaded ``window`` / ``min_rows``, keeping the newest rows that still fit."""
        if window < 1 or not 1 <= min_rows <= window:
            raise ValueError(f"window must be at least 1 and min_rows within 1..window, got {window}, {min_rows}")
        if window != self._recent.maxlen:
            self._recent = deque(self._recent, maxlen=window)
        self.min_rows = min_rows

    def add(self, scores: np.ndarray) -> Crossing | None:
        """Take the rows of one compared answer; returns the crossing it caused, if any."""
        values = [float(v) for v in np.asarray(scores, dtype=np.float64).reshape(-1) if math.isfinite(v)]
        self._recent.extend(values)
        self.rows += len(values)
        self._sum += math.fsum(values)
        value = self.value
        if value is None or len(self._recent) < self.min_rows:
            return None
        failing = not self.fidelity.passes(value)
        if failing == self.below:
            return None
        self.below = failing
        return Crossing.BELOW if failing else Crossing.RECOVERED

    @property
    def value(self) -> float | None:
        return math.fsum(self._recent) / len(self._recent) if self._recent else None

    @property
    def window_rows(self) -> int:
        return len(self._recent)

    def report(self) -> AgreementReport:
        total = self._sum / self.rows if self.rows else None
        return AgreementReport(self.fidelity.metric, self.value, total, self.rows, self.fidelity.gate,
                               self.fidelity.offline, self.below)


def _rows(array: Any) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    return array.reshape(array.shape[0] if array.ndim else 1, -1)


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
