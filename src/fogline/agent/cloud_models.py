"""What the agent has learned about each model on the cloud: its compute time and whether it works.

The cloud link feeds ``CloudModels`` with every answer (and the ``compute_ms`` the cloud reported for
it) and every model-level error; the router reads two things back per model:

- ``compute_ms(model, now)``: a moving average of the reported compute time, halving every
  ``half_life_ms`` without news, so a cloud once seen slow is tried again now and then (under the
  edge's deadline protection) instead of being written off for good;
- ``benched(model, now)``: after ``failures`` errors in a row the model is benched (the router keeps
  it on the edge) for a cool-down that doubles with every further error, up to ``max_bench_ms``. An
  answer clears it. A model missing on one cloud thus never costs the others, nor the link's breaker.

Pure bookkeeping: every method takes the current time in milliseconds.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class CloudModels:
    def __init__(self, *, alpha: float = 0.3, half_life_ms: float = 5000.0, failures: int = 3,
                 bench_ms: float = 2000.0, max_bench_ms: float = 60_000.0) -> None:
        self.alpha = alpha
        self.half_life_ms = half_life_ms
        self.failures = failures
        self.bench_ms = bench_ms
        self.max_bench_ms = max_bench_ms
        self._compute: dict[str, tuple[float, float]] = {}  # model -> (estimate ms, updated at)
        self._errors: dict[str, tuple[int, float]] = {}  # model -> (errors in a row, benched until)

    def answered(self, model: str, compute_ms: float | None, now_ms: float) -> None:
        """An answer for ``model`` came back, with the compute time the cloud reported (or None)."""
        self._errors.pop(model, None)
        if compute_ms is None:
            return
        previous = self._compute.get(model)
        estimate = compute_ms if previous is None else previous[0] + self.alpha * (compute_ms - previous[0])
        self._compute[model] = (estimate, now_ms)

    def failed(self, model: str, now_ms: float) -> bool:
        """The cloud answered ``model`` with an error; returns True when that benched the model."""
        count = self._errors.get(model, (0, -1.0))[0] + 1
        until = -1.0
        if count >= self.failures:
            until = now_ms + min(self.max_bench_ms, self.bench_ms * 2 ** (count - self.failures))
        self._errors[model] = (count, until)
        return until > now_ms

    def benched(self, model: str, now_ms: float) -> bool:
        return now_ms < self._errors.get(model, (0, -1.0))[1]

    def compute_ms(self, model: str, now_ms: float) -> float:
        found = self._compute.get(model)
        if found is None:
            return 0.0
        estimate, at = found
        return estimate * 0.5 ** (max(0.0, now_ms - at) / self.half_life_ms)
