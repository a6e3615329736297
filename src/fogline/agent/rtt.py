"""Round-trip time to the cloud, estimated from what the agent observes anyway.

Two kinds of samples feed one ``RttEstimator``:

- in-band: a cloud response came back; its sample is the time from sending the request to reading the
  response, minus the compute time the cloud reports (``compute_ms`` response parameter) when it
  reports one. What is left is the network plus the cloud's queueing, which is what routing cares about;
- probes: light standard calls (``ServerReady``) the cloud link sends while no request traffic goes to
  the cloud, so a device that moved everything to the edge still notices when the network recovers.

The estimator keeps two views of the samples:

- ``smoothed_ms``: an exponentially weighted moving average (like TCP's SRTT), which the router uses for
  its hysteresis and its deadline predictions;
- ``high_ms``: a high percentile (p95 by default) over a recent time window, which shows the tail a
  smoothed value hides (jitter); policies such as hedging can use it to time a second request;
- ``typical_ms(model)``: the median of one model's in-band samples sent within ``typical_window_ms``
  before the freshest sample. A delay spike stalls the link for a moment
  and the few calls caught in it come back together, all slow; the moving average and the last
  samples remember them, but they are a minority of the window, so the median ignores them and the
  router can trust the link again as soon as the spike has passed. A lasting slow-down fills the window
  within about a second (until then the calls still waiting keep the router's estimate high, see
  ``fogline.agent.router.LinkView``). Per model, and without the probes, because the network part of a round
  trip grows with the payload: under a bandwidth cap a model with large answers is slow on a link that
  suits a small one (or a probe).

Everything takes the current time as an argument (milliseconds on any monotonic clock), so tests drive
it with a fake clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


def inband_sample_ms(sent_at_ms: float, received_at_ms: float, compute_ms: float | None) -> float:
    """The network part of one request's round trip: elapsed time minus the cloud's compute time.

    ``compute_ms`` is what the cloud reported for this request (None when it reports nothing, as a stock
    Triton or KServe server does). The result never goes below zero, even when clocks or reports are off.
    """
    elapsed = received_at_ms - sent_at_ms
    if compute_ms is not None and math.isfinite(compute_ms) and compute_ms > 0:
        elapsed -= compute_ms
    return max(0.0, elapsed)


@dataclass(frozen=True)
class RttSnapshot:
    """What the estimator knows at one moment (all in milliseconds; None = no sample yet)."""

    smoothed_ms: float | None
    high_ms: float | None
    last_ms: float | None
    #: The largest of the last ``recent`` samples.
    recent_max_ms: float | None
    samples: int
    age_ms: float | None  # time since the latest sample
    #: The median of the recent samples for the model asked about (``RttEstimator.typical_ms``).
    typical_ms: float | None = None


class RttEstimator:
    """EWMA plus windowed high percentile of round-trip samples.

    ``alpha`` is the weight of a new sample in the moving average (0 < alpha <= 1; higher reacts faster).
    ``window_ms`` bounds the samples the percentile looks at, and ``max_samples`` bounds memory.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        window_ms: float = 2000.0,
        percentile: float = 95.0,
        max_samples: int = 256,
        recent: int = 3,
        typical_window_ms: float = 1000.0,
        typical_min_samples: int = 3,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if window_ms <= 0:
            raise ValueError(f"window_ms must be positive, got {window_ms}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        if typical_window_ms <= 0:
            raise ValueError(f"typical_window_ms must be positive, got {typical_window_ms}")
        if typical_min_samples < 1:
            raise ValueError(f"typical_min_samples must be at least 1, got {typical_min_samples}")
        self.typical_window_ms = typical_window_ms
        self.typical_min_samples = typical_min_samples
        #: ``(sent_at, sample, model)`` of recent samples (model None: a probe), in arrival order;
        #: ``typical_ms`` reads those sent shortly before the freshest one.
        self._typical: deque[tuple[float, float, str | None]] = deque(maxlen=max_samples)
        self.alpha = alpha
        self.window_ms = window_ms
        self.percentile = percentile
        self._window: deque[tuple[float, float]] = deque(maxlen=max_samples)
        #: ``(sent_at, sample)`` of the freshest samples, in send order (see ``observe``).
        self._recent: deque[tuple[float, float]] = deque(maxlen=max(1, recent))
        self._fresh_sent: float | None = None
        self._smoothed: float | None = None
        self._last: float | None = None
        self._last_at: float | None = None
        self._count = 0

    def observe(self, sample_ms: float, now_ms: float, sent_at_ms: float | None = None,
                model: str | None = None) -> None:
        """Add one round-trip sample taken at ``now_ms``. Negative or non-finite samples are refused.

        ``sent_at_ms`` is when the measured call left (default: ``now_ms - sample_ms``). A sample whose
        call left before the freshest one already measured is stale: it describes the network as it
        was earlier (a probe sent into a slow link coming back after the link recovered), so it feeds
        the average and the percentile window but not the recent samples that show a recovery.

        ``model``: the model of the request an in-band sample measured (None for a probe); it selects
        the samples ``typical_ms`` reads."""
        if not math.isfinite(sample_ms) or sample_ms < 0:
            raise ValueError(f"an RTT sample must be a finite, non-negative number of ms, got {sample_ms}")
        if self._smoothed is None:
            self._smoothed = sample_ms
        else:
            self._smoothed += self.alpha * (sample_ms - self._smoothed)
        self._last = sample_ms
        sent = now_ms - sample_ms if sent_at_ms is None else sent_at_ms
        if self._fresh_sent is None or sent >= self._fresh_sent:
            self._fresh_sent = sent
            self._recent.append((sent, sample_ms))
        self._last_at = now_ms
        self._count += 1
        self._window.append((now_ms, sample_ms))
        self._typical.append((sent, sample_ms, model))

    def restart(self) -> None:
        """Forget the moving average (the next sample seeds it); the percentile window stays.

        The cloud link calls this on every new connection: an average built on a connection that
        died describes a path that may no longer exist, and would delay noticing a recovered network.
        """
        self._smoothed = None
        self._recent.clear()
        self._typical.clear()
        self._fresh_sent = None

    @property
    def smoothed_ms(self) -> float | None:
        """The moving average, or None before the first sample."""
        return self._smoothed

    @property
    def fresh_sent_at(self) -> float | None:
        """When the freshest measured call left (the latest send time among samples), or None. A call
        still waiting that left before it proves nothing about the network now."""
        return self._fresh_sent

    @property
    def last_sample_at(self) -> float | None:
        """When the latest sample was taken (the clock ``observe`` was given), or None."""
        return self._last_at

    def high_ms(self, now_ms: float) -> float | None:
        """The configured percentile (nearest rank) of the samples inside the window, or None if none."""
        while self._window and now_ms - self._window[0][0] > self.window_ms:
            self._window.popleft()
        if not self._window:
            return None
        values = sorted(sample for _, sample in self._window)
        rank = max(1, math.ceil(self.percentile / 100.0 * len(values)))
        return values[rank - 1]

    def typical_ms(self, model: str | None = None) -> float | None:
        """The median of ``model``'s in-band samples (every sample, probes included, when ``model`` is
        None) sent within ``typical_window_ms`` before the freshest measured call; None while fewer than
        ``typical_min_samples`` qualify (or since ``restart``).

        The window is anchored at the freshest send, not at the clock: while the link is stalled and
        nothing comes back, the calls still waiting are the evidence (the router reads them), and the
        median keeps describing the link as it was when it last answered."""
        if self._fresh_sent is None:
            return None
        since = self._fresh_sent - self.typical_window_ms
        while self._typical and self._typical[0][0] < since:
            self._typical.popleft()  # out of the window for good: the freshest send only moves on
        values = sorted(sample for sent, sample, key in self._typical
                        if sent >= since and (model is None or key == model))
        if len(values) < self.typical_min_samples:
            return None
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2.0

    def snapshot(self, now_ms: float, model: str | None = None) -> RttSnapshot:
        """Everything the router and the metrics need, in one immutable value (``typical_ms`` for
        ``model``)."""
        return RttSnapshot(
            smoothed_ms=self._smoothed,
            high_ms=self.high_ms(now_ms),
            last_ms=self._last,
            recent_max_ms=max(sample for _, sample in self._recent) if self._recent else None,
            samples=self._count,
            age_ms=None if self._last_at is None else max(0.0, now_ms - self._last_at),
            typical_ms=self.typical_ms(model),
        )
