"""The cloud's compute pool: workers handed out first come first served, intra-op threads sized to
the calls in flight, and batchers running several batches side by side on it."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from fogline.cloud.batcher import DynamicBatcher
from fogline.cloud.compute_pool import ComputePool

pytestmark = pytest.mark.unit


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


class ThreadLog:
    """Records ``set_threads`` calls as (thread name, count)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, n: int) -> None:
        self.calls.append((threading.current_thread().name, n))


def test_workers_are_handed_out_lowest_first_and_waiters_first_come_first_served():
    async def main():
        pool = ComputePool(2)
        first, second = await pool.acquire(), await pool.acquire()
        order = []

        async def wait(tag):
            worker = await pool.acquire()
            order.append((tag, worker))
            return worker

        a = asyncio.create_task(wait("a"))
        await asyncio.sleep(0)  # `a` runs up to its wait (tasks start in the order they were made)
        b = asyncio.create_task(wait("b"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert order == []  # both wait: every worker is taken
        pool.release(second)
        await a
        pool.release(first)
        await b
        pool.release(0)
        pool.release(1)
        assert [await pool.acquire(), await pool.acquire()] == [0, 1]  # both free again, lowest first
        pool.shutdown()
        return first, second, order

    first, second, order = run(main())
    assert (first, second) == (0, 1)
    assert order == [("a", 1), ("b", 0)]


def test_a_cancelled_waiter_does_not_swallow_a_worker():
    async def main():
        pool = ComputePool(1)
        held = await pool.acquire()
        waiter = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0)  # the waiter is now queued for a worker
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        pool.release(held)
        again = await asyncio.wait_for(pool.acquire(), 1)
        pool.release(again)
        pool.shutdown()
        return again

    assert run(main()) == 0


def test_worker_zero_alone_gets_every_thread_and_other_workers_get_one(async_until):
    log = ThreadLog()
    gate = threading.Event()

    async def main():
        pool = ComputePool(2, total_threads=4, set_threads=log, name="pool")
        w0 = await pool.acquire()
        slow = pool.start(w0, gate.wait, 5)  # alone: 4 threads on worker 0
        await async_until(lambda: log.calls)  # worker 0's thread has sized itself
        w1 = await pool.acquire()
        assert pool.in_flight == 1
        await pool.run(w1, lambda: None)  # beside a running call: worker 1 always runs on one thread
        gate.set()
        await slow
        pool.release(w0)
        pool.release(w1)
        w = await pool.acquire()
        await pool.run(w, lambda: None)  # alone again, on worker 0: already 4, no new call
        pool.release(w)
        assert pool.in_flight == 0
        pool.shutdown()

    run(main())
    assert log.calls == [("pool_0_0", 4), ("pool_1_0", 1)]


class SlowDoubler:
    """``y = 2x``; records the peak number of calls at once. With ``overlap=n``, the first ``n`` calls
    wait for each other (a barrier), so they provably run side by side however slow the machine; the
    others take ``seconds``."""

    def __init__(self, seconds: float, overlap: int = 0) -> None:
        self.seconds = seconds
        self.barrier = threading.Barrier(overlap) if overlap else None
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.calls: list[int] = []

    def __call__(self, inputs):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.calls.append(len(inputs["x"]))
            first_calls = self.barrier is not None and len(self.calls) <= self.barrier.parties
        if first_calls:
            self.barrier.wait(15)  # BrokenBarrierError if the pool never ran them side by side
        else:
            threading.Event().wait(self.seconds)
        with self.lock:
            self.now -= 1
        return {"y": inputs["x"] * 2}


def test_batcher_runs_batches_side_by_side_on_a_two_worker_pool_and_answers_all():
    model = SlowDoubler(0.005, overlap=2)

    async def main():
        pool = ComputePool(2)
        batcher = DynamicBatcher("m", model, max_batch_size=4, pool=pool)
        inputs = [{"x": np.full((1, 2), i, dtype=np.float32)} for i in range(16)]
        answers = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.close()
        pool.shutdown()
        return inputs, answers

    inputs, answers = run(main())
    for x, (out, stats) in zip(inputs, answers, strict=True):
        np.testing.assert_array_equal(out["y"], x["x"] * 2)
        assert stats.batch_rows <= 4
    assert model.peak == 2  # two batches at once, never more than the workers
    assert sum(model.calls) == 16


def test_two_models_share_one_pool_without_starving_each_other():
    a, b = SlowDoubler(0.005), SlowDoubler(0.005)

    async def main():
        pool = ComputePool(1)
        ba = DynamicBatcher("a", a, max_batch_size=2, pool=pool)
        bb = DynamicBatcher("b", b, max_batch_size=2, pool=pool)
        x = {"x": np.ones((1, 2), dtype=np.float32)}
        await asyncio.gather(*(ba.submit(x) for _ in range(6)), *(bb.submit(x) for _ in range(6)))
        await asyncio.gather(ba.close(), bb.close())
        pool.shutdown()

    run(main())
    assert sum(a.calls) == 6 and sum(b.calls) == 6
    assert a.peak == 1 and b.peak == 1


def test_a_model_with_short_calls_runs_one_batch_at_a_time_on_any_free_worker():
    import time

    active = {"quick": 0, "heavy": 0}
    most = {"quick": 0, "heavy": 0}
    gate = threading.Event()

    def counted(name, seconds, wait=False):
        def model(inputs):
            active[name] += 1
            most[name] = max(most[name], active[name])
            if wait:
                gate.wait(10)
            time.sleep(seconds)
            active[name] -= 1
            return {"y": inputs["x"] * 2}

        return model

    async def main():
        pool = ComputePool(2)
        quick = DynamicBatcher("quick", counted("quick", 0.0), pool=pool)
        heavy = DynamicBatcher("heavy", counted("heavy", 0.008), pool=pool)
        quick.start()
        heavy.start()
        x = {"x": np.ones((1, 2), np.float32)}
        for _ in range(5):  # each learns how long its calls take
            await quick.submit(x)
            await heavy.submit(x)
        # Many quick calls at once: never two of its batches side by side.
        await asyncio.gather(*(quick.submit(x) for _ in range(40)))
        # A heavy batch holds a worker: quick calls still run, on the other one.
        heavy._run = counted("heavy", 0.0, wait=True)
        held = asyncio.ensure_future(heavy.submit(x))
        quick_while_held = await asyncio.wait_for(quick.submit(x), 5)
        gate.set()
        await held
        await quick.close()
        await heavy.close()
        pool.shutdown()
        return quick.parallel, heavy.parallel, most["quick"], quick_while_held[0]["y"].tolist()

    parallel_quick, parallel_heavy, most_quick, answer = run(main())
    assert (parallel_quick, parallel_heavy) == (False, True)
    assert most_quick == 1 and answer == [[2.0, 2.0]]


def test_a_waiter_cancelled_just_before_a_release_leaves_the_pool_whole():
    async def main():
        pool = ComputePool(1)
        held = await pool.acquire()
        waiting = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0)
        waiting.cancel()
        pool.release(held)  # before the cancelled task has run its clean-up
        with pytest.raises(asyncio.CancelledError):
            await waiting
        again = await asyncio.wait_for(pool.acquire(), 1)
        pool.shutdown()
        return again

    assert run(main()) == 0
