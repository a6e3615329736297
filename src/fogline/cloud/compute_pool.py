"""The compute threads every batcher runs its model calls on, and how many cores each call may use.

Why a pool of its own. On a CPU, one model call can use every core (torch's intra-op threads), or
several calls can run side by side on one core each. Which is faster depends on the load:

- a lone request is fastest with every core on it (minilm batch 1 on 2 cores: ~6 ms with 2 intra-op
  threads, ~10 ms with 1);
- under a steady stream of batches, calls side by side on one core each get far more done: intra-op
  threads meet at a barrier after every operator, so whenever the event loop (or anything else)
  takes a core for a moment, the other thread waits for it. Two single-threaded minilm batch-8
  calls side by side did 7% more work than one call on both cores on two quiet cores, 1.9x more on
  the busy 2-core development machine; served at concurrency 32, +21% (bench/results/cloud-cpu-pinned.md).

So ``ComputePool`` has ``workers`` threads (one per core on a CPU). Worker 0 is handed out first
and, before each call, sizes its intra-op threads to the calls in flight (``total_threads //
in_flight``): a lone call gets every core. Every other worker always uses one thread (it is only
handed out while worker 0 is busy, or to a waiter at the moment it frees up). (torch's setting belongs to the calling thread, and each calling thread that ever
uses several threads keeps a team of its own; with two teams in the process, libgomp stops spinning
for work and every operator pays a wake-up: a lone minilm call took ~19 ms instead of ~9 ms after the
second worker had once run with two threads. So only worker 0 ever has a team.) A call that starts
alone keeps its threads until it ends, so while a second call joins it the cores are briefly
oversubscribed; under steady load every call runs on one core.

Batchers ask for a worker with ``acquire()`` *before* they form a batch, so while every worker is
busy requests keep gathering in the queue; a free worker takes them all at once. Waiters are served
first come, first served, so one busy model cannot starve another.

A model whose batches take only a moment (``digits``: about a millisecond) gains nothing from
running two of them side by side: the event loop, which decodes and answers every request, is then
the busy part, and a second compute thread only takes CPU from it. Its batcher then runs one batch
at a time (``fogline.cloud.batcher.PARALLEL_MIN_MS``) on whichever worker is free; the batches grow
instead.

On a GPU each model gets a pool of one worker (kernels of different models overlap on the device)
and no thread sizing (``set_threads=None``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ComputePool:
    """``workers`` dedicated threads; ``acquire`` a worker, ``run`` a call on it, ``release`` it."""

    def __init__(
        self,
        workers: int = 1,
        *,
        total_threads: int = 1,
        set_threads: Callable[[int], None] | None = None,
        name: str = "fogline-compute",
    ) -> None:
        """``set_threads(n)`` sets the intra-op thread count (``torch.set_num_threads``); it is called
        on the worker thread just before a call whenever the right count changes."""
        if workers < 1 or total_threads < 1:
            raise ValueError(f"workers and total_threads must be >= 1, got {workers}, {total_threads}")
        self.workers = workers
        self.total_threads = total_threads
        self._set_threads = set_threads
        self._threads_now = [0] * workers  # per worker: what set_threads was last called with (0 = never)
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"{name}_{i}") for i in range(workers)]
        self._free = list(range(workers))  # free worker indexes; the lowest is handed out first
        self._waiters: deque[asyncio.Future[int]] = deque()
        self.in_flight = 0

    # ------------------------------------------------------------------ workers

    async def acquire(self) -> int:
        """Wait for a free worker and return its index (first come, first served)."""
        # A waiter only waits while no worker is free (release hands each worker to the first live
        # waiter), so a free worker is nobody's: take it.
        if self._free:
            return self._free.pop(0)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # handed a worker just as we were cancelled
            else:
                # (a release between the cancel and this line skipped the entry, never removed it)
                self._waiters.remove(waiter)
            raise

    def release(self, worker: int) -> None:
        """Give a worker back; the longest live waiter gets it."""
        for waiter in self._waiters:
            if not waiter.done():
                self._waiters.remove(waiter)
                waiter.set_result(worker)
                return
        self._free.append(worker)
        self._free.sort()

    # ------------------------------------------------------------------ calls

    def start(self, worker: int, fn: Callable[..., T], *args: Any, company: bool = False) -> asyncio.Future[T]:
        """Hand ``fn(*args)`` to ``worker`` (acquired by the caller) now; await the returned future.

        ``company``: the caller expects other calls to start beside this one before it ends (a loaded
        batcher), so it runs on one thread even if it starts alone: a call that starts with every
        core and is then joined oversubscribes them, and its threads stall each other at every operator.
        Submitting is synchronous on purpose: a batcher that has just taken a batch hands it to the
        thread before anything else on the event loop runs."""
        self.in_flight += 1
        # Only worker 0 ever uses several threads (see the module docstring).
        threads = max(1, self.total_threads // self.in_flight) if worker == 0 and not company else 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executors[worker], self._call, worker, threads, fn, args)
        future.add_done_callback(self._one_less)
        return future

    async def run(self, worker: int, fn: Callable[..., T], *args: Any) -> T:
        """``start`` and wait for the result."""
        return await self.start(worker, fn, *args)

    def _one_less(self, _future: asyncio.Future) -> None:
        self.in_flight -= 1

    def _call(self, worker: int, threads: int, fn: Callable[..., T], args: tuple) -> T:
        """On the worker's thread: size its intra-op threads (a per-thread setting), then call."""
        if self._set_threads is not None and threads != self._threads_now[worker]:
            self._set_threads(threads)
            self._threads_now[worker] = threads
        return fn(*args)

    def submit_to(self, worker: int, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on ``worker`` from outside the event loop and wait (loading, warm-up)."""
        return self._executors[worker].submit(fn, *args).result()

    def shutdown(self, wait: bool = True) -> None:
        for executor in self._executors:
            executor.shutdown(wait=wait)


def torch_thread_setter() -> Callable[[int], None]:
    """``torch.set_num_threads`` (imported lazily: the agent side never imports torch)."""
    import torch

    return torch.set_num_threads
