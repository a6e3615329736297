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
    monitor.available                 # False once the signal is switched off (see below)
    await monitor.stop()

A device may not let the agent read its CPU use at all: systemd's ``ProcSubset=pid`` hides
``/proc/stat``, a container may mount a reduced ``/proc``. The agent then serves without the signal
rather than not at all: the first failure (opening the source, or any later reading) switches the
signal off for the life of the process, logs one warning, and ``load`` stays None, which the router
reads as "CPU load unknown": ``load.cpu_high_percent`` never offloads (``cpu_high``), while the queue
limit (``load.max_queue_depth``) and every other rule work as before. ``available`` goes False and the
agent's ``fogline_agent_load_signal_available{signal="cpu"}`` gauge reads 0. A restart tries again.

Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fogline.agent.tasks import cancel_and_wait

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
        self._available = True

    @property
    def load(self) -> float | None:
        """The smoothed CPU use (0..1), or None before the first sample."""
        return self._load

    @property
    def available(self) -> bool:
        """False once a failed reading switched the signal off (``load`` is then None for good)."""
        return self._available

    def _switch_off(self, exc: BaseException) -> None:
        self._available = False
        self._load = None
        log.warning("cpu load signal unavailable (%s: %s); serving without it: load.cpu_high_percent "
                    "is not applied until the agent restarts", type(exc).__name__, exc)

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
        self._available = True
        self._load = None
        self.sample()

    def start(self) -> None:
        """Sample in the background from now on; a source that cannot be opened switches the signal
        off (one warning) instead of raising, so the agent starts without it."""
        if self._task is not None or not self._available:
            return
        if self._source is None:
            try:
                self._source = _psutil_source()
            except Exception as exc:  # e.g. FileNotFoundError: /proc/stat under ProcSubset=pid
                self._switch_off(exc)
                return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cpu-monitor")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sample()
            except Exception as exc:  # a failing reading must not take the agent down; the router goes without
                self._switch_off(exc)
                return

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
