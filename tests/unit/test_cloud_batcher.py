"""The dynamic batcher on its own: a small numpy function stands in for the model.

The function records the batch sizes it was called with and blocks until the test opens its gate,
so the tests can see exactly when requests were gathered, dispatched, dropped or refused. Nothing
here orders work by sleeping: a test waits until the requests it needs are queued (``async_until``),
queue times and deadlines run on a fake clock, and a queue delay a test must not wait for is a minute
long (waiting for it would trip the 20 s timeout instead of passing slowly).
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from fogline.cloud.batcher import DynamicBatcher, concat_inputs, split_outputs
from fogline.errors import DeadlineExceeded, InvalidInput, Overloaded, Unavailable

pytestmark = pytest.mark.unit


class Doubler:
    """``y = 2x`` over a batch; remembers each call's row count; blocks until its gate is open."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.started.set()
        assert self.gate.wait(15), "the test never opened the model's gate"
        if np.any(x < 0):
            raise InvalidInput("negative values are not allowed")
        self.calls.append(len(x))
        return {"y": x * 2, "rowsum": x.sum(axis=1)}


def rows(n: int, start: float = 0.0) -> dict[str, np.ndarray]:
    return {"x": (np.arange(n * 3, dtype=np.float32).reshape(n, 3) + start)}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


#: A queue delay no test may sit out: 60 s, three times the test's whole time limit.
MINUTE_US = 60_000_000


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
        batcher = DynamicBatcher("m", model, max_batch_size=8, max_queue_delay_us=MINUTE_US)
        out, stats = await batcher.submit(rows(2))  # held for the delay, it would time out
        await batcher.close()
        return out, stats

    out, stats = run(main())
    np.testing.assert_array_equal(out["y"], rows(2)["x"] * 2)
    assert stats.batch_rows == 2 and stats.batch_requests == 1


def test_requests_arriving_while_busy_run_as_one_batch_and_split_back(fake_clock, async_until):
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=16, clock=fake_clock)
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(rows(1, 1000)))
        await asyncio.to_thread(model.started.wait, 5)  # the model is now busy with `first`
        others = [asyncio.create_task(batcher.submit(rows(n, 10 * n))) for n in (1, 3, 2)]
        await async_until(lambda: batcher.queued == 3)
        fake_clock.advance(0.05)  # they wait 50 ms for the model
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
        assert stats.queue_s == pytest.approx(0.05)


def test_batches_never_exceed_max_batch_size_rows(async_until):
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=4)
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        others = [asyncio.create_task(batcher.submit(rows(n))) for n in (3, 2, 2, 1, 6)]
        await async_until(lambda: batcher.queued == 5)
        model.gate.set()
        await asyncio.gather(first, *others)
        await batcher.close()

    run(main())
    # 3 | 2+2 | 1 ; a single request larger than the limit runs alone (6).
    assert model.calls == [1, 3, 4, 1, 6]


def test_max_batch_size_one_turns_batching_off():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=1)
        model.gate.clear()  # all six are queued before the first call can finish
        tasks = [asyncio.create_task(batcher.submit(rows(1))) for _ in range(6)]
        await asyncio.sleep(0)
        model.gate.set()
        await asyncio.gather(*tasks)
        await batcher.close()

    run(main())
    assert model.calls == [1] * 6


def test_queue_delay_holds_a_follow_up_batch_for_company(async_until):
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8, max_queue_delay_us=MINUTE_US)
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        second = asyncio.create_task(batcher.submit(rows(1)))
        await async_until(lambda: batcher.queued == 1)
        model.gate.set()  # the model is free again with one request queued: held for company
        await first
        assert batcher.queued == 1 and model.calls == [1]
        third = asyncio.create_task(batcher.submit(rows(1)))  # the company: the hold ends at once
        await asyncio.gather(second, third)
        await batcher.close()

    run(main())
    assert model.calls == [1, 2]


async def _one_then_four_pairs(batcher, model, async_until):
    """[1] runs while four 2-row requests queue, then those run as one full batch [8]."""
    model.gate.clear()
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.to_thread(model.started.wait, 5)
    pairs = [asyncio.create_task(batcher.submit(rows(2))) for _ in range(4)]
    await async_until(lambda: batcher.queued == 4)
    model.gate.set()  # 8 rows queued, 8 expected (1 + 8, capped): no hold
    await asyncio.gather(first, *pairs)


def test_lone_caller_never_waits_for_the_queue_delay():
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8, max_queue_delay_us=MINUTE_US)
        for i in range(5):  # c=1: each request after the previous answer; a hold would time out
            await batcher.submit(rows(1, i))
        await batcher.close()

    run(main())
    assert model.calls == [1] * 5


def test_callers_of_the_last_batch_are_awaited_for_one_full_batch(async_until):
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8, max_queue_delay_us=MINUTE_US)
        await _one_then_four_pairs(batcher, model, async_until)  # now 8 rows are expected back
        back = []
        for n in (1, 2, 3):  # the callers come back one by one: held until all four are there
            back.append(asyncio.create_task(batcher.submit(rows(2))))
            await async_until(lambda n=n: batcher.queued == n)
        assert model.calls == [1, 8]
        back.append(asyncio.create_task(batcher.submit(rows(2))))
        await asyncio.gather(*back)  # released by the fourth, not by the minute-long delay
        await batcher.close()

    run(main())
    assert model.calls == [1, 8, 8]


def test_a_hold_for_callers_that_do_not_come_back_ends_after_the_queue_delay(async_until):
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8, max_queue_delay_us=50_000)
        await _one_then_four_pairs(batcher, model, async_until)  # 8 rows expected back
        await batcher.submit(rows(2))  # only one caller comes back: it runs after 50 ms, alone
        await batcher.close()

    run(main())
    assert model.calls == [1, 8, 2]


def test_full_queue_is_refused_with_overloaded(async_until):
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=1, max_queue_size=2)
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        queued = [asyncio.create_task(batcher.submit(rows(1))) for _ in range(2)]
        await async_until(lambda: batcher.queued == 2)
        with pytest.raises(Overloaded, match="max_queue_size 2"):
            await batcher.submit(rows(1))
        model.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close()

    run(main())
    assert model.calls == [1, 1, 1]


def test_expired_deadline_is_dropped_before_compute(fake_clock, async_until):
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8, clock=fake_clock)
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        doomed = asyncio.create_task(batcher.submit(rows(2), deadline=fake_clock() + 0.02))
        fine = asyncio.create_task(batcher.submit(rows(3), deadline=fake_clock() + 30))
        await async_until(lambda: batcher.queued == 2)
        fake_clock.advance(0.1)  # the model stays busy past the first deadline
        model.gate.set()
        await running
        with pytest.raises(DeadlineExceeded, match="dropped before compute"):
            await doomed
        await fine
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(1), deadline=fake_clock() - 1)
        await batcher.close()

    run(main())
    assert model.calls == [1, 3]


def test_cancelled_caller_is_not_computed(async_until):
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=8)
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        gone = asyncio.create_task(batcher.submit(rows(5)))
        await async_until(lambda: batcher.queued == 1)
        gone.cancel()
        kept = asyncio.create_task(batcher.submit(rows(2)))
        await async_until(lambda: batcher.queued == 2 and gone.done())
        model.gate.set()
        await asyncio.gather(running, kept)
        await batcher.close()

    run(main())
    assert model.calls == [1, 2]


def test_one_bad_request_fails_alone_not_its_batch(async_until):
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=16)
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        good1 = asyncio.create_task(batcher.submit(rows(2)))
        bad = asyncio.create_task(batcher.submit({"x": -np.ones((1, 3), dtype=np.float32)}))
        good2 = asyncio.create_task(batcher.submit(rows(3, 7)))
        await async_until(lambda: batcher.queued == 3)
        model.gate.set()
        await running
        out1, stats1 = await good1
        out2, _ = await good2
        with pytest.raises(InvalidInput, match="negative"):
            await bad
        await batcher.close()
        return out1, out2, stats1

    out1, out2, stats1 = run(main())
    np.testing.assert_array_equal(out1["y"], rows(2)["x"] * 2)
    np.testing.assert_array_equal(out2["y"], rows(3, 7)["x"] * 2)
    assert stats1.batch_requests == 1  # re-run alone after the batch of three failed
    assert model.calls == [1, 2, 3]


def test_close_answers_queued_requests_and_refuses_new_ones(async_until):
    model = Doubler()

    async def main():
        batcher = DynamicBatcher("m", model, max_batch_size=1)
        model.gate.clear()
        running = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.to_thread(model.started.wait, 5)
        queued = asyncio.create_task(batcher.submit(rows(1)))
        await async_until(lambda: batcher.queued == 1)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0)  # `closing` runs up to its first wait: the batcher is closed now
        with pytest.raises(Unavailable):
            await batcher.submit(rows(1))
        model.gate.set()
        await closing
        with pytest.raises(Unavailable):
            await queued
        return await running

    out, _ = run(main())
    np.testing.assert_array_equal(out["y"], rows(1)["x"] * 2)


# ---------------------------------------------------------------------- several workers: order and fairness


class PerBatchGates:
    """``y = 2x``; request ``i`` is the row ``[i, i, i]``. Each call records its request ids when it
    starts, then blocks until the test opens the gate of its first id, so the test decides which
    worker frees up when."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self._lock = threading.Lock()
        self._gates: dict[int, threading.Event] = {}

    def gate(self, first_id: int) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(first_id, threading.Event())

    def started(self, first_id: int) -> bool:
        with self._lock:
            return any(call[0] == first_id for call in self.calls)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [int(v) for v in inputs["x"][:, 0]]
        with self._lock:
            self.calls.append(ids)
        assert self.gate(ids[0]).wait(15), f"the test never opened the gate of batch {ids}"
        return {"y": inputs["x"] * 2}

    def open_all(self) -> None:
        with self._lock:
            gates = list(self._gates.values())
        for gate in gates:
            gate.set()


def one(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 3), i, dtype=np.float32)}


def read_trace(path) -> list[dict]:
    """The batcher's debug trace (``FOGLINE_BATCH_TRACE``): one record per answered request."""
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_busy_workers_take_the_queue_oldest_first_in_even_shares(tmp_path, monkeypatch, fake_clock, async_until):
    """32 callers on two busy workers: the first worker to free up takes the 16 oldest (its share),
    not all 30 (one core would then run 30 rows while the other idles); the rest go next."""
    from fogline.cloud.compute_pool import ComputePool

    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("FOGLINE_BATCH_TRACE", str(trace))
    model = PerBatchGates()

    async def main():
        pool = ComputePool(2)
        batcher = DynamicBatcher("m", model, max_batch_size=32, clock=fake_clock, pool=pool)
        tasks = [asyncio.create_task(batcher.submit(one(0)))]
        await async_until(lambda: model.started(0))
        tasks.append(asyncio.create_task(batcher.submit(one(1))))  # the second worker takes it alone
        await async_until(lambda: model.started(1))
        tasks += [asyncio.create_task(batcher.submit(one(i))) for i in range(2, 32)]
        await async_until(lambda: batcher.queued == 30)
        assert batcher.target_rows() == 16  # 32 rows in the batcher, two workers
        model.gate(0).set()  # worker 0 frees up first
        await async_until(lambda: model.started(2))
        assert batcher.queued == 14
        model.gate(1).set()
        await async_until(lambda: model.started(18))
        model.open_all()
        results = await asyncio.gather(*tasks)
        await batcher.close()
        pool.shutdown()
        return results

    results = run(main())
    assert model.calls == [[0], [1], list(range(2, 18)), list(range(18, 32))]
    for i, (out, _stats) in enumerate(results):
        np.testing.assert_array_equal(out["y"], one(i)["x"] * 2)
    records = read_trace(trace)
    assert len(records) == 32 and max(r["ahead"] for r in records) == 1


def test_a_request_is_passed_over_by_at_most_one_batch(tmp_path, monkeypatch, fake_clock, async_until):
    """Three workers: a request left behind when a batch takes its share goes in the next batch, even
    when that batch's own share is smaller than what was left behind (FIFO across workers)."""
    from fogline.cloud.compute_pool import ComputePool

    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("FOGLINE_BATCH_TRACE", str(trace))
    model = PerBatchGates()

    async def main():
        pool = ComputePool(3)
        batcher = DynamicBatcher("m", model, max_batch_size=16, clock=fake_clock, pool=pool)
        tasks = []
        for i in range(3):  # one request on each worker, every worker busy
            tasks.append(asyncio.create_task(batcher.submit(one(i))))
            await async_until(lambda i=i: model.started(i))
        tasks += [asyncio.create_task(batcher.submit(one(i))) for i in range(3, 12)]
        await async_until(lambda: batcher.queued == 9)
        assert batcher.target_rows() == 4  # 12 rows over three workers
        model.gate(0).set()
        await async_until(lambda: model.started(3))  # takes 4 of 9: 7..11 are left behind once
        model.gate(1).set()
        await async_until(lambda: model.started(7))  # its share is 4, but all 5 left behind go now
        assert batcher.queued == 0
        model.open_all()
        await asyncio.gather(*tasks)
        await batcher.close()
        pool.shutdown()

    run(main())
    assert model.calls == [[0], [1], [2], [3, 4, 5, 6], [7, 8, 9, 10, 11]]
    records = read_trace(trace)
    assert len(records) == 12
    assert max(r["ahead"] for r in records) <= 1  # never waited for more than the batch in flight + its own
    by_batch = sorted({(r["batch"], r["rows"]) for r in records})
    assert [rows for _, rows in by_batch] == [1, 1, 1, 4, 5]


def test_a_free_worker_waits_for_its_share_then_goes(fake_clock, async_until):
    """Two workers, 8 callers: a worker that frees up with 2 rows queued holds (for at most the queue
    delay) until its share of the load, 4 rows, is there, instead of running a lopsided batch of 2."""
    from fogline.cloud.compute_pool import ComputePool

    model = PerBatchGates()

    async def main():
        pool = ComputePool(2)
        batcher = DynamicBatcher("m", model, max_batch_size=32, max_queue_delay_us=MINUTE_US,
                                 clock=fake_clock, pool=pool)
        tasks = [asyncio.create_task(batcher.submit(one(0)))]
        await async_until(lambda: model.started(0))
        tasks.append(asyncio.create_task(batcher.submit(one(1))))
        await async_until(lambda: model.started(1))
        tasks += [asyncio.create_task(batcher.submit(one(i))) for i in range(2, 8)]
        await async_until(lambda: batcher.queued == 6)
        assert batcher.target_rows() == 4
        model.gate(0).set()
        await async_until(lambda: model.started(2))  # share 4 of 6: ids 2..5
        model.gate(1).set()
        await tasks[1]  # worker 1 is free with 6, 7 queued: it waits for two more
        more = [asyncio.create_task(batcher.submit(one(i))) for i in (8, 9)]
        await async_until(lambda: model.started(6))  # released by the fourth row, not the minute
        model.open_all()
        await asyncio.gather(*tasks, *more)
        await batcher.close()
        pool.shutdown()

    run(main())
    assert model.calls == [[0], [1], [2, 3, 4, 5], [6, 7, 8, 9]]
