"""How late the event loop runs: a measure of CPU contention as the agent itself feels it.

A timer that should fire every ``interval_ms`` fires a little late when the loop is busy or the
process waits for a CPU; ``LoopLag`` records by how much. Its high percentile is part of the edge's
backup budget (``EdgeView.scheduling_ms``): on a machine shared with other work, the last safe moment
to start the edge comes earlier, so deadlines still hold.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from fogline.agent.tasks import cancel_and_wait


class LoopLag:
    """Samples the event loop's timer lateness in the background."""

    def __init__(self, interval_ms: float = 50.0, window: int = 40, percentile: float = 90.0) -> None:
        self.interval_ms = interval_ms
        self.percentile = percentile
        self._samples: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def record(self, lateness_ms: float) -> None:
        self._samples.append(max(0.0, lateness_ms))

    def high_ms(self) -> float:
        """The configured percentile of recent lateness (0 before any sample)."""
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        return ordered[int(self.percentile / 100.0 * (len(ordered) - 1))]

    async def _run(self) -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(self.interval_ms / 1000.0)
            self.record((time.perf_counter() - began) * 1000.0 - self.interval_ms)
