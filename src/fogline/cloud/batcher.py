"""Dynamic batching for one model: gather requests while the model is busy, run them as one call.

How a request travels:

1. ``submit`` puts it in a bounded queue (full queue -> ``Overloaded``, i.e. RESOURCE_EXHAUSTED)
   and awaits its own future.
2. One dispatcher task per model (on the event loop) takes requests off the queue, oldest first,
   whenever a compute worker is free. A request that finds a worker free and nobody else waiting
   is dispatched **at once**. While every worker is busy, requests pile up in the queue.
   **Batch size follows the load**: the target is the recent peak of rows in the batcher (queued
   plus running, over the last one to two seconds) shared evenly by the pool's workers: 1 for a
   lone caller, 16 for 32 callers on two workers. A freed worker takes its target, or its even
   share of a longer queue (up to ``max_batch_size`` rows); taking everything instead would leave
   one core with 30 rows (a long batch, the tail) and the other with 2.
   **Nobody is passed over twice**: a request left behind by one batch goes in the next one, whatever
   that batch's share, so it waits for at most the batch in flight plus its own, and requests are
   served in arrival order across workers.
   With ``max_queue_delay_us`` > 0 (like Triton's ``max_queue_delay_microseconds``) a free worker
   with fewer rows queued than its target holds for at most that long: the callers answered by the
   last batch usually come straight back. A lone caller's target is one row, so it never waits.
3. A request whose deadline has passed, or whose caller went away, is dropped before compute.
4. The batch's inputs are concatenated along axis 0, the model runs on a worker of the
   ``ComputePool`` (off the event loop; on a CPU the pool has a worker per core and several batches
   may run side by side, see ``fogline.cloud.compute_pool``), and the outputs are split back by each
   request's row count. A model whose batches take only a moment (under ``PARALLEL_MIN_MS`` on
   average) runs one batch at a time: its batches grow instead, and the event loop keeps its core.
5. If a batch of several requests fails, each request is re-run alone, so one bad request fails
   only itself.

The model is any callable ``dict[str, ndarray] -> dict[str, ndarray]`` that maps a batch of rows
to a batch of rows (``FullModel.predict``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fogline.cloud.compute_pool import ComputePool
from fogline.errors import DeadlineExceeded, Overloaded, Unavailable
from fogline.serving.batching import concat_inputs, rows_of, split_outputs

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]
#: How long the load (rows queued + running) is remembered when sizing batches: the peak of the
#: current window and the one before.
LOAD_WINDOW_S = 1.0
#: Called after every model call with (rows, requests, compute seconds).
BatchObserver = Callable[[int, int, float], None]
#: A model whose batches take less than this (a moving average, ms) runs one batch at a time (on
#: whichever worker is free): side by side they would only take CPU from the event loop. It runs
#: batches side by side again once they take ``PARALLEL_AGAIN_MS`` (so the bigger batches of one
#: at a time do not flip it straight back). See ``fogline.cloud.compute_pool``.
PARALLEL_MIN_MS = 3.0
PARALLEL_AGAIN_MS = 6.0


@dataclass(frozen=True)
class BatchStats:
    """What happened to one request inside the batcher (times in seconds)."""

    queue_s: float
    compute_s: float
    batch_rows: int
    batch_requests: int


@dataclass
class _Item:
    inputs: Arrays
    rows: int
    enqueued: float
    deadline: float | None  # on the batcher's clock; None = no deadline
    future: asyncio.Future
    seq: int = 0  # batches of this model started before it was queued (for the debug trace)
    depth: int = 0  # requests queued when it arrived (for the debug trace)


#: Debug mode: a file path; every batcher appends one JSON line per answered request to it at close
#: (``{"model", "enq", "start", "end", "worker", "batch", "rows", "requests", "ahead", "depth"}``, times on the
#: batcher's clock; ``ahead`` = batches of the model started after the request was queued and before
#: its own, ``depth`` = requests queued when it arrived). Off by default: nothing is recorded.
TRACE_ENV = "FOGLINE_BATCH_TRACE"


class DynamicBatcher:
    """Batches requests for one model and runs them on a compute pool's workers."""

    def __init__(
        self,
        name: str,
        run: RunFn,
        *,
        max_batch_size: int = 32,
        max_queue_delay_us: int = 0,
        max_queue_size: int = 256,
        on_batch: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        pool: ComputePool | None = None,
    ) -> None:
        """``pool``: the compute threads to run the model on (shared by every model on a CPU, see
        ``fogline.cloud.compute_pool``); by default the batcher starts a one-worker pool of its own."""
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        self._delay_s = max_queue_delay_us / 1e6
        self.max_queue_size = max_queue_size
        self._on_batch = on_batch
        self._clock = clock
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._own_pool = pool is None
        self._pool = pool or ComputePool(1, name=f"fogline-{name}")
        self._running: set[asyncio.Task] = set()  # this model's batches on the pool now
        self._queued_rows = 0  # rows in self._pending
        self._running_rows = 0  # rows in this model's batches on the pool now
        self._peak = 0  # most rows in the batcher (queued + running) seen in this load window ...
        self._last_peak = 0  # ... and in the one before
        self._window_start = clock()
        self._closed = False
        self._started = 0  # batches started so far
        self._compute_ms: float | None = None  # moving average of a batch's model call
        self._parallel = True  # may run batches side by side (see PARALLEL_MIN_MS)
        self._batch_done = asyncio.Event()  # set whenever one of this model's batches gives its worker back
        self._trace_path = os.environ.get(TRACE_ENV) or None
        self._trace: list[dict] | None = [] if self._trace_path else None

    # ------------------------------------------------------------------ public

    @property
    def queued(self) -> int:
        """Requests waiting for the model (not counting the batch that is running)."""
        return len(self._pending)

    @property
    def busy(self) -> bool:
        """Requests are queued or a batch of this model runs (a swapped-out batcher closes once idle)."""
        return bool(self._pending) or bool(self._running)

    def start(self) -> None:
        """Start the dispatcher task on the running event loop (idempotent)."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._dispatch(), name=f"batcher-{self.name}")

    async def submit(self, inputs: Arrays, *, deadline: float | None = None) -> tuple[Arrays, BatchStats]:
        """Run ``inputs`` (a batch of rows) through the model, batched with whatever else is waiting.

        ``deadline`` is an absolute time on the batcher's clock (``time.monotonic`` by default).
        Raises ``Overloaded`` when the queue is full, ``DeadlineExceeded`` when the deadline passes
        before the model starts on it, ``Unavailable`` after ``close``.
        """
        if self._closed:
            raise Unavailable(f"model {self.name!r} is shutting down")
        self.start()
        now = self._clock()
        if deadline is not None and now >= deadline:
            raise DeadlineExceeded(f"model {self.name!r}: the request's deadline passed before it was queued")
        if len(self._pending) >= self.max_queue_size:
            raise Overloaded(
                f"model {self.name!r}: {len(self._pending)} requests already queued "
                f"(max_queue_size {self.max_queue_size}); back off and retry"
            )
        item = _Item(inputs, rows_of(inputs), now, deadline, asyncio.get_running_loop().create_future(),
                     self._started, len(self._pending))
        self._pending.append(item)
        self._queued_rows += item.rows
        self._note_load(now)
        assert self._wakeup is not None
        self._wakeup.set()
        return await item.future

    async def close(self) -> None:
        """Stop the dispatcher after the batch in hand; anything still queued gets ``Unavailable``."""
        self._closed = True
        if self._task is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            self._batch_done.set()
            await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable(f"model {self.name!r} is shutting down"))
        self._queued_rows = 0
        if self._own_pool:
            self._pool.shutdown(wait=True)
        if self._trace_path and self._trace:
            with open(self._trace_path, "a", encoding="utf-8") as out:
                out.writelines(json.dumps(record) + "\n" for record in self._trace)
            self._trace.clear()

    # ------------------------------------------------------------------ dispatcher

    async def _dispatch(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self._pending and not self._closed:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._closed:
                return
            # Wait for a free worker *before* forming the batch: while every worker is busy,
            # requests keep gathering, and the free worker takes them all.
            while not self._parallel and self._running_rows > 0 and not self._closed:
                self._batch_done.clear()  # one batch at a time: wait for the one running
                await self._batch_done.wait()
            worker = await self._pool.acquire()
            if self._closed:  # closed while we waited: what is queued gets Unavailable from close()
                self._pool.release(worker)
                return
            target = self.target_rows()
            if self._delay_s > 0 and self._queued_rows < target:
                await self._hold_for_company(target, self._clock() + self._delay_s)
            batch = self._take(target)
            if not batch:  # all expired or cancelled while we waited
                self._pool.release(worker)
                continue
            # Hand the batch to the worker thread right now; a task waits for it and answers.
            started = self._clock()
            computing = self._pool.start(worker, self._call, batch, company=target > 1)
            seq = self._started
            self._started += 1
            self._running_rows += sum(it.rows for it in batch)
            task = asyncio.get_running_loop().create_task(self._finish(batch, worker, started, computing, seq))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    # ------------------------------------------------------------------ batch sizes

    def _note_load(self, now: float) -> None:
        """Remember the most rows the batcher held (queued + running) over the last one or two windows."""
        if now - self._window_start >= LOAD_WINDOW_S:
            stale = now - self._window_start >= 2 * LOAD_WINDOW_S
            self._last_peak, self._peak = (0 if stale else self._peak), 0
            self._window_start = now
        self._peak = max(self._peak, self._queued_rows + self._running_rows)

    def target_rows(self) -> int:
        """The batch size the load asks for: the recent peak of rows in the batcher, shared evenly
        by the pool's workers (1 for a lone caller, 16 for 32 callers on two workers)."""
        peak = max(self._peak, self._last_peak)
        workers = self._pool.workers if self._parallel else 1
        return max(1, min(self.max_batch_size, -(-peak // workers)))

    @property
    def parallel(self) -> bool:
        """Whether this model's batches may run side by side (see ``PARALLEL_MIN_MS``)."""
        return self._parallel

    async def _hold_for_company(self, target: int, until: float) -> None:
        """A free worker waits (until ``until`` at most) for ``target`` rows to be queued.

        The callers answered by a batch usually send their next request at once; waiting for them
        keeps every batch near its share of the load instead of a lopsided pair (1 + 31), where the
        31 then run on one core while the other core idles. A lone caller's target is one row, so
        it never waits.
        """
        assert self._wakeup is not None
        while self._queued_rows < target and not self._closed:
            remaining = until - self._clock()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self, target: int) -> list[_Item]:
        """Pop the next batch, oldest first: live requests up to ``max_batch_size`` rows.

        Of a long queue it takes ``target`` rows, or its share of the queue if that is more (the
        queue split evenly by the workers), and always every request an earlier batch left behind:
        a request is passed over by at most one batch (it waits for the batch in flight, then its own).
        """
        share = -(-self._queued_rows // self._pool.workers)
        limit = max(target, share)
        batch: list[_Item] = []
        rows = 0
        now = self._clock()
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # the caller went away (cancelled)
                self._pop()
                continue
            if item.deadline is not None and now >= item.deadline:
                self._pop()
                waited_ms = (now - item.enqueued) * 1e3
                item.future.set_exception(
                    DeadlineExceeded(
                        f"model {self.name!r}: deadline passed after {waited_ms:.1f} ms in the queue; "
                        "dropped before compute"
                    )
                )
                continue
            passed_over = item.seq < self._started  # a batch started after it came, without it
            if batch and (rows + item.rows > self.max_batch_size or (rows + item.rows > limit and not passed_over)):
                break
            self._pop()
            batch.append(item)
            rows += item.rows
        return batch

    def _pop(self) -> _Item:
        item = self._pending.popleft()
        self._queued_rows -= item.rows
        return item

    async def _finish(
        self, batch: list[_Item], worker: int, started: float, computing: asyncio.Future, seq: int = 0
    ) -> None:
        """Wait for a batch's model call, give the worker back, then answer each request.

        The worker goes back *before* the answers: the dispatcher then starts the next batch on it
        before the event loop spends its time writing this batch's responses.
        """
        rows = sum(it.rows for it in batch)
        try:
            results, compute_s = await computing
        except Exception as exc:
            try:
                if len(batch) == 1:
                    self._fail(batch[0], exc)
                    return
                # One request may have poisoned the batch: run each alone so only it fails.
                for item in batch:
                    await self._execute_alone(item, started, worker)
            finally:
                self._give_back(worker, rows)
            return
        except BaseException:  # cancelled: the worker is still ours to give back
            self._give_back(worker, rows)
            raise
        self._give_back(worker, rows)
        self._observe(rows, len(batch), compute_s)
        if self._trace is not None:
            self._record(batch, worker, started, seq, rows)
        for item, outputs in zip(batch, results, strict=True):
            stats = BatchStats(started - item.enqueued, compute_s, rows, len(batch))
            if not item.future.done():
                item.future.set_result((outputs, stats))

    def _record(self, batch: list[_Item], worker: int, started: float, seq: int, rows: int) -> None:
        """Debug trace (``FOGLINE_BATCH_TRACE``): one record per request of a finished batch."""
        assert self._trace is not None
        end = self._clock()
        for item in batch:
            self._trace.append({"model": self.name, "enq": item.enqueued, "start": started, "end": end,
                                "worker": worker, "batch": seq, "rows": rows, "requests": len(batch),
                                "ahead": seq - item.seq, "depth": item.depth})

    def _give_back(self, worker: int, rows: int) -> None:
        """This batch no longer runs: the dispatcher may use the worker again."""
        self._running_rows -= rows
        self._running.discard(asyncio.current_task())
        self._pool.release(worker)
        self._batch_done.set()

    async def _execute_alone(self, item: _Item, started: float, worker: int) -> None:
        try:
            results, compute_s = await self._pool.run(worker, self._call, [item])
        except Exception as exc:
            self._fail(item, exc)
            return
        self._observe(item.rows, 1, compute_s)
        if not item.future.done():
            item.future.set_result((results[0], BatchStats(started - item.enqueued, compute_s, item.rows, 1)))

    def _call(self, batch: list[_Item]) -> tuple[list[Arrays], float]:
        """Worker thread: concatenate, run the model, split. Returns per-request outputs and seconds."""
        inputs = concat_inputs([it.inputs for it in batch])
        t0 = time.perf_counter()
        outputs = self._run(inputs)
        compute_s = time.perf_counter() - t0
        return split_outputs(outputs, [it.rows for it in batch]), compute_s

    def _observe(self, rows: int, requests: int, compute_s: float) -> None:
        ms = compute_s * 1e3
        self._compute_ms = ms if self._compute_ms is None else self._compute_ms + 0.2 * (ms - self._compute_ms)
        if self._parallel and self._compute_ms < PARALLEL_MIN_MS:
            self._parallel = False
        elif not self._parallel and self._compute_ms >= PARALLEL_AGAIN_MS:
            self._parallel = True
        if self._on_batch is not None:
            self._on_batch(rows, requests, compute_s)

    @staticmethod
    def _fail(item: _Item, exc: BaseException) -> None:
        if not item.future.done():
            item.future.set_exception(exc)
