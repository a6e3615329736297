"""A circuit breaker over the cloud link's health.

The breaker turns a stream of successes and failures (a cloud answer, a probe that came back, a broken
stream, a probe that timed out) into one of three states the router reads:

- ``closed``: the link works; the cloud may get traffic;
- ``open``: too many failures in a row; no traffic goes to the cloud until ``open_ms`` has passed;
- ``half_open``: the wait is over; the next probe (or one trial) decides. A success closes the breaker,
  a failure opens it again, each time for longer (doubling, capped at ``max_open_ms``).

It is pure bookkeeping: no timers, no I/O. Every method takes the current time in milliseconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSnapshot:
    state: BreakerState
    consecutive_failures: int
    opened_count: int  # how many times the breaker has opened since it was created
    retry_in_ms: float  # time left before an open breaker turns half-open (0 otherwise)


class CircuitBreaker:
    """Consecutive-failure breaker with a growing open period."""

    def __init__(self, *, failure_threshold: int = 3, open_ms: float = 500.0, max_open_ms: float = 5000.0):
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if open_ms <= 0 or max_open_ms < open_ms:
            raise ValueError(f"need 0 < open_ms <= max_open_ms, got {open_ms} and {max_open_ms}")
        self.failure_threshold = failure_threshold
        self.base_open_ms = open_ms
        self.max_open_ms = max_open_ms
        self._failures = 0
        self._opened_at: float | None = None
        self._open_for = open_ms
        self._opened_count = 0

    def state(self, now_ms: float) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now_ms - self._opened_at >= self._open_for:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allows_traffic(self, now_ms: float) -> bool:
        """True only when closed: requests are not used as trials, probes are."""
        return self.state(now_ms) is BreakerState.CLOSED

    def record_success(self, now_ms: float) -> None:
        """A cloud answer or a probe came back: close the breaker, forget past failures."""
        del now_ms  # kept in the signature so every event carries its time
        self._failures = 0
        self._opened_at = None
        self._open_for = self.base_open_ms

    def record_failure(self, now_ms: float) -> None:
        """A stream broke, a call failed or a probe timed out."""
        state = self.state(now_ms)
        self._failures += 1
        if state is BreakerState.HALF_OPEN:
            # The trial failed: open again, for longer.
            self._open_for = min(self.max_open_ms, self._open_for * 2)
            self._open(now_ms)
        elif state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open(now_ms)
        # Already open: nothing changes; the open period runs from the first trip.

    def trip(self, now_ms: float) -> None:
        """Open at once (the stream itself is gone; no need to count to the threshold)."""
        if self.state(now_ms) is not BreakerState.OPEN:
            self._failures = max(self._failures, self.failure_threshold)
            self._open(now_ms)

    def _open(self, now_ms: float) -> None:
        self._opened_at = now_ms
        self._opened_count += 1

    def snapshot(self, now_ms: float) -> BreakerSnapshot:
        state = self.state(now_ms)
        retry = 0.0
        if state is BreakerState.OPEN and self._opened_at is not None:
            retry = self._open_for - (now_ms - self._opened_at)
        return BreakerSnapshot(state, self._failures, self._opened_count, retry)
