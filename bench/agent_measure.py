"""The measuring half of ``bench.agent``: inputs, timed loops over the paths, machine sampling.

A ``Route`` answers a request one way: ``inproc`` (``EdgeModel.predict`` called in this process),
``inproc_paced`` (the same, each call after 1 ms of idling, for reference), ``stream`` (an agent over
one ``ModelStreamInfer`` stream, one request in flight) or ``unary`` (an agent over ``ModelInfer``). ``latency_blocks`` alternates blocks of the paths so that whatever else
the machine does hits them alike; ``throughput_agent`` / ``throughput_in_process`` run closed loops.

Every agent answer is checked after its clock stops: no error, ``served_by == "edge"``, the right
output shape, and (in the latency phase, where requests run alone) the same numbers as in-process.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: agent output vs in-process output, same single-row request: they run the same ONNX session settings
ATOL = 1e-4
#: Idle time before each call of the ``inproc_paced`` path (about an agent round trip).
PACE_S = 0.001


@dataclass(frozen=True)
class Plan:
    """How much to measure: requests per block per model, rounds of blocks, throughput seconds."""

    blocks: dict[str, int]
    rounds: int
    warmup: int
    tput_s: float
    tput_warmup_s: float


@dataclass
class Series:
    """Latencies of one path (milliseconds) and what went wrong."""

    label: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    problems: list[str] = field(default_factory=list)
    max_abs_diff: float = 0.0
    seconds: float = 0.0  # throughput rows: the measured window

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def fail(self, why: str) -> None:
        self.errors += 1
        if len(self.problems) < 5:
            self.problems.append(why)


def make_cases(model: Any, n: int, seed: int = 6) -> list[dict[str, np.ndarray]]:
    """``n`` one-row inputs: digit images with values 0..16, or the fidelity sentences (cycled)."""
    if model.name == "minilm":
        from fogline.modelbuild.fidelity import load_sentences

        texts = load_sentences()
        return [{"text": np.array([texts[i % len(texts)].encode()], dtype=object)} for i in range(n)]
    rng = np.random.default_rng(seed)
    spec = model.inputs[0]
    shape = [1 if d < 0 else d for d in spec.shape]
    return [{spec.name: rng.integers(0, 17, size=shape).astype(np.float32)} for _ in range(n)]


def _messages(model: Any, cases: list[dict[str, np.ndarray]]) -> list[Any]:
    """Protobuf requests, built once (codec conversion out of the timed path); each asks for the edge."""
    from fogline import codec

    return [codec.request_to_proto(codec.InferRequest(model.name, case, id=str(i), parameters={"route": "edge"}))
            for i, case in enumerate(cases)]


def check_reply(series: Series, reply: Any, expected: dict[str, np.ndarray] | None, rows: int = 1) -> None:
    """Count ``reply`` (a ``ModelInferResponse``) as an error unless it is a good edge answer."""
    from fogline import codec

    try:
        response = codec.response_from_proto(reply)
    except Exception as exc:  # a reply the codec refuses is a failed request
        series.fail(f"undecodable reply: {exc}")
        return
    if response.parameters.get("served_by") != "edge":
        series.fail(f"served_by={response.parameters.get('served_by')!r}")
        return
    for name, array in response.outputs.items():
        if array.shape[0] != rows:
            series.fail(f"{name}: shape {array.shape}")
            return
        if expected is not None:
            diff = float(np.max(np.abs(array - expected[name])))
            series.max_abs_diff = max(series.max_abs_diff, diff)
            if diff > ATOL:
                series.fail(f"{name}: differs from in-process by {diff:.2e}")
                return


@dataclass(frozen=True)
class Route:
    """One way to answer a request: ``kind`` inproc / inproc_paced / stream / unary, and the agent's port if any."""

    key: str
    kind: str
    port: int | None = None
    check: bool = True  # False for the floor server, whose zeros are no prediction


async def latency_blocks(paths: list[Route], model: Any, cases: list[dict[str, np.ndarray]],
                         plan: Plan) -> dict[str, Series]:
    """Rounds of one block per path over the same inputs, the order of the paths rotated each round."""
    import contextlib

    import grpc

    from fogline.inference import grpc_service_pb2_grpc as pb_grpc

    messages = _messages(model, cases)
    expected = [model.predict(case) for case in cases]
    series = {path.key: Series(path.key) for path in paths}
    n_block = plan.blocks[model.name]
    async with contextlib.AsyncExitStack() as stack:
        stubs: dict[int, Any] = {}
        for port in {p.port for p in paths if p.port is not None}:
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
            stubs[port] = pb_grpc.GRPCInferenceServiceStub(channel)
        streams = {p.key: stubs[p.port].ModelStreamInfer() for p in paths if p.kind == "stream"}

        async def one(path: Route, i: int, into: Series | None) -> None:
            k = i % len(cases)
            if path.kind in ("inproc", "inproc_paced"):
                if path.kind == "inproc_paced":
                    time.sleep(PACE_S)  # idle like a server between requests; the clock starts after
                t0 = time.perf_counter()
                model.predict(cases[k])
                t1 = time.perf_counter()
                if into is not None:
                    into.latencies_ms.append((t1 - t0) * 1e3)
                return
            t0 = time.perf_counter()
            try:
                if path.kind == "stream":
                    stream = streams[path.key]
                    await stream.write(messages[k])
                    reply = await stream.read()
                else:
                    reply = await stubs[path.port].ModelInfer(messages[k])
            except grpc.aio.AioRpcError as exc:
                if into is not None:
                    into.fail(f"{exc.code().name}: {exc.details()}")
                return
            t1 = time.perf_counter()
            if into is None:
                return
            if reply is grpc.aio.EOF:
                into.fail("the stream ended")
                return
            if path.kind == "stream":
                if reply.error_message:
                    into.fail(reply.error_message)
                    return
                reply = reply.infer_response
            into.latencies_ms.append((t1 - t0) * 1e3)
            if path.check:
                check_reply(into, reply, expected[k])

        for path in paths:  # warm every path (connections, caches) before anything counts
            for i in range(plan.warmup):
                await one(path, i, None)
        for r in range(plan.rounds):
            shift = r % len(paths)
            for path in paths[shift:] + paths[:shift]:
                for i in range(n_block):
                    await one(path, r * n_block + i, series[path.key])
        for stream in streams.values():
            await stream.done_writing()
            await stream.read()  # EOF: the agent ends the stream once every answer is out
    return series


async def throughput_agent(port: int, model: Any, cases: list[dict[str, np.ndarray]], mode: str,
                           concurrency: int, plan: Plan, label: str) -> Series:
    """``concurrency`` closed-loop clients on one channel: each its own stream (``stream``) or caller
    (``unary``), one request in flight each; answers completed inside the window count."""
    import grpc

    from fogline.inference import grpc_service_pb2_grpc as pb_grpc

    messages = _messages(model, cases)
    series = Series(label, seconds=plan.tput_s)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await channel.channel_ready()
        start = time.perf_counter()
        measure_from = start + plan.tput_warmup_s
        stop_at = measure_from + plan.tput_s

        async def client(k: int) -> None:
            stream = stub.ModelStreamInfer() if mode == "stream" else None
            i = k * 5
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    break
                msg = messages[i % len(messages)]
                i += 1
                try:
                    if stream is not None:
                        await stream.write(msg)
                        reply = await stream.read()
                    else:
                        reply = await stub.ModelInfer(msg)
                except grpc.aio.AioRpcError as exc:
                    series.fail(f"{exc.code().name}: {exc.details()}")
                    if stream is not None:
                        stream = stub.ModelStreamInfer()
                    continue
                t1 = time.perf_counter()
                if t0 < measure_from or t1 > stop_at:
                    continue
                if reply is grpc.aio.EOF:
                    series.fail("the stream ended")
                    stream = stub.ModelStreamInfer()
                    continue
                if stream is not None:
                    if reply.error_message:
                        series.fail(reply.error_message)
                        continue
                    reply = reply.infer_response
                series.latencies_ms.append((t1 - t0) * 1e3)
                check_reply(series, reply, None)
            if stream is not None:
                await stream.done_writing()
                await stream.read()

        await asyncio.gather(*(client(k) for k in range(concurrency)))
    return series


def throughput_in_process(model: Any, cases: list[dict[str, np.ndarray]], threads: int, plan: Plan) -> Series:
    """``threads`` threads calling ``predict`` back to back (the agent's executor has two)."""
    series = Series(f"in-process, {threads} thread{'s' if threads > 1 else ''}", seconds=plan.tput_s)
    lock = threading.Lock()
    start = time.perf_counter()
    measure_from = start + plan.tput_warmup_s
    stop_at = measure_from + plan.tput_s

    def loop(k: int) -> None:
        mine: list[float] = []
        i = k * 5
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            model.predict(cases[i % len(cases)])
            t1 = time.perf_counter()
            i += 1
            if t0 >= measure_from and t1 <= stop_at:
                mine.append((t1 - t0) * 1e3)
        with lock:
            series.latencies_ms.extend(mine)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(loop, range(threads)))
    return series


class Sampler:
    """Samples the machine (load average, CPU busy) and the agents' and this process's CPU, twice a second."""

    def __init__(self, agent_pids: list[int], interval_s: float = 0.5) -> None:
        import psutil

        self._psutil = psutil
        self._agents = [psutil.Process(pid) for pid in agent_pids]
        self._me = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.samples: list[tuple[float, float, float, float]] = []  # load1, machine %, agents %, client %
        self.load_start = os.getloadavg()

    def start(self) -> None:
        self._psutil.cpu_percent(None)
        for proc in (*self._agents, self._me):
            proc.cpu_percent(None)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            agents = 0.0
            for proc in self._agents:
                try:
                    agents += proc.cpu_percent(None)
                except self._psutil.Error:
                    pass
            self.samples.append((os.getloadavg()[0], self._psutil.cpu_percent(None), agents,
                                 self._me.cpu_percent(None)))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(2)
        cols = np.array(self.samples, dtype=float).reshape(-1, 4)

        def stat(col: int, fn: Any) -> float:
            return float(fn(cols[:, col])) if len(cols) else float("nan")

        return {
            "cores": os.cpu_count(),
            "load1_start": self.load_start[0],
            "load1_mean": stat(0, np.mean),
            "load1_max": stat(0, np.max),
            "load1_end": os.getloadavg()[0],
            "machine_cpu_mean_pct": stat(1, np.mean),
            "agents_cpu_mean_pct": stat(2, np.mean),
            "client_cpu_mean_pct": stat(3, np.mean),
            "samples": len(cols),
        }
