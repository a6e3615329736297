"""The per-device in-flight limit and the pacing of a stream that went past it (no server, no sleeps)."""

from __future__ import annotations

import asyncio

import pytest

from fogline.cloud.device_limits import DeviceLimiter, StreamPace
from fogline.errors import Overloaded

pytestmark = pytest.mark.unit


def test_a_device_past_its_limit_is_refused_and_others_are_not():
    throttled = []
    limiter = DeviceLimiter(2, on_throttled=throttled.append)
    limiter.acquire("cam-1")
    limiter.acquire("cam-1")
    with pytest.raises(Overloaded, match="max_inflight_per_device"):
        limiter.acquire("cam-1")
    limiter.acquire("cam-2")
    limiter.acquire(None)  # no device (no tokens): not limited here
    assert throttled == ["cam-1"] and limiter.inflight("cam-1") == 2 and limiter.inflight("cam-2") == 1
    limiter.release("cam-1")
    limiter.acquire("cam-1")


def test_a_stream_reads_freely_until_refused_then_only_when_a_slot_is_free():
    async def scenario():
        limiter = DeviceLimiter(2)
        pace = StreamPace(limiter, "cam-1")
        # Not refused yet: reads never wait, even at the limit.
        limiter.acquire("cam-1")
        limiter.acquire("cam-1")
        await asyncio.wait_for(pace.before_read(), 1)
        with pytest.raises(Overloaded):
            pace.admit()  # refused: from now on the stream is paced
        assert pace.refused
        waiting = asyncio.ensure_future(pace.before_read())
        await asyncio.sleep(0)
        held_at_limit = not waiting.done()
        limiter.release("cam-1")  # one slot free: the stream may read one request
        await asyncio.wait_for(waiting, 1)
        # That request is read but not admitted yet: it holds the free slot, so the next read waits.
        second = asyncio.ensure_future(pace.before_read())
        await asyncio.sleep(0)
        held_for_the_unadmitted = not second.done()
        pace.admit()  # its admission takes the slot: still at the limit
        await asyncio.sleep(0)
        still_held = not second.done()
        limiter.release("cam-1")
        await asyncio.wait_for(second, 1)
        return held_at_limit, held_for_the_unadmitted, still_held, pace.waits

    held_at_limit, held_for_the_unadmitted, still_held, waits = asyncio.run(scenario())
    assert held_at_limit and held_for_the_unadmitted and still_held
    assert waits == 2


def test_a_release_of_another_device_does_not_wake_a_paced_stream():
    async def scenario():
        limiter = DeviceLimiter(1)
        pace = StreamPace(limiter, "cam-1")
        limiter.acquire("cam-1")
        await pace.before_read()
        with pytest.raises(Overloaded):
            pace.admit()
        limiter.acquire("cam-2")
        waiting = asyncio.ensure_future(pace.before_read())
        await asyncio.sleep(0)
        limiter.release("cam-2")
        await asyncio.sleep(0)
        woke_for_other = waiting.done()
        limiter.release("cam-1")
        await asyncio.wait_for(waiting, 1)
        return woke_for_other

    assert asyncio.run(scenario()) is False
