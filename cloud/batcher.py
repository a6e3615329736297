"""Dynamic batching for one model: gather requests while the model is busy, run them as one call.

How a request travels:

1. ``submit`` puts it in a bounded queue (full queue -> ``Overloaded``, i.e. RESOURCE_EXHAUSTED)
   and awaits its own future.
2. One dispatcher task per model (on the event loop) takes requests off the queue. When a compute
   worker is free and a request arrives, it is dispatched **at once**: nobody waits for company when
   there is no one to wait behind. While every worker is busy, new requests pile up in the queue;
   when a worker frees up they all leave together as the next batch (up to ``max_batch_size``
   rows). With ``max_queue_delay_us`` > 0 (like Triton's ``max_queue_delay_microseconds``) and a
   batch of several requests just finished (and no other batch of the model running), the next
   batch may be held at most that long after the model became free, until as many rows are queued
   as the last batch had plus those already waiting: the callers just answered tend to come
   straight back, and one full batch beats a lopsided pair (1 + 31). After a batch of one request
   nothing is held, so a lone caller never waits.
3. A request whose deadline has passed, or whose caller went away, is dropped before compute.
4. The batch's inputs are concatenated along axis 0, the model runs on a worker of the
   ``ComputePool`` (off the event loop; on a CPU the pool has a worker per core and several batches
   may run side by side, see ``cloud.compute_pool``), and the outputs are split back by each
   request's row count.
5. If a batch of several requests fails, each request is re-run alone, so one bad request fails
   only itself.

The model is any callable ``dict[str, ndarray] -> dict[str, ndarray]`` that maps a batch of rows
to a batch of rows (``FullModel.predict``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from fogline.errors import DeadlineExceeded, Overloaded, Unavailable

from cloud.compute_pool import ComputePool

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]
#: Called after every model call with (rows, requests, compute seconds).
BatchObserver = Callable[[int, int, float], None]


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


def rows_of(inputs: Arrays) -> int:
    """The batch dimension shared by every input (the caller validated that they agree)."""
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


def concat_inputs(items: list[Arrays]) -> Arrays:
    """Concatenate several requests' inputs along axis 0 (no copy for a single request)."""
    if len(items) == 1:
        return items[0]
    return {name: np.concatenate([it[name] for it in items], axis=0) for name in items[0]}


def split_outputs(outputs: Arrays, rows: list[int]) -> list[Arrays]:
    """Split a batch's outputs back into per-request outputs by row counts."""
    total = sum(rows)
    for name, array in outputs.items():
        if array.shape[:1] != (total,):
            raise RuntimeError(f"model output {name!r} has shape {array.shape}; expected {total} rows")
    bounds = np.cumsum([0, *rows])
    return [
        {name: array[bounds[i] : bounds[i + 1]] for name, array in outputs.items()} for i in range(len(rows))
    ]


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
        ``cloud.compute_pool``); by default the batcher starts a one-worker pool of its own."""
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
        self._expected = 0  # rows likely queued soon: the last batch's callers coming back + waiting ones
        self._free_at = 0.0  # when the last batch finished
        self._closed = False

    # ------------------------------------------------------------------ public

    @property
    def queued(self) -> int:
        """Requests waiting for the model (not counting the batch that is running)."""
        return len(self._pending)

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
        item = _Item(inputs, rows_of(inputs), now, deadline, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        assert self._wakeup is not None
        self._wakeup.set()
        return await item.future

    async def close(self) -> None:
        """Stop the dispatcher after the batch in hand; anything still queued gets ``Unavailable``."""
        self._closed = True
        if self._task is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable(f"model {self.name!r} is shutting down"))
        if self._own_pool:
            self._pool.shutdown(wait=True)

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
            worker = await self._pool.acquire()
            if self._closed:  # closed while we waited: what is queued gets Unavailable from close()
                self._pool.release(worker)
                return
            if self._delay_s > 0 and self._expected > 1 and not self._running:
                await self._hold_for_company(self._expected, self._free_at + self._delay_s)
            self._expected = 0
            batch = self._take()
            if not batch:  # all expired or cancelled while we waited
                self._pool.release(worker)
                continue
            # Hand the batch to the worker thread right now; a task waits for it and answers.
            started = self._clock()
            computing = self._pool.start(worker, self._call, batch)
            task = asyncio.get_running_loop().create_task(self._finish(batch, worker, started, computing))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _pending_rows(self) -> int:
        return sum(it.rows for it in self._pending)

    async def _hold_for_company(self, expected: int, until: float) -> None:
        """Just after a batch: wait (until ``until`` at most) for ``expected`` rows to be queued.

        Callers answered by the batch that just finished usually send their next request at once;
        holding the model for them turns a lopsided pair of batches (1 + 31) into one full batch.
        After a batch of one request nothing is expected, so a lone caller never waits.
        """
        assert self._wakeup is not None
        while self._pending_rows() < expected and not self._closed:
            remaining = until - self._clock()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Item]:
        """Pop the next batch: live requests, oldest first, up to max_batch_size rows."""
        batch: list[_Item] = []
        rows = 0
        now = self._clock()
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # the caller went away (cancelled)
                self._pending.popleft()
                continue
            if item.deadline is not None and now >= item.deadline:
                self._pending.popleft()
                waited_ms = (now - item.enqueued) * 1e3
                item.future.set_exception(
                    DeadlineExceeded(
                        f"model {self.name!r}: deadline passed after {waited_ms:.1f} ms in the queue; "
                        "dropped before compute"
                    )
                )
                continue
            if batch and rows + item.rows > self.max_batch_size:
                break
            self._pending.popleft()
            batch.append(item)
            rows += item.rows
        return batch

    async def _finish(self, batch: list[_Item], worker: int, started: float, computing: asyncio.Future) -> None:
        """Wait for a batch's model call, give the worker back, then answer each request.

        The worker goes back *before* the answers: the dispatcher then starts the next batch on it
        before the event loop spends its time writing this batch's responses.
        """
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
                self._give_back(worker)
            return
        except BaseException:  # cancelled: the worker is still ours to give back
            self._give_back(worker)
            raise
        rows = sum(it.rows for it in batch)
        self._free_at = self._clock()
        self._expected = min(self.max_batch_size, rows + self._pending_rows())
        self._give_back(worker)
        self._observe(rows, len(batch), compute_s)
        for item, outputs in zip(batch, results, strict=True):
            stats = BatchStats(started - item.enqueued, compute_s, rows, len(batch))
            if not item.future.done():
                item.future.set_result((outputs, stats))

    def _give_back(self, worker: int) -> None:
        """This batch no longer runs: the dispatcher may hold for company again, and use the worker."""
        self._running.discard(asyncio.current_task())
        self._pool.release(worker)

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
        if self._on_batch is not None:
            self._on_batch(rows, requests, compute_s)

    @staticmethod
    def _fail(item: _Item, exc: BaseException) -> None:
        if not item.future.done():
            item.future.set_exception(exc)
