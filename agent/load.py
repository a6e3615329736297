"""How busy the device is: the host CPU, sampled in the background, for the router.

The router offloads work to a healthy cloud when the device is overloaded (``load.cpu_high_percent``
and ``load.max_queue_depth`` in the fleet file). The queue depth is read per request straight from the
edge runner; the CPU reading comes from here. Sampling ``psutil.cpu_percent`` on every request would
put a system call on the hot path and, with ``interval=None``, measure only the few microseconds since
the previous request, so a background task samples it every ``interval_s`` and smooths it (one noisy
sample, say a teammate's compile, should not move traffic on its own)::

    monitor = CpuMonitor()            # psutil by default; ``source`` injects readings (tests)
    monitor.start()                   # an asyncio task, from inside the running loop
    monitor.load                      # 0..1 (smoothed), None before the first sample
    await monitor.stop()

Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _psutil_source() -> Callable[[], float]:
    import psutil

    psutil.cpu_percent(interval=None)  # the first call only sets the baseline; it returns 0.0
    return lambda: float(psutil.cpu_percent(interval=None))


class CpuMonitor:
    """Host CPU use in 0..1, smoothed over recent samples, refreshed off the request path.

    ``source`` returns the utilisation in percent since its previous call (``psutil.cpu_percent`` with
    ``interval=None`` does exactly that). ``alpha`` weighs the newest sample in the moving average; the
    default (0.5 at 250 ms) follows a sustained change within about a second.
    """

    def __init__(self, source: Callable[[], float] | None = None, *, interval_s: float = 0.25,
                 alpha: float = 0.5) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self._source = source
        self.interval_s = interval_s
        self.alpha = alpha
        self._load: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def load(self) -> float | None:
        """The smoothed CPU use (0..1), or None before the first sample."""
        return self._load

    def sample(self) -> float:
        """Take one reading now and fold it into the average; returns the new average."""
        if self._source is None:
            self._source = _psutil_source()
        percent = min(100.0, max(0.0, float(self._source())))
        value = percent / 100.0
        self._load = value if self._load is None else self._load + self.alpha * (value - self._load)
        return self._load

    def set_source(self, source: Callable[[], float]) -> None:
        """Read from ``source`` from now on, forgetting the old average (tests inject readings so)."""
        self._source = source
        self._load = None
        self.sample()

    def start(self) -> None:
        if self._task is None:
            if self._source is None:
                self._source = _psutil_source()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cpu-monitor")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sample()
            except Exception:  # a failing reading must not take the agent down; the router goes without
                log.exception("cpu monitor: sampling failed; CPU load unknown")
                self._load = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
