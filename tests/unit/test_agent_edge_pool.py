"""The edge runner's micro-batching, queue accounting and service-time estimate.

The model here is a small numpy function with the ``EdgeModel`` interface (the runner is generic over
it); the real INT8 models run through the same code in the integration tests. Its cost is not slept:
it moves the runner's fake clock by ``cost_ms`` per call, so service times and the inline decision are
exact on any machine, and it can hold a call until the test opens its gate, so tests order concurrent
requests by waiting for conditions (``async_until``), not by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fogline.agent.edge_pool import EdgeRunner, warmup_inputs
from fogline.agent.link_settings import LinkSettings, backoff_ms
from fogline.errors import InvalidInput

pytestmark = pytest.mark.unit


class Spec:
    def __init__(self, name, datatype, shape):
        self.name, self.datatype, self.shape = name, datatype, shape


class Doubler:
    """Doubles ``x``; rejects negative numbers; records the batch sizes it was called with.

    Each call moves ``clock`` (a ``FakeClock`` shared with the runner) by ``cost_ms``, and waits while
    ``gate`` is closed; ``started`` counts the calls that began."""

    name, version = "doubler", "3"
    inputs = [Spec("x", "FP32", (-1, 2))]
    outputs = [Spec("y", "FP32", (-1, 2))]

    def __init__(self, clock=None, cost_ms=20.0):
        self.clock, self.cost_ms = clock, cost_ms
        self.batches: list[int] = []
        self.started = 0
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def predict(self, inputs):
        x = inputs["x"]
        if (x < 0).any():
            raise InvalidInput("x must not be negative")
        with self.lock:
            self.started += 1
        assert self.gate.wait(15), "the test never opened the model's gate"
        if self.clock is not None:
            self.clock.advance(self.cost_ms / 1000.0)
        with self.lock:
            self.batches.append(x.shape[0])
        return {"y": x * 2}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


@contextlib.asynccontextmanager
async def one_worker(model, max_batch=8):
    """A started ``EdgeRunner`` over ``model``: one worker on a one-thread pool (threads ``pool_N``),
    calls of up to ``max_batch`` rows, no wait for company; stopped again on the way out."""
    with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
        runner = EdgeRunner(model, pool, workers=1, max_batch=max_batch, max_delay_ms=0.0)
        await runner.start(warmup=False)
        try:
            yield runner
        finally:
            await runner.stop()


async def held_call(runner, model, async_until):
    """Closes the model's gate and sends a one-row request of ones; returns its task once the model
    runs it, so what is sent next queues behind it until the test opens the gate."""
    model.gate.clear()
    task = asyncio.create_task(runner.predict({"x": np.ones((1, 2), np.float32)}))
    await async_until(lambda: model.started == 1)
    return task


#: A wait for company no test may sit out: a minute, three times the test's whole time limit.
MINUTE_MS = 60_000.0


def test_concurrent_requests_share_one_call_and_get_their_own_rows(async_until):
    async def scenario():
        model = Doubler()
        async with one_worker(model) as runner:
            first = await held_call(runner, model, async_until)  # the first call is running
            rest = [asyncio.create_task(runner.predict({"x": np.full((n, 2), float(n), np.float32)}))
                    for n in (1, 2, 3)]
            await async_until(lambda: runner.queue_depth == 4)  # the rest queue up behind it
            depth = runner.queue_depth
            model.gate.set()
            results = await asyncio.gather(first, *rest)
            await runner.stop()
            return model.batches, results, depth

    batches, results, depth = run(scenario())
    assert batches == [1, 6]  # the three queued requests (1+2+3 rows) went as one call
    assert depth == 4
    assert results[0]["y"].tolist() == [[2.0, 2.0]]
    for n, out in zip((1, 2, 3), results[1:], strict=True):
        assert out["y"].shape == (n, 2) and (out["y"] == 2 * n).all()


def test_batch_respects_max_batch_rows():
    async def scenario():
        model = Doubler()
        async with one_worker(model, max_batch=4) as runner:
            tasks = [asyncio.create_task(runner.predict({"x": np.ones((1, 2), np.float32)})) for _ in range(9)]
            await asyncio.gather(*tasks)
            await runner.stop()
            return model.batches

    batches = run(scenario())
    assert sum(batches) == 9 and max(batches) <= 4


def test_one_bad_request_does_not_sink_its_batch(async_until):
    async def scenario():
        model = Doubler()
        async with one_worker(model) as runner:
            blocker = await held_call(runner, model, async_until)
            good = asyncio.create_task(runner.predict({"x": np.ones((1, 2), np.float32)}))
            bad = asyncio.create_task(runner.predict({"x": -np.ones((1, 2), np.float32)}))
            await async_until(lambda: runner.queue_depth == 3)  # both queued behind the blocker
            model.gate.set()
            await blocker
            out = await good
            with pytest.raises(InvalidInput, match="negative"):
                await bad
            await runner.stop()
            return out, runner.queue_depth

    out, depth = run(scenario())
    assert out["y"].tolist() == [[2.0, 2.0]] and depth == 0


def test_incompatible_shapes_are_not_merged(async_until):
    async def scenario():
        model = Doubler()
        model.inputs = [Spec("x", "FP32", (-1, -1))]
        async with one_worker(model) as runner:
            blocker = await held_call(runner, model, async_until)
            a = asyncio.create_task(runner.predict({"x": np.ones((1, 2), np.float32)}))
            b = asyncio.create_task(runner.predict({"x": np.ones((1, 3), np.float32)}))
            await async_until(lambda: runner.queue_depth == 3)  # both queued behind the blocker
            model.gate.set()
            await asyncio.gather(blocker, a, b)
            await runner.stop()
            return model.batches, (await b)["y"].shape

    batches, shape = run(scenario())
    assert batches == [1, 1, 1] and shape == (1, 3)


def test_service_time_estimate_tracks_measured_calls(fake_clock):
    async def scenario():
        model = Doubler(fake_clock, cost_ms=40.0)
        with ThreadPoolExecutor(1) as pool:
            runner = EdgeRunner(model, pool, workers=1, initial_service_ms=1.0, clock=fake_clock, max_delay_ms=0.0)
            await runner.start(warmup=True)  # warm-up calls seed the estimate
            seeded = runner.service_ms
            view = runner.view()
            await runner.stop()
            return seeded, view

    seeded, view = run(scenario())
    assert seeded == pytest.approx(40.0)  # the first measured call replaces the guess, the rest agree
    assert view.queue_depth == 0 and view.service_ms == seeded


def test_warmup_inputs_follow_the_specs():
    feed = warmup_inputs([Spec("text", "BYTES", (-1,)), Spec("image", "FP32", (-1, 8, 8))])
    assert feed["text"].shape == (1,) and feed["text"][0] == b"fogline warm-up"
    assert feed["image"].shape == (1, 8, 8) and feed["image"].dtype == np.float32


def test_backoff_doubles_to_a_cap_with_bounded_jitter():
    rng = random.Random(1)
    plain = [backoff_ms(a, 100, 2000, 0.0, rng) for a in range(7)]
    assert plain == [100, 200, 400, 800, 1600, 2000, 2000]
    spread = [backoff_ms(3, 100, 2000, 0.2, rng) for _ in range(200)]
    assert 640 <= min(spread) < 700 and 900 < max(spread) <= 960 and len(set(spread)) > 100


def test_link_settings_from_the_fleet_config():
    from fogline.demo.loopback import device_config

    device = device_config(probe_interval_ms=150)
    settings = LinkSettings.from_config(device.cloud, device.routing, endpoint="10.0.0.1:9000")
    assert settings.endpoint == "10.0.0.1:9000" and settings.probe_interval_ms == 150
    assert settings.rtt_percentile == device.routing.hedge_percentile
    assert settings.keepalive_ms == device.cloud.keepalive.time_ms
    assert settings.request_timeout_ms == device.cloud.request_timeout_ms
    options = dict(settings.channel_options())
    assert options["grpc.keepalive_time_ms"] == device.cloud.keepalive.time_ms


def test_loop_lag_percentile_and_background_sampling():
    from fogline.agent.loop_lag import LoopLag

    lag = LoopLag(percentile=90)
    assert lag.high_ms() == 0.0
    for v in [1, 1, 1, 1, 1, 1, 1, 1, 1, 40]:
        lag.record(v)
    assert lag.high_ms() == 1  # one slow tick in ten stays above the 90th percentile
    lag.record(-3)  # early wake-ups count as zero
    assert min(lag._samples) == 0.0

    async def sample():
        live = LoopLag(interval_ms=10)
        live.start()
        await asyncio.sleep(0.06)
        time.sleep(0.05)  # block the loop: the next tick is ~50 ms late
        await asyncio.sleep(0.03)
        await live.stop()
        return max(live._samples)

    assert asyncio.run(sample()) >= 30


def test_cheap_model_runs_inline_when_idle_and_lone_requests_do_not_wait_for_company(fake_clock):
    async def scenario():
        cheap, slow = Doubler(fake_clock, cost_ms=0.1), Doubler(fake_clock, cost_ms=2.0)
        with ThreadPoolExecutor(1) as pool:
            fast_runner = EdgeRunner(cheap, pool, max_delay_ms=MINUTE_MS, clock=fake_clock)
            slow_runner = EdgeRunner(slow, pool, max_delay_ms=MINUTE_MS, clock=fake_clock)
            await fast_runner.start(warmup=True)
            await slow_runner.start(warmup=True)
            # A lone request waiting for company that cannot come would wait a minute: a timeout.
            await slow_runner.predict({"x": np.ones((1, 2), np.float32)})
            calls_before = fast_runner.calls
            out = await fast_runner.predict({"x": np.ones((1, 2), np.float32)})
            await fast_runner.stop()
            await slow_runner.stop()
            return fast_runner.inline, slow_runner.inline, fast_runner.calls - calls_before, out

    fast_inline, slow_inline, calls, out = run(scenario())
    assert fast_inline and not slow_inline  # 0.1 ms is under INLINE_MAX_MS (0.3 ms), 2 ms is not
    assert calls == 1 and out["y"].tolist() == [[2.0, 2.0]]


def test_a_cancelled_job_that_no_worker_took_never_runs(async_until):
    async def scenario():
        model = Doubler()
        async with one_worker(model, max_batch=1) as runner:
            running = await held_call(runner, model, async_until)  # the first call runs; the next two wait
            dropped = asyncio.create_task(runner.predict({"x": np.full((3, 2), 1.0, np.float32)}))
            kept = asyncio.create_task(runner.predict({"x": np.full((2, 2), 1.0, np.float32)}))
            await async_until(lambda: runner.queue_depth == 3)
            dropped.cancel()  # as a hedge the cloud won cancels its edge job
            model.gate.set()
            out = await asyncio.gather(running, kept)
            model.gate.clear()
            running_again = asyncio.create_task(runner.predict({"x": np.full((1, 2), 1.0, np.float32)}))
            await async_until(lambda: model.started == 3)
            running_again.cancel()  # already taken by a worker: it runs to the end, unheard
            model.gate.set()
            await async_until(lambda: len(model.batches) == 3 and runner.queue_depth == 0)
            await runner.stop()
            return model.batches, out, dropped.cancelled(), runner.queue_depth

    batches, out, cancelled, depth = run(scenario())
    assert cancelled and batches == [1, 2, 1]  # the 3-row job never reached the model
    assert out[1]["y"].shape == (2, 2) and depth == 0


def test_a_lone_request_goes_straight_to_the_pool_and_holds_a_worker_slot(async_until):
    async def scenario():
        model = Doubler()
        model.gate.clear()
        threads = []
        original = model.predict

        def predict(inputs):
            threads.append(threading.current_thread().name)
            return original(inputs)

        model.predict = predict
        async with one_worker(model) as runner:
            runner._tasks[0].cancel()  # no worker at all: a lone request must not need one
            lone = asyncio.create_task(runner.predict({"x": np.ones((1, 2), np.float32)}))
            await async_until(lambda: model.started == 1)
            depth_during = runner.queue_depth
            model.gate.set()
            out = await lone
            depth_after = runner.queue_depth
            await runner.stop()
            return threads, depth_during, depth_after, out, runner.calls

    threads, during, after, out, calls = run(scenario())
    assert threads == ["pool_0"] and calls == 1  # ran once, on the pool's thread
    assert during == 1 and after == 0  # counted while it ran, so the router sees the busy edge
    assert out["y"].tolist() == [[2.0, 2.0]]


def test_on_loop_requests_run_on_the_event_loop_only_when_idle_single_row_and_short(fake_clock):
    async def scenario():
        threads: list[str] = []

        class Recording(Doubler):
            def predict(self, inputs):
                threads.append(threading.current_thread().name)
                return super().predict(inputs)

        short, long_ = Recording(fake_clock, cost_ms=2.0), Recording(fake_clock, cost_ms=30.0)
        one, two = {"x": np.ones((1, 2), np.float32)}, {"x": np.ones((2, 2), np.float32)}
        seen = {}
        with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
            runner = EdgeRunner(short, pool, clock=fake_clock, max_delay_ms=0.0)
            slow = EdgeRunner(long_, pool, clock=fake_clock, max_delay_ms=0.0)
            await runner.start(warmup=True)
            await slow.start(warmup=True)
            for label, call in [
                ("plain", runner.predict(one)),
                ("on_loop", runner.predict(one, on_loop=True)),
                ("two_rows", runner.predict(two, on_loop=True)),
                ("too_slow", slow.predict(one, on_loop=True)),
            ]:
                threads.clear()
                out = await call
                seen[label] = (threads[0], out["y"].shape)
            seen["counted"] = (runner.calls_on_loop, slow.calls_on_loop)
            await runner.stop()
            await slow.stop()
        return seen

    seen = run(scenario())
    assert seen["plain"] == ("pool_0", (1, 2))  # a 2 ms model is not cheap enough to run inline
    assert seen["on_loop"] == ("MainThread", (1, 2))  # the caller said nothing else waits on the loop
    assert seen["two_rows"] == ("pool_0", (2, 2))
    assert seen["too_slow"][0] == "pool_0"  # 30 ms calls would stall the loop too long
    assert seen["counted"] == (1, 0)
