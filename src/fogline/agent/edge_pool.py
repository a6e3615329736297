"""The local (edge) tier: INT8 models run by onnxruntime off the event loop, with micro-batching.

``EdgeRunner`` wraps one loaded ``EdgeModel``. Requests for it wait in an asyncio queue; each of its
``workers`` worker tasks takes the first waiting request plus whatever else is already queued (up to
``max_batch`` rows; while other calls run it also waits up to ``max_delay_ms`` for company),
concatenates them along the batch axis, runs one ``predict`` in a thread and hands each request its
rows. Concurrent requests therefore share one onnxruntime call instead of queueing behind each other.

A request that finds the runner idle has nobody to share a call with, so it skips the queue and the
worker task (two event-loop hand-offs) and goes straight to the thread pool; a model cheap enough
(``INLINE_MAX_MS``, measured at warm-up) even runs right on the event loop, where the thread hand-offs
would cost more than the model.

The runner also measures itself for the router: ``queue_depth`` (requests waiting or running) and
``service_ms`` (a moving average of how long one call takes once it starts), which together predict
how long a new request would take here (``EdgeView``).

``EdgePool`` holds the runners of every model the device serves. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fogline.agent.router_types import EdgeView
from fogline.errors import InvalidInput, ModelNotFound, Overloaded
from fogline.fleet.model import BatchingConfig, default_of
from fogline.serving.batching import can_share, concat_inputs, rows_of, split_outputs

log = logging.getLogger(__name__)

#: A model whose one-row call takes at most this long (ms) runs on the event loop when the runner is idle.
INLINE_MAX_MS = 0.3
#: With ``on_loop=True`` (nothing else waits on the event loop), a model whose calls take at most this
#: long (ms, the moving average) runs on the loop too: the longest a health check or a link probe
#: may then wait behind it.
ON_LOOP_MAX_MS = 10.0


@dataclass
class _Job:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    #: The caller already validated ``inputs`` against the model's specs.
    checked: bool = False
    #: A worker took it: from then on it runs to the end, whoever still waits for it.
    started: bool = False


def warmup_inputs(specs: Iterable[Any]) -> dict[str, np.ndarray]:
    """A one-row batch matching the model's input specs (text for BYTES, zeros otherwise)."""
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = [1 if d < 0 else d for d in spec.shape]
        if spec.datatype == "BYTES":
            arr = np.empty(shape, dtype=object)
            arr.fill(b"fogline warm-up")
            out[spec.name] = arr
        else:
            out[spec.name] = np.zeros(shape, dtype=np.float32 if spec.datatype == "FP32" else np.int64)
    return out


@dataclass(frozen=True)
class EdgeBatching:
    """How a runner micro-batches concurrent requests: a device's ``batching`` block (``from_config``).
    The defaults are the fleet model's, read from it."""

    #: Most rows one model call takes.
    max_batch: int = default_of(BatchingConfig, "max_batch_size")
    #: How long a batch may wait for more requests (ms).
    max_delay_ms: float = float(default_of(BatchingConfig, "max_queue_delay_ms"))
    #: Most requests waiting for the model; one more is refused as overloaded.
    max_queue: int = default_of(BatchingConfig, "max_queue_size")

    @classmethod
    def from_config(cls, batching: BatchingConfig) -> EdgeBatching:
        """A device's ``batching`` block, value for value (no defaults added)."""
        return cls(max_batch=batching.max_batch_size, max_delay_ms=float(batching.max_queue_delay_ms),
                   max_queue=batching.max_queue_size)


_BATCHING = EdgeBatching()


class EdgeRunner:
    """One edge model, its request queue, its workers and its service-time estimate."""

    def __init__(self, model: Any, executor: ThreadPoolExecutor, *, workers: int = 1,
                 max_batch: int = _BATCHING.max_batch, max_delay_ms: float = _BATCHING.max_delay_ms,
                 max_queue: int = _BATCHING.max_queue, initial_service_ms: float = 10.0,
                 alpha: float = 0.2, clock: Callable[[], float] = time.perf_counter) -> None:
        """``clock`` (seconds) times the model calls that feed ``service_ms`` and the inline decision;
        tests pass a fake one to make those figures exact."""
        self.model = model
        self._clock = clock
        #: The model's call for inputs already validated (``EdgeModel.predict_checked``: the data plane
        #: checks every request before routing it, so the model need not check it again).
        self._predict_checked = getattr(model, "predict_checked", model.predict)
        self.name: str = model.name
        self.version: str = str(model.version)
        self.workers = max(1, workers)
        self.max_batch = max(1, max_batch)
        self.max_delay_ms = max(0.0, max_delay_ms)
        self.max_queue = max(1, max_queue)
        self.service_ms = initial_service_ms
        self._recent: deque[float] = deque(maxlen=64)
        self._first_observation = False
        #: Run on the event loop thread when idle (decided at warm-up for models cheaper than
        #: ``INLINE_MAX_MS``): the two thread hand-offs of the executor would cost more than the model.
        self.inline = False
        #: The ``on_loop`` limit on the moving-average call time (ms); ``ON_LOOP_MAX_MS`` unless set.
        self.on_loop_max_ms = ON_LOOP_MAX_MS
        self._alpha = alpha
        self._executor = executor
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._in_flight = 0
        #: Model calls running (worker batches and lone requests); at most ``workers``.
        self._running_calls = 0
        self._slot_freed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.calls = 0
        self.rows = 0
        #: Requests holding this runner (the data plane's, from routing to answer, fallbacks included):
        #: a runner swapped out (a new version, SIGHUP) is stopped once none is left.
        self.users = 0
        #: Calls run on the event loop thread (cheap models, and ``on_loop`` requests).
        self.calls_on_loop = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self, warmup: bool = True) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"edge-{self.name}-{i}")
                       for i in range(self.workers)]
        if warmup:
            # First calls are slow (allocation, graph caches): pay that before serving, then seed the
            # estimates through the same path requests take.
            sample = warmup_inputs(self.model.inputs)
            await asyncio.get_running_loop().run_in_executor(self._executor, self.model.predict, sample)
            cheapest = min(self._timed(self.model.predict, sample) for _ in range(3))
            self.inline = cheapest <= INLINE_MAX_MS
            self._first_observation = True
            for _ in range(4):
                await self.predict(sample)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.cancel()

    @property
    def drained(self) -> bool:
        """Nobody holds it and nothing waits or runs in it: a swapped-out runner may stop."""
        return self.users == 0 and self.queue_depth == 0 and self._running_calls == 0

    # ------------------------------------------------------------------ serving
    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + self._in_flight

    @property
    def service_high_ms(self) -> float:
        """The 90th percentile of recent end-to-end times of requests that found the runner idle (the
        mean service time while there are too few): what a deadline must budget for when the CPU is
        shared and some runs are slow."""
        if len(self._recent) < 5:
            return max(self.service_ms, max(self._recent, default=0.0))
        ordered = sorted(self._recent)
        return max(self.service_ms, ordered[int(0.9 * (len(ordered) - 1))])

    def view(self, scheduling_ms: float = 0.0, cpu_load: float | None = None) -> EdgeView:
        return EdgeView(queue_depth=self.queue_depth, workers=self.workers,
                        service_ms=self.service_ms, service_high_ms=self.service_high_ms,
                        scheduling_ms=scheduling_ms, cpu_load=cpu_load)

    async def predict(self, inputs: dict[str, np.ndarray], *, checked: bool = False,
                      on_loop: bool = False) -> dict[str, np.ndarray]:
        """Run one request (a batch of rows) through the model; raises what the model raises.
        ``checked``: the caller already validated ``inputs`` against the model's input specs.
        ``on_loop``: the caller knows nothing else waits on the event loop meanwhile (one client,
        waiting for this answer), so an idle runner may run a model of up to ``on_loop_max_ms`` right
        here instead of handing it to a thread and back (one-row requests only)."""
        rows = rows_of(inputs)
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"model {self.name!r}: {self.max_queue} requests already wait on this device; "
                             "retry later or raise batching.max_queue_size")
        idle = self._in_flight == 0 and self._queue.empty()
        if idle and rows <= self.max_batch:
            if self.inline or (on_loop and rows == 1 and self.service_ms <= self.on_loop_max_ms):
                return self._predict_inline(inputs, rows, checked)
            return await self._predict_alone(inputs, rows, checked)
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        began = self._clock()
        job = _Job(inputs, rows, future, checked)
        await self._queue.put(job)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller gave up (a hedge the cloud won): a job no worker took yet is dropped unrun.
            if not job.started:
                future.cancel()
            raise
        if idle:
            # Submit-to-answer with nobody ahead: the run plus every hand-off (event loop, thread pool),
            # which is what a busy CPU stretches. Its high percentile budgets the edge backup.
            self._recent.append((self._clock() - began) * 1000.0)
        return result

    def _predict_inline(self, inputs: dict[str, np.ndarray], rows: int, checked: bool) -> dict[str, np.ndarray]:
        began = self._clock()
        outputs = (self._predict_checked if checked else self.model.predict)(inputs)
        self._served_alone(rows, (self._clock() - began) * 1000.0)
        self.calls_on_loop += 1
        return outputs

    async def _predict_alone(self, inputs: dict[str, np.ndarray], rows: int, checked: bool
                             ) -> dict[str, np.ndarray]:
        """An idle runner's request goes straight to the thread pool: with nothing to batch it with, the
        queue and the worker task would only add two event-loop hand-offs. It counts as in flight, so
        requests arriving meanwhile queue for the workers (and may batch among themselves)."""
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        self._running_calls += 1
        began = self._clock()
        work = self._executor.submit(self._predict_checked if checked else self.model.predict, inputs)
        try:
            outputs = await asyncio.wrap_future(work, loop=loop)
        except asyncio.CancelledError:
            # The caller gave up (a hedge the cloud won): a call not started yet is dropped unrun (the
            # cancellation reaches ``work``); one already running finishes unheard and frees its slot then.
            if work.done():
                self._release_one()
            else:
                work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release_one))
            raise
        except BaseException:
            self._release_one()
            raise
        self._release_one()
        self._served_alone(rows, (self._clock() - began) * 1000.0)
        return outputs

    def _release_one(self) -> None:
        self._in_flight -= 1
        self._running_calls -= 1
        self._slot_freed.set()

    def _served_alone(self, rows: int, elapsed_ms: float) -> None:
        """Book one request that ran with nobody ahead (inline or straight to the pool): its time is both
        a service-time sample and a submit-to-answer sample."""
        self._observe(elapsed_ms)
        self._recent.append(elapsed_ms)
        self.calls += 1
        self.rows += rows

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            self._in_flight += 1  # taken from the queue: it still counts until it is answered
            batch = [first]
            try:
                # At most ``workers`` model calls at once, a lone request's call (``_predict_alone``)
                # included: until a slot frees, the job stays unstarted (and can still be dropped).
                while self._running_calls >= self.workers and not first.future.done():
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                if first.future.done():
                    continue  # cancelled while it waited: nobody wants the answer
                first.started = True
                self._running_calls += 1
                try:
                    # Wait for company only while other calls run (then more requests are likely on
                    # their way); a request that finds the runner idle does not even come here.
                    if self.max_delay_ms > 0 and self._queue.empty() and self.max_batch > 1 and self._in_flight > 1:
                        await asyncio.sleep(self.max_delay_ms / 1000.0)
                    rows = first.rows
                    while not self._queue.empty() and len(batch) < self.max_batch:
                        nxt = self._queue._queue[0]  # type: ignore[attr-defined]  # peek without taking
                        if nxt.future.done():
                            self._queue.get_nowait()  # cancelled while it waited
                            continue
                        if rows + nxt.rows > self.max_batch or not can_share(first.inputs, nxt.inputs):
                            break
                        nxt.started = True
                        batch.append(self._queue.get_nowait())
                        self._in_flight += 1
                        rows += nxt.rows
                    await self._run(loop, batch)
                finally:
                    self._running_calls -= 1
                    self._slot_freed.set()
            except asyncio.CancelledError:
                for job in batch:  # the runner stops: nobody will answer these
                    if not job.future.done():
                        job.future.cancel()
                raise
            finally:
                self._in_flight -= len(batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        merged = concat_inputs([job.inputs for job in batch])
        call = self._predict_checked if all(job.checked for job in batch) else self.model.predict
        started = self._clock()
        try:
            outputs = await loop.run_in_executor(self._executor, call, merged)
            parts = split_outputs(outputs, [job.rows for job in batch])
        except InvalidInput as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            # One bad request must not sink the others: run each on its own.
            for job in batch:
                await self._run(loop, [job])
            return
        except Exception as exc:
            for job in batch:
                _fail(job, exc)
            return
        self._observe((self._clock() - started) * 1000.0)
        self.calls += 1
        for job, part in zip(batch, parts, strict=True):
            self.rows += job.rows
            if not job.future.done():
                job.future.set_result(part)

    def _timed(self, fn: Any, arg: Any) -> float:
        began = self._clock()
        fn(arg)
        return (self._clock() - began) * 1000.0

    def _observe(self, ms: float, first: bool = False) -> None:
        if self._first_observation:
            first, self._first_observation = True, False
        self.service_ms = ms if first else self.service_ms + self._alpha * (ms - self.service_ms)




def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)


class EdgePool:
    """Every edge model of the device, sharing one thread pool."""

    def __init__(self, runners: dict[str, EdgeRunner], executor: ThreadPoolExecutor, *,
                 models_dir: Path | None = None, intra_op_threads: int = 1) -> None:
        self.runners = runners
        self._executor = executor
        #: The repository the runners were loaded from (None when built by hand), for reloads.
        self.models_dir = models_dir
        self.intra_op_threads = intra_op_threads

    @classmethod
    def load(cls, models_dir: Path, models: Iterable[tuple[str, str | None]], *, threads: int = 1,
             workers: int = 1, max_batch: int = _BATCHING.max_batch, max_delay_ms: float = _BATCHING.max_delay_ms,
             max_queue: int = _BATCHING.max_queue, intra_op_threads: int = 1) -> EdgePool:
        """Load ``(name, version or None for newest)`` from the repository at ``models_dir``."""
        from fogline.models.edge_runtime import EdgeModel
        from fogline.models.repository import ModelRepository

        repo = ModelRepository(Path(models_dir))
        executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="edge")
        runners: dict[str, EdgeRunner] = {}
        for name, version in models:
            model = EdgeModel.load(repo.resolve(name, version), intra_op_threads=intra_op_threads)
            runners[name] = EdgeRunner(model, executor, workers=workers, max_batch=max_batch,
                                       max_delay_ms=max_delay_ms, max_queue=max_queue)
        return cls(runners, executor, models_dir=Path(models_dir), intra_op_threads=intra_op_threads)

    def new_runner(self, model: Any, like: EdgeRunner | None = None) -> EdgeRunner:
        """A runner for ``model`` on this pool's threads, batching as ``like`` (the version it replaces)
        does, or as the first runner does."""
        like = like or next(iter(self.runners.values()), None)
        options = {} if like is None else {"workers": like.workers, "max_batch": like.max_batch,
                                           "max_delay_ms": like.max_delay_ms, "max_queue": like.max_queue}
        return EdgeRunner(model, self._executor, **options)

    def swap(self, name: str, runner: EdgeRunner | None) -> EdgeRunner | None:
        """Serve ``name`` with ``runner`` from the next request on (None: stop serving it); returns the
        runner it replaced. Requests that already hold the old one finish on it (``EdgeRunner.users``)."""
        old = self.runners.get(name)
        if runner is None:
            self.runners.pop(name, None)
        else:
            self.runners[name] = runner
        return old

    async def start(self, warmup: bool = True) -> None:
        for runner in self.runners.values():
            await runner.start(warmup)

    async def stop(self) -> None:
        for runner in self.runners.values():
            await runner.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def get(self, name: str, version: str = "") -> EdgeRunner | None:
        runner = self.runners.get(name)
        if runner is None or (version and version != runner.version):
            return None
        return runner

    def require(self, name: str, version: str = "") -> EdgeRunner:
        runner = self.get(name, version)
        if runner is None:
            served = ", ".join(f"{r.name} (version {r.version})" for r in self.runners.values()) or "none"
            wanted = f"{name!r}" + (f" version {version!r}" if version else "")
            raise ModelNotFound(f"model {wanted} is not served by this agent; it serves: {served}")
        return runner
