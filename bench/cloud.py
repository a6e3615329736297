"""Cloud-tier benchmark: ``minilm`` over streaming gRPC, batching on vs off, against the in-process ceiling.

    python -m bench.cloud                 # CPU; writes bench/results/cloud.md (+ .png)
    python -m bench.cloud --device cuda   # GPU; writes bench/results/cloud-gpu.md (+ .png)

What it measures, all in one run on one machine:

1. **In-process ceiling**: ``FullModel.predict`` called directly at batch sizes 1..64 on the same
   sentences by one caller using every core, and (CPU) by one caller per core side by side, each on
   one intra-op thread, at batch sizes 4..16 (how the server's compute pool runs a busy CPU, see
   ``fogline.cloud.compute_pool``); the best throughput of all rows is the ceiling, the batch-1 median is the
   latency floor.
2. **Served**: ``fogline cloud serve`` as a subprocess, twice (``--max-batch-size`` 8 on a CPU, 32 on a
   GPU, then ``1`` = batching off). A closed-loop client opens ``c`` streams (c = 1, 8, 32, like c devices each with one
   request in flight), each request one sentence, and records every request's latency.

Gates (issue 10): c=32 throughput >= 90% of the ceiling; c=1 p50 <= in-process batch-1 p50 + 2 ms.
The batch gain (batching on / off at c=32) is reported beside the in-process batch gain, its bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fogline.cloud.settings import usable_cores

RESULTS = Path(__file__).resolve().parent / "results"
CONCURRENCY = (1, 8, 32)
BATCH_SIZES = (1, 4, 8, 16, 32, 64)
#: Batch sizes measured with one caller per core side by side (CPU only), as the compute pool runs them.
SIDE_BY_SIDE_BATCHES = (4, 8, 16)


@dataclass
class Run:
    """One configuration, measured in several short rounds interleaved with the others."""

    label: str
    rates: list[float] = field(default_factory=list)  # requests (sentences) per second, one per round
    latencies_ms: list[float] = field(default_factory=list)
    batch_rows: list[int] = field(default_factory=list)
    errors: int = 0

    def add(
        self, requests: int, seconds: float, latencies: list[float], batches: list[int], errors: int = 0
    ) -> None:
        self.rates.append(requests / seconds if seconds else 0.0)
        self.latencies_ms += latencies
        self.batch_rows += batches
        self.errors += errors

    @property
    def throughput(self) -> float:
        """Median over the rounds."""
        return float(np.median(self.rates)) if self.rates else 0.0

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def mean_batch(self) -> float:
        return float(np.mean(self.batch_rows)) if self.batch_rows else float("nan")


class SentenceOrder:
    """Which sentence comes next: a fixed pseudo-random order shared by every caller.

    In-process batches and served requests both draw from it, so a served batch of 32 (gathered from
    32 streams) is made of the same kind of random sentences as an in-process batch of 32; a batch is
    padded to its longest sentence, so drawing them differently would make one side cheaper.
    """

    def __init__(self, count: int, seed: int = 0) -> None:
        self._order = np.random.default_rng(seed).permutation(np.tile(np.arange(count), 50))
        self._at = 0

    def take(self, n: int) -> list[int]:
        picked = [int(self._order[(self._at + i) % len(self._order)]) for i in range(n)]
        self._at += n
        return picked


ORDER: SentenceOrder | None = None


def order(count: int) -> SentenceOrder:
    global ORDER
    if ORDER is None:
        ORDER = SentenceOrder(count)
    return ORDER


def sentences() -> list[str]:
    from fogline.modelbuild.fidelity import load_sentences

    return load_sentences()


# ------------------------------------------------------------------------------------ in-process


class InProcess:
    """The full model called directly in this process, on the same sentences as the served runs."""

    def __init__(self, version_dir: Path, device: str, texts: list[str]) -> None:
        import torch

        from fogline.models.full_runtime import FullModel

        torch.set_num_threads(usable_cores())
        self.model = FullModel.load(version_dir, device=device)
        self.texts = texts
        for batch in BATCH_SIZES:  # warm-up
            for _ in range(2):
                self.model.predict({"text": self._next(batch)})

    def _next(self, size: int) -> np.ndarray:
        rows = [self.texts[i].encode() for i in order(len(self.texts)).take(size)]
        return np.array(rows, dtype=object)

    def _timed_calls(self, batch: int, seconds: float) -> list[float]:
        """Call ``predict`` on ``batch`` sentences back to back for ``seconds``; each call's ms."""
        latencies: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or not latencies:
            inputs = {"text": self._next(batch)}
            t0 = time.perf_counter()
            self.model.predict(inputs)
            latencies.append((time.perf_counter() - t0) * 1e3)
        return latencies

    def measure(self, batch: int, seconds: float) -> tuple[int, float, list[float], list[int]]:
        """One caller on every core: (sentences, seconds, latencies, batches)."""
        start = time.perf_counter()
        latencies = self._timed_calls(batch, seconds)
        return len(latencies) * batch, time.perf_counter() - start, latencies, [batch] * len(latencies)

    def measure_side_by_side(
        self, batch: int, seconds: float, callers: int
    ) -> tuple[int, float, list[float], list[int]]:
        """``callers`` threads side by side, each with one intra-op thread (torch's thread count is a
        per-thread setting): the way the server's compute pool runs a CPU under steady load
        (``fogline.cloud.compute_pool``)."""
        import torch

        def one_caller() -> list[float]:
            torch.set_num_threads(1)
            return self._timed_calls(batch, seconds)

        start = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            futures = [pool.submit(one_caller) for _ in range(callers)]
            latencies = [ms for f in futures for ms in f.result()]
        return len(latencies) * batch, time.perf_counter() - start, latencies, [batch] * len(latencies)


# ------------------------------------------------------------------------------------ served


class ServerProcess:
    """``fogline cloud serve`` in a subprocess; ``port`` is read from its start-up line."""

    def __init__(self, models: Path, device: str, max_batch_size: int | None = None,
                 compute_workers: int | None = None, *, grace_s: float = 5, extra: tuple[str, ...] = ()) -> None:
        args = [sys.executable, "-m", "fogline.cli", "cloud", "serve", "--listen", "127.0.0.1:0", "--models",
                str(models), "--device", device, "--metrics-port", "off", "--grace-s", f"{grace_s:g}", *extra]  # fmt: skip
        if max_batch_size is not None:
            args += ["--max-batch-size", str(max_batch_size)]
        if compute_workers is not None:
            args += ["--compute-workers", str(compute_workers)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.port = self._wait_for_port(timeout=180)
        self._drain = threading.Thread(target=self.proc.stdout.read, daemon=True)  # type: ignore[union-attr]
        self._drain.start()

    def _wait_for_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                if " serving " in line:
                    return int(line.split(" on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
        finally:
            timer.cancel()
        raise RuntimeError(
            f"the cloud server did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


async def closed_loop(
    port: int, concurrency: int, seconds: float, warmup: float, texts: list[str]
) -> tuple[int, float, list[float], list[int], int]:
    """``concurrency`` streams, each with one request in flight, for ``warmup + seconds``.

    Returns (answered requests, seconds, latencies in ms, batch rows per answer, errors).
    """
    import grpc

    from fogline import codec
    from fogline.inference import grpc_service_pb2 as pb

    # Serialized once: the client should spend as little of the shared CPU as it can.
    messages = [
        codec.request_to_proto(
            codec.InferRequest("minilm", {"text": np.array([t.encode()], dtype=object)})
        ).SerializeToString()
        for t in texts
    ]
    latencies: list[float] = []
    batches: list[int] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        open_stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=None,  # the messages are bytes already
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def client() -> None:
            nonlocal errors
            call = open_stream()
            sequence = order(len(messages))
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    break
                await call.write(messages[sequence.take(1)[0]])
                reply = await call.read()
                t1 = time.perf_counter()
                if t0 < measure_from or t1 > stop_at:
                    continue
                if reply.error_message:
                    errors += 1
                    continue
                latencies.append((t1 - t0) * 1e3)
                batches.append(reply.infer_response.parameters["batch_size"].int64_param)
            await call.done_writing()

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(latencies), seconds, latencies, batches, errors


def measure(
    models: Path,
    device: str,
    rounds: int,
    seconds: float,
    warmup: float,
    texts: list[str],
    max_batch: int = 32,
    compute_workers: int | None = None,
) -> dict:
    """Every configuration, ``rounds`` times, interleaved, so a burst of load elsewhere on the machine
    hits one round of each rather than all of one configuration."""
    from fogline.models.repository import ModelRepository

    runs: dict[tuple[str, int], Run] = {}
    callers = usable_cores() if device == "cpu" else 1
    for batch in BATCH_SIZES:
        runs["in", batch] = Run(f"in-process batch {batch}")
    for batch in SIDE_BY_SIDE_BATCHES if callers > 1 else ():
        runs["side", batch] = Run(f"in-process batch {batch}, {callers} callers x 1 thread")
    for mode in ("on", "off"):
        for c in CONCURRENCY:
            label = f"on (max batch {max_batch})" if mode == "on" else "off"
            runs[mode, c] = Run(f"gRPC stream, batching {label}, c={c}")
    servers = {"on": ServerProcess(models, device, max_batch, compute_workers)}
    try:
        servers["off"] = ServerProcess(models, device, 1, compute_workers)
        inproc = InProcess(ModelRepository(models).resolve("minilm"), device, texts)
        print("warm-up round (not recorded) ...", flush=True)
        for _ in texts:  # every sentence once, then batches of every size
            inproc.measure(1, 0)
        for batch in BATCH_SIZES:
            inproc.measure(batch, seconds / 4)
        if callers > 1:
            inproc.measure_side_by_side(8, seconds / 4, callers)
        for server in servers.values():
            for c in CONCURRENCY:
                asyncio.run(closed_loop(server.port, c, seconds / 2, 0, texts))
        for r in range(rounds):
            for batch in BATCH_SIZES:
                runs["in", batch].add(*inproc.measure(batch, seconds / 2))
            for key in [k for k in runs if k[0] == "side"]:
                runs[key].add(*inproc.measure_side_by_side(key[1], seconds / 2, callers))
            for mode, server in servers.items():
                for c in CONCURRENCY:
                    runs[mode, c].add(*asyncio.run(closed_loop(server.port, c, seconds, warmup, texts)))
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{run.label.replace('gRPC stream, ', '')} "
                  f"{run.rates[-1]:.0f}/s" for run in runs.values()), flush=True)  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    return runs


# ------------------------------------------------------------------------------------ report


def write_report(out: Path, device: str, rounds: int, seconds: float, runs: dict, note: str = "") -> None:
    inproc = [runs["in", b] for b in BATCH_SIZES] + [r for k, r in runs.items() if k[0] == "side"]
    on = [runs["on", c] for c in CONCURRENCY]
    off = [runs["off", c] for c in CONCURRENCY]
    ceiling = max(inproc, key=lambda r: r.throughput)
    single = max((runs["in", b] for b in BATCH_SIZES), key=lambda r: r.throughput)  # one caller, every core
    b1 = inproc[0]
    on_by_c = dict(zip(CONCURRENCY, on, strict=True))
    off_by_c = dict(zip(CONCURRENCY, off, strict=True))
    ratio_32 = _ratio(on_by_c[32].throughput, ceiling.throughput)
    c1_extra = on_by_c[1].p(50) - b1.p(50)
    gain = _ratio(on_by_c[32].throughput, off_by_c[32].throughput)
    inproc_gain = _ratio(ceiling.throughput, b1.throughput)
    ok = "PASS" if ratio_32 >= 0.9 and c1_extra <= 2.0 else "FAIL"
    cmd = " ".join(["python -m bench.cloud", *sys.argv[1:]])
    lines = [
        f"# Cloud tier benchmark ({device.upper()})",
        "",
        f"`{cmd}` — model `minilm` (FP32 torch), one sentence per request. One run of {rounds} rounds; each "
        f"round measures every row ({seconds:g} s served, {seconds / 2:g} s in-process), interleaved. "
        "Throughput: median over the rounds; latency percentiles: over all requests of the row.",
        f"Machine: {platform.machine()}, {usable_cores()} usable CPU cores (of {os.cpu_count()}), Python {platform.python_version()}, "
        f"torch {_torch_version()}, device {device}. Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        *([f"Note: {note}"] if note else []),
        "",
        "| configuration | throughput (sentences/s) | p50 ms | p99 ms | mean batch rows |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for run in [*inproc, *on, *off]:
        lines.append(
            f"| {run.label} | {run.throughput:.1f} | {run.p(50):.2f} | {run.p(99):.2f} | {run.mean_batch:.1f} |"
        )
    lines += [
        "",
        "## Gates",
        "",
        f"- In-process ceiling: **{ceiling.throughput:.1f}/s** ({ceiling.label}); batch-1: "
        f"{b1.throughput:.1f}/s, p50 {b1.p(50):.2f} ms.",
        f"- c=32 served throughput / ceiling: **{ratio_32:.1%}** (gate >= 90%: {'pass' if ratio_32 >= 0.9 else 'FAIL'}).",
        f"- For reference, c=32 served / the best single-caller row ({single.label}, {single.throughput:.1f}/s): "
        f"{_ratio(on_by_c[32].throughput, single.throughput):.1%}. The gate takes the best in-process row of all, "
        "side-by-side callers included, since that is how the server's compute pool runs a busy CPU.",
        f"- c=1 p50 over in-process batch-1 p50: **{c1_extra:+.2f} ms** (gate <= +2 ms: "
        f"{'pass' if c1_extra <= 2.0 else 'FAIL'}).",
        f"- Batching gain at c=32 (on / off): **{gain:.2f}x**; in-process batch gain (ceiling / batch 1), "
        f"its bound: {inproc_gain:.2f}x.",
        f"- Errors: {sum(r.errors for r in [*on, *off])}. Overall: **{ok}**.",
        "",
        "Served latency is client-measured (write to read on the stream) and includes gRPC, the event loop,",
        "the queue and the model. The client shares the machine with the server.",
        "",
        f"![throughput]({out.with_suffix('.png').name})",
        "",
    ]
    save_report(out, lines)
    _plot(out.with_suffix(".png"), ceiling, on, off)
    print(
        f"wrote {out}: c=32 {ratio_32:.1%} of ceiling, c=1 p50 {c1_extra:+.2f} ms, gain {gain:.2f}x -> {ok}"
    )


def save_report(out: Path, lines: list[str]) -> str:
    """Write a report's markdown ``lines`` to ``out`` (its folder made if need be); returns the text."""
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _torch_version() -> str:
    import torch

    return torch.__version__


def _plot(path: Path, ceiling: Run, on: list[Run], off: list[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(CONCURRENCY))
    ax.bar(x - 0.2, [r.throughput for r in on], 0.4, label="batching on")
    ax.bar(x + 0.2, [r.throughput for r in off], 0.4, label="batching off")
    ax.axhline(
        ceiling.throughput, color="black", linestyle="--", label=f"in-process ceiling ({ceiling.label})"
    )
    ax.set_xticks(x, [f"c={c}" for c in CONCURRENCY])
    ax.set_ylabel("sentences / s")
    ax.set_title("minilm served over streaming gRPC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cloud", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", type=Path, help="model repository (built if missing; default ./models)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds over all rows (default 4)")
    parser.add_argument(
        "--seconds", type=float, default=2.5, help="measured seconds per served row and round"
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each served row")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        help="the batching server's max batch size (default: 8 on cpu, the best in-process batch size "
        "measured on 2 cores with this sentence mix; 32 on cuda)",
    )
    parser.add_argument(
        "--compute-workers", type=int, help="passed to both servers (default: the server's, one per core on cpu)"
    )
    parser.add_argument("--note", default="", help="a line of provenance to add to the report")
    parser.add_argument("--out", type=Path, help="report path (default bench/results/cloud[-gpu].md)")
    args = parser.parse_args(argv)

    from fogline.modelbuild.build import ensure_models
    from fogline.models.repository import ModelRepository, default_models_dir

    models = args.models or default_models_dir()
    if "minilm" not in ModelRepository(models).names():
        ensure_models(models, names=["minilm"], progress=True)
    out = args.out or RESULTS / ("cloud-gpu.md" if args.device == "cuda" else "cloud.md")
    max_batch = args.max_batch_size or (32 if args.device == "cuda" else 8)
    runs = measure(
        models, args.device, args.rounds, args.seconds, args.warmup, sentences(), max_batch, args.compute_workers
    )
    write_report(out, args.device, args.rounds, args.seconds, runs, note=args.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
