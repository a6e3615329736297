"""Per-device in-flight limit: one device flooding the cloud is refused, the others are not slowed.

``DeviceLimiter.acquire(device)`` admits a request when that device has fewer than ``limit`` requests
in flight and raises ``Overloaded`` otherwise (the caller answers RESOURCE_EXHAUSTED); ``release`` ends
one. Requests without a device (a server without tokens) are not limited here: the model queues
(``max_queue_size``) still bound the whole server. Everything runs on the event loop: no locks.

Refusing is not free: every request read costs the event loop its decoding and its answer, and a
client that replaces each refused request at once (a flood) keeps the loop busy with refusals that
the other devices then wait behind. So a stream that was refused is *paced* (``StreamPace``): it is
read again only once its device has a free slot (``wait_for_slot``). The requests it sends meanwhile
wait in the transport (HTTP/2 flow control), at no cost to the server; nothing is dropped, and every
request that is read still either runs or gets RESOURCE_EXHAUSTED. Unary calls are refused as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fogline.errors import Overloaded


class DeviceLimiter:
    """Counts requests in flight per device id against one limit."""

    def __init__(self, limit: int, *, on_throttled: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.on_throttled = on_throttled
        self._inflight: dict[str, int] = {}
        #: Streams waiting for a free slot of a device (``wait_for_slot``).
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

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
        # Every waiter looks again (streams of one device share its slots; the first to be read wins).
        for waiter in self._waiters.pop(device, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def released(self, device: str) -> None:
        """Return at the next ``release`` of one of ``device``'s requests."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(device, []).append(waiter)
        try:
            await waiter
        finally:
            waiting = self._waiters.get(device)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiters[device]


class StreamPace:
    """One stream's pacing (see the module docstring): after a refusal, read only when a slot is free.

    A request read is admitted (``acquire``) by its own task a moment later, so the stream also counts
    the requests it has read and not yet had admitted (``reading``): without them the reader would see
    a free slot several times over and read more than fits."""

    def __init__(self, limiter: DeviceLimiter, device: str) -> None:
        self.limiter = limiter
        self.device = device
        #: Set by the first refusal; from then on the stream waits for a slot before each read.
        self.refused = False
        #: Requests read whose admission has not run yet.
        self.reading = 0
        #: Reads that waited for a slot (for tests and curiosity).
        self.waits = 0

    async def before_read(self) -> None:
        """Awaited before each read of the stream (``InferenceCalls.stream``'s ``before_read``)."""
        if self.refused:
            while self.limiter.inflight(self.device) + self.reading >= self.limiter.limit:
                self.waits += 1
                await self.limiter.released(self.device)
        self.reading += 1

    def admit(self) -> None:
        """Admit a request this stream read (``DeviceLimiter.acquire``); a refusal paces the stream."""
        self.reading = max(0, self.reading - 1)
        try:
            self.limiter.acquire(self.device)
        except Overloaded:
            self.refused = True
            raise
