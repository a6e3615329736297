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
  smoothed value hides (jitter); policies such as hedging can use it to time a second request.

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
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if window_ms <= 0:
            raise ValueError(f"window_ms must be positive, got {window_ms}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
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

    def observe(self, sample_ms: float, now_ms: float, sent_at_ms: float | None = None) -> None:
        """Add one round-trip sample taken at ``now_ms``. Negative or non-finite samples are refused.

        ``sent_at_ms`` is when the measured call left (default: ``now_ms - sample_ms``). A sample whose
        call left before the freshest one already measured is stale: it describes the network as it
        was earlier (a probe sent into a slow link coming back after the link recovered), so it feeds
        the average and the percentile window but not the recent samples that show a recovery."""
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

    def restart(self) -> None:
        """Forget the moving average (the next sample seeds it); the percentile window stays.

        The cloud link calls this on every new connection: an average built on a connection that
        died describes a path that may no longer exist, and would delay noticing a recovered network.
        """
        self._smoothed = None
        self._recent.clear()
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

    def snapshot(self, now_ms: float) -> RttSnapshot:
        """Everything the router and the metrics need, in one immutable value."""
        return RttSnapshot(
            smoothed_ms=self._smoothed,
            high_ms=self.high_ms(now_ms),
            last_ms=self._last,
            recent_max_ms=max(sample for _, sample in self._recent) if self._recent else None,
            samples=self._count,
            age_ms=None if self._last_at is None else max(0.0, now_ms - self._last_at),
        )
