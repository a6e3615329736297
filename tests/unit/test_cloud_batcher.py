"""The dynamic batcher on its own: a small numpy function stands in for the model.

The function records the batch sizes it was called with and can be slowed down, so the tests can
see exactly when requests were gathered, dispatched, dropped or refused.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from fogline.errors import DeadlineExceeded, InvalidInput, Overloaded, Unavailable

from cloud.batcher import DynamicBatcher, concat_inputs, split_outputs

pytestmark = pytest.mark.unit


class Doubler:
    """``y = 2x`` over a batch; remembers each call's row count; can block until released."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.started.set()
        self.gate.wait(5)
        if self.delay_s:
            time.sleep(self.delay_s)
        if np.any(x < 0):
            raise InvalidInput("negative values are not allowed")
        self.calls.append(len(x))
        return {"y": x * 2, "rowsum": x.sum(axis=1)}


def rows(n: int, start: float = 0.0) -> dict[str, np.ndarray]:
    return {"x": (np.arange(n * 3, dtype=np.float32).reshape(n, 3) + start)}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_concat_and_split_round_trip():
    parts = [rows(1), rows(3, 10), rows(2, 100)]
    merged = concat_inputs(parts)
    assert merged["x"].shape == (6, 3)
    back = split_outputs({"y": merged["x"] * 2}, [1, 3, 2])
    for part, out in zip(parts, back, strict=True):
        np.testing.assert_array_equal(out["y"], part["x"] * 2)


def test_split_refuses_a_model_that_lost_rows():
    with pytest.raises(RuntimeError, match="expected 4 rows"):
        split_outputs({"y": np.zeros((3, 2))}, [2, 2])


def test_idle_model_dispatches_at_once_even_with_a_queue_delay():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8, max_queue_delay_us=500_000)
        t0 = time.perf_counter()
        out, stats = await batcher.submit(rows(2))
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return out, stats, elapsed

    out, stats, elapsed = run(main())
    np.testing.assert_array_equal(out["y"], rows(2)["x"] * 2)
    assert elapsed < 0.25, "a request that finds the model idle must not wait for the queue delay"
    assert stats.batch_rows == 2 and stats.batch_requests == 1


def test_requests_arriving_while_busy_run_as_one_batch_and_split_back():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=16)
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(rows(1, 1000)))
        await asyncio.to_thread(model.started.wait, 5)  # the model is now busy with `first`
        others = [asyncio.create_task(batcher.submit(rows(n, 10 * n))) for n in (1, 3, 2)]
        await asyncio.sleep(0.05)
        assert batcher.queued == 3
        model.gate.set()
        results = await asyncio.gather(first, *others)
        await batcher.close()
        return results

    results = run(main())
    assert model.calls == [1, 6]
    for (out, stats), n in zip(results[1:], (1, 3, 2), strict=True):
        np.testing.assert_array_equal(out["y"], rows(n, 10 * n)["x"] * 2)
        np.testing.assert_array_equal(out["rowsum"], rows(n, 10 * n)["x"].sum(axis=1))
        assert stats.batch_rows == 6 and stats.batch_requests == 3
        assert stats.queue_s > 0.04


def test_batches_never_exceed_max_batch_size_rows():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=4)
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        others = [asyncio.create_task(batcher.submit(rows(n))) for n in (3, 2, 2, 1, 6)]
        await asyncio.sleep(0.02)
        model.gate.set()
        await asyncio.gather(first, *others)
        await batcher.close()

    run(main())
    # 3 | 2+2 | 1 ; a single request larger than the limit runs alone (6).
    assert model.calls == [1, 3, 4, 1, 6]


def test_max_batch_size_one_turns_batching_off():
    model = Doubler(delay_s=0.01)

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=1)
        await asyncio.gather(*(batcher.submit(rows(1)) for _ in range(6)))
        await batcher.close()

    run(main())
    assert model.calls == [1] * 6


def test_queue_delay_holds_a_follow_up_batch_for_company():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8, max_queue_delay_us=200_000)
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        second = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.sleep(0.01)
        model.gate.set()  # the model is free again with one request queued: held for company
        await asyncio.sleep(0.05)
        third = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.gather(first, second, third)
        await batcher.close()

    run(main())
    assert model.calls == [1, 2]


def test_lone_caller_never_waits_for_the_queue_delay():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8, max_queue_delay_us=300_000)
        t0 = time.perf_counter()
        for i in range(5):  # c=1: each request after the previous answer
            await batcher.submit(rows(1, i))
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed

    assert run(main()) < 0.3
    assert model.calls == [1] * 5


def test_callers_of_the_last_batch_are_awaited_for_one_full_batch():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8, max_queue_delay_us=300_000)
        model.gate.clear()
        first = [asyncio.create_task(batcher.submit(rows(1)))]
        await asyncio.to_thread(model.started.wait, 5)  # batch [1] runs, 3 queue behind it
        first += [asyncio.create_task(batcher.submit(rows(1))) for _ in range(3)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(*first)  # then [3]; now 3 rows are expected back
        t0 = time.perf_counter()
        back = []
        for _ in range(3):  # the callers come back one by one, 20 ms apart
            back.append(asyncio.create_task(batcher.submit(rows(1))))
            await asyncio.sleep(0.02)
        await asyncio.gather(*back)
        waited = time.perf_counter() - t0
        late = [asyncio.create_task(batcher.submit(rows(1)))]  # only 1 of 3 expected comes back
        await asyncio.gather(*late)
        await batcher.close()
        return waited

    waited = run(main())
    assert model.calls == [1, 3, 3, 1]
    assert waited < 0.25  # held only until the 3 were there, not for the whole delay


def test_full_queue_is_refused_with_overloaded():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=1, max_queue_size=2)
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        queued = [asyncio.create_task(batcher.submit(rows(1))) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="max_queue_size 2"):
            await batcher.submit(rows(1))
        model.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close()

    run(main())
    assert model.calls == [1, 1, 1]


def test_expired_deadline_is_dropped_before_compute():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8)
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        doomed = asyncio.create_task(batcher.submit(rows(2), deadline=time.monotonic() + 0.02))
        fine = asyncio.create_task(batcher.submit(rows(3), deadline=time.monotonic() + 30))
        await asyncio.sleep(0.1)
        model.gate.set()
        await running
        with pytest.raises(DeadlineExceeded, match="dropped before compute"):
            await doomed
        await fine
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(1), deadline=time.monotonic() - 1)
        await batcher.close()

    run(main())
    assert model.calls == [1, 3]


def test_cancelled_caller_is_not_computed():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8)
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        gone = asyncio.create_task(batcher.submit(rows(5)))
        await asyncio.sleep(0.01)
        gone.cancel()
        kept = asyncio.create_task(batcher.submit(rows(2)))
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(running, kept)
        await batcher.close()

    run(main())
    assert model.calls == [1, 2]


def test_one_bad_request_fails_alone_not_its_batch():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=16)
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        good1 = asyncio.create_task(batcher.submit(rows(2)))
        bad = asyncio.create_task(batcher.submit({"x": -np.ones((1, 3), dtype=np.float32)}))
        good2 = asyncio.create_task(batcher.submit(rows(3, 7)))
        await asyncio.sleep(0.01)
        model.gate.set()
        await running
        out1, _ = await good1
        out2, _ = await good2
        with pytest.raises(InvalidInput, match="negative"):
            await bad
        await batcher.close()
        return out1, out2

    out1, out2 = run(main())
    np.testing.assert_array_equal(out1["y"], rows(2)["x"] * 2)
    np.testing.assert_array_equal(out2["y"], rows(3, 7)["x"] * 2)


def test_close_answers_queued_requests_and_refuses_new_ones():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=1)
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        queued = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.01)
        model.gate.set()
        await closing
        with pytest.raises(Unavailable):
            await queued
        with pytest.raises(Unavailable):
            await batcher.submit(rows(1))
        return await running

    out, _ = run(main())
    np.testing.assert_array_equal(out["y"], rows(1)["x"] * 2)
