"""Per-device in-flight limit: one device flooding the cloud is refused, the others are not slowed.

``DeviceLimiter.acquire(device)`` admits a request when that device has fewer than ``limit`` requests
in flight and returns False otherwise (the caller answers RESOURCE_EXHAUSTED); ``release`` ends one.
Requests without a device (a server without tokens) are not limited here: the model queues
(``max_queue_size``) still bound the whole server. Everything runs on the event loop: no locks.
"""

from __future__ import annotations

from collections.abc import Callable

from fogline.errors import Overloaded


class DeviceLimiter:
    """Counts requests in flight per device id against one limit."""

    def __init__(self, limit: int, *, on_throttled: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.on_throttled = on_throttled
        self._inflight: dict[str, int] = {}

    def inflight(self, device: str) -> int:
        return self._inflight.get(device, 0)

    def acquire(self, device: str | None) -> None:
        """Admit one request of ``device``; ``Overloaded`` (RESOURCE_EXHAUSTED) past the limit."""
        if device is None:
            return
        count = self._inflight.get(device, 0)
        if count >= self.limit:
            if self.on_throttled is not None:
                self.on_throttled(device)
            raise Overloaded(
                f"device {device!r} has {count} requests in flight, the most this server allows "
                f"(max_inflight_per_device); wait for answers before sending more"
            )
        self._inflight[device] = count + 1

    def release(self, device: str | None) -> None:
        if device is None:
            return
        count = self._inflight.get(device, 0) - 1
        if count > 0:
            self._inflight[device] = count
        else:
            self._inflight.pop(device, None)
