"""One device floods the cloud past its in-flight limit; does a second device keep its latency?

A ``fogline cloud serve`` subprocess runs with a tokens file (two devices, ``flooder`` and ``victim``)
and ``--max-inflight-per-device`` (8 by default). The **flooder**, a process of its own so that its
work never shares an event loop with the measuring client, keeps ``--flood-inflight`` requests (64)
outstanding on one ``ModelStreamInfer`` stream with its own token: every answer, served or refused
with RESOURCE_EXHAUSTED, is replaced by a new request at once. The **victim**, in this process, sends
closed-loop requests (``--victim-concurrency`` streams, one request in flight each) with its token.

Each round measures the victim twice, flooder off ("unloaded") and flooder on ("loaded"), in an order
that alternates from round to round, so a burst of load elsewhere on the machine hits both. The gate
(issue 18): the victim's loaded p99 within 2x of its unloaded p99, both taken as the median over rounds.
Writes ``bench/results/flood.md`` (or ``flood-<model>.md`` for a model other than digits).

    python -m bench.flood [--model digits] [--rounds 7] [--seconds 4] [--limit 8] [--flood-inflight 64]
    python -m bench.flood --quick --out /tmp/flood.md     # seconds; what the quick test runs
    python -m bench.flood --cloud-cpus 4,6 --flooder-cpus 8-11 --victim-cpus 12-15   # each on its own cores

``--cloud-cpus``, ``--flooder-cpus`` and ``--victim-cpus`` pin the three parties to CPU sets of their
own (CPU lists as taskset takes them); unpinned, all three share the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GATE_RATIO = 2.0  # loaded p99 at most 2x unloaded p99
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


# ------------------------------------------------------------------------------------ pinning


def cpu_set(spec: str | None) -> set[int] | None:
    """``"4,6"`` / ``"8-11,14"`` (a taskset CPU list) as a set of CPU numbers; None when not given."""
    if not spec:
        return None
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def start_cloud(models: Path, device: str, flags: list[str], cpus: set[int] | None):
    """``fogline cloud serve`` as a child process, on ``cpus`` when given.

    The child inherits the affinity of the thread that starts it, so this thread takes ``cpus`` for
    the start and gives them back after: the server then sizes its compute pool to those cores.
    """
    from bench.cloud import ServerProcess

    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        return ServerProcess(models, device, grace_s=2, extra=tuple(flags))
    finally:
        if cpus:
            os.sched_setaffinity(0, before)


def placement(args: argparse.Namespace) -> str:
    """Where the cloud, the flooder and the victim ran, for the report."""
    if not (args.cloud_cpus or args.flooder_cpus or args.victim_cpus):
        cores = len(os.sched_getaffinity(0))
        return f"{cores} usable cores; a shared VM, other engineers' processes ran beside it"
    return (
        f"{os.cpu_count()} CPUs; pinned with taskset: cloud on CPUs {args.cloud_cpus or 'any'}, "
        f"flooder on {args.flooder_cpus or 'any'}, victim on {args.victim_cpus or 'any'}"
    )


# ------------------------------------------------------------------------------------ requests


def request_messages(model: str, count: int = 64, seed: int = 0) -> list[bytes]:
    """Serialized ``ModelInferRequest`` messages for ``model``, one row each."""
    from fogline import codec

    rng = np.random.default_rng(seed)
    if model == "digits":
        inputs = [{"image": rng.random((1, 8, 8), dtype=np.float32) * 16} for _ in range(count)]
    elif model == "minilm":
        from bench.cloud import sentences

        texts = sentences()
        inputs = [{"text": np.array([texts[i % len(texts)].encode()], dtype=object)} for i in range(count)]
    else:
        raise SystemExit(f"unknown model {model!r}: digits or minilm")
    return [codec.request_to_proto(codec.InferRequest(model, x)).SerializeToString() for x in inputs]


def open_channel(port: int):
    import grpc

    return grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def stream_opener(channel):
    from fogline.inference import grpc_service_pb2 as pb

    return channel.stream_stream(
        STREAM_METHOD, request_serializer=None, response_deserializer=pb.ModelStreamInferResponse.FromString
    )


# ------------------------------------------------------------------------------------ the flooder


async def flood_once(open_stream, token: str, messages: list[bytes], inflight: int, seconds: float) -> dict:
    """Keep ``inflight`` requests outstanding on one stream for ``seconds``; counts of what came back."""
    call = open_stream(metadata=(("authorization", f"Bearer {token}"),))
    counts = {"ok": 0, "exhausted": 0, "other": 0, "first_other": ""}
    sent = 0
    started = time.perf_counter()
    stop_at = started + seconds
    for _ in range(inflight):
        await call.write(messages[sent % len(messages)])
        sent += 1
    outstanding = inflight
    while outstanding:
        reply = await call.read()
        outstanding -= 1
        if not reply.error_message:
            counts["ok"] += 1
        elif reply.error_message.startswith("[RESOURCE_EXHAUSTED] "):
            counts["exhausted"] += 1
        else:
            counts["other"] += 1
            counts["first_other"] = counts["first_other"] or reply.error_message[:200]
        if time.perf_counter() < stop_at:
            await call.write(messages[sent % len(messages)])
            sent += 1
            outstanding += 1
    elapsed = time.perf_counter() - started
    await call.done_writing()
    counts["seconds"] = elapsed
    return counts


async def flooder_main(port: int, token: str, model: str, inflight: int) -> None:
    """Reads ``flood SECONDS`` / ``quit`` lines on stdin; prints one JSON line of counts per flood."""
    messages = request_messages(model, seed=1)
    async with open_channel(port) as channel:
        open_stream = stream_opener(channel)
        await flood_once(open_stream, token, messages, 1, 0.0)  # connect before the first real flood
        print("ready", flush=True)
        while True:
            line = (await asyncio.to_thread(sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                return
            counts = await flood_once(open_stream, token, messages, inflight, float(line[1]))
            print(json.dumps(counts), flush=True)


class Flooder:
    """The flooder subprocess, driven over its stdin/stdout."""

    @classmethod
    async def start(
        cls, port: int, token: str, model: str, inflight: int, cpus: str | None = None
    ) -> Flooder:
        self = cls()
        env = {**os.environ, "FOGLINE_FLOOD_TOKEN": token}  # not on the command line (ps would show it)
        self.proc = await asyncio.create_subprocess_exec(
            *(["taskset", "-c", cpus] if cpus else []),
            sys.executable, "-m", "bench.flood", "--flooder", str(port), "--model", model,
            "--flood-inflight", str(inflight),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"the flooder did not start: {line!r}")
        return self

    async def flood(self, seconds: float) -> None:
        self.proc.stdin.write(f"flood {seconds}\n".encode())
        await self.proc.stdin.drain()

    async def counts(self) -> dict:
        return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 120))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# ------------------------------------------------------------------------------------ the victim


async def closed_loop(open_stream, token: str, messages: list[bytes], concurrency: int, seconds: float):
    """``concurrency`` streams, one request in flight each; (latencies ms, errors, first error)."""
    metadata = (("authorization", f"Bearer {token}"),)
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        call = open_stream(metadata=metadata)
        i = k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await call.write(messages[i % len(messages)])
            reply = await call.read()
            i += concurrency
            if reply.error_message:
                errors.append(reply.error_message[:200])
            else:
                latencies.append((time.perf_counter() - t0) * 1e3)
        await call.done_writing()

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return latencies, errors


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    """The victim's figures in one condition (flooder off or on), one entry per round."""

    label: str
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    cloud_cpu: list[float] = field(default_factory=list)  # cloud process CPU, cores busy
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, latencies: list[float], errors: list[str], seconds: float, cpu: float) -> None:
        self.p50.append(float(np.percentile(latencies, 50)) if latencies else float("nan"))
        self.p99.append(float(np.percentile(latencies, 99)) if latencies else float("nan"))
        self.rates.append(len(latencies) / seconds)
        self.cloud_cpu.append(cpu)
        self.latencies += latencies
        self.errors += errors

    @staticmethod
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")


@dataclass
class Result:
    unloaded: Phase
    loaded: Phase
    floods: list[dict]

    @property
    def ratio(self) -> float:
        base = Phase.median(self.unloaded.p99)
        return Phase.median(self.loaded.p99) / base if base else float("nan")

    @property
    def passed(self) -> bool:
        return self.ratio <= GATE_RATIO


async def measure(args: argparse.Namespace) -> Result:
    from fogline.security import add_token

    unloaded, loaded = Phase("flooder off"), Phase("flooder on")
    floods: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tokens_file = Path(tmp) / "tokens"
        flood_token, victim_token = add_token(tokens_file, "flooder"), add_token(tokens_file, "victim")
        flags = ["--tokens-file", str(tokens_file), "--max-inflight-per-device", str(args.limit),
                 *shlex.split(args.cloud_args)]
        server = await asyncio.to_thread(
            start_cloud, args.models, args.device, flags, cpu_set(args.cloud_cpus)
        )
        flooder = None
        try:
            flooder = await Flooder.start(
                server.port, flood_token, args.model, args.flood_inflight, args.flooder_cpus
            )
            messages = request_messages(args.model)
            async with open_channel(server.port) as channel:
                open_stream = stream_opener(channel)
                # warm-up, not recorded: both devices' first calls, the model's first batches
                await flooder.flood(args.seconds / 2)
                await closed_loop(
                    open_stream, victim_token, messages, args.victim_concurrency, args.seconds / 2
                )
                await flooder.counts()
                for r in range(args.rounds):
                    order = ("off", "on") if r % 2 == 0 else ("on", "off")
                    for state in order:
                        if state == "on":  # the flood runs a little before and after the measured window
                            await flooder.flood(args.seconds + 2 * args.settle_s)
                            await asyncio.sleep(args.settle_s)
                        cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
                        latencies, errors = await closed_loop(
                            open_stream, victim_token, messages, args.victim_concurrency, args.seconds
                        )
                        elapsed = time.perf_counter() - t0
                        cpu = (cpu_seconds(server.proc.pid) - cpu0) / elapsed
                        (loaded if state == "on" else unloaded).add(latencies, errors, elapsed, cpu)
                        if state == "on":
                            floods.append(await flooder.counts())
                    f = floods[-1]
                    print(
                        f"round {r + 1}/{args.rounds}: victim p99 off {unloaded.p99[-1]:.2f} ms, "
                        f"on {loaded.p99[-1]:.2f} ms; flooder {f['ok'] / f['seconds']:.0f}/s served, "
                        f"{f['exhausted'] / f['seconds']:.0f}/s RESOURCE_EXHAUSTED",
                        flush=True,
                    )
        finally:
            if flooder is not None:
                await flooder.stop()
            await asyncio.to_thread(server.stop)
    return Result(unloaded, loaded, floods)


# ------------------------------------------------------------------------------------ report


def write_report(out: Path, args: argparse.Namespace, result: Result, command: str) -> str:
    un, lo = result.unloaded, result.loaded
    med = Phase.median
    served = [f["ok"] / f["seconds"] for f in result.floods]
    refused = [f["exhausted"] / f["seconds"] for f in result.floods]
    other = sum(f["other"] for f in result.floods)
    exhausted = sum(f["exhausted"] for f in result.floods)
    first_other = next((f["first_other"] for f in result.floods if f["first_other"]), "")
    verdict = "PASS" if result.passed else "FAIL"
    lines = [
        f"# One device floods the cloud: the other device's latency ({args.model})",
        "",
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()} "
        f"({platform.processor() or platform.machine()}, {placement(args)}), device {args.device}.",
        "",
        f"Cloud: `fogline cloud serve --tokens-file ... --max-inflight-per-device {args.limit}"
        f"{' ' + args.cloud_args if args.cloud_args else ''}` (other settings default). Flooder: its own process and token, {args.flood_inflight} requests kept in flight on one "
        "ModelStreamInfer stream, each answer (served or RESOURCE_EXHAUSTED) replaced at once. Victim: its own "
        f"token, {args.victim_concurrency} stream(s), one request in flight each (closed loop). {args.rounds} "
        f"rounds of {args.seconds:g} s per condition, flooder off / on interleaved (order alternating); the "
        "figures are medians over rounds of each round's percentile.",
        "",
        "| victim | p50 ms | p99 ms | req/s | cloud CPU (cores) | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for phase in (un, lo):
        lines.append(
            f"| {phase.label} | {med(phase.p50):.2f} | {med(phase.p99):.2f} | {med(phase.rates):.0f} | "
            f"{med(phase.cloud_cpu):.2f} | {len(phase.errors)} |"
        )
    lines += [
        "",
        f"- Flooder (median over rounds): **{med(served):.0f} req/s served**, **{med(refused):.0f} req/s "
        f"RESOURCE_EXHAUSTED**; {exhausted} RESOURCE_EXHAUSTED in all, {other} other errors"
        + (f" (first: `{first_other}`)" if first_other else "")
        + ".",
        f"- Gate: victim p99 loaded / unloaded = {med(lo.p99):.2f} / {med(un.p99):.2f} ms = "
        f"**{result.ratio:.2f}x** (goal <= {GATE_RATIO:g}x): **{verdict}**",
        f"- Per round, victim p99 off: {', '.join(f'{x:.1f}' for x in un.p99)} ms; "
        f"on: {', '.join(f'{x:.1f}' for x in lo.p99)} ms",
        f"- Per round, victim p50 off: {', '.join(f'{x:.2f}' for x in un.p50)} ms; "
        f"on: {', '.join(f'{x:.2f}' for x in lo.p50)} ms",
        "",
    ]
    if un.errors or lo.errors:
        lines.insert(-1, f"- Victim errors (first): `{(un.errors or lo.errors)[0]}`")
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path(".cache/test-models"))
    parser.add_argument("--model", default="digits", choices=["digits", "minilm"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="victim measurement per condition and round"
    )
    parser.add_argument("--settle-s", type=float, default=0.5, help="flood before the window opens")
    parser.add_argument("--limit", type=int, default=8, help="the cloud's --max-inflight-per-device")
    parser.add_argument("--flood-inflight", type=int, default=64)
    parser.add_argument("--victim-concurrency", type=int, default=2)
    parser.add_argument("--cloud-args", default="", metavar="ARGS",
                        help="more 'fogline cloud serve' options, e.g. '--compute-workers 1'")
    parser.add_argument("--cloud-cpus", help="taskset CPU list for the cloud server, e.g. 4,6")
    parser.add_argument("--flooder-cpus", help="taskset CPU list for the flooder process, e.g. 8-11")
    parser.add_argument("--victim-cpus", help="CPU list for the victim (this process), e.g. 12-15")
    parser.add_argument("--quick", action="store_true", help="1 round of 1.5 s, limit 4: the quick test")
    parser.add_argument(
        "--out", type=Path, help="default bench/results/flood.md (flood-minilm.md for minilm)"
    )
    parser.add_argument("--flooder", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the child process
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Apply ``--quick`` and the default ``--out`` to parsed arguments."""
    if args.quick:
        args.rounds, args.seconds, args.settle_s, args.limit, args.flood_inflight = 1, 1.5, 0.3, 4, 16
    if args.out is None:
        args.out = Path("bench/results") / (
            "flood.md" if args.model == "digits" else f"flood-{args.model}.md"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.flooder is not None:
        asyncio.run(
            flooder_main(args.flooder, os.environ["FOGLINE_FLOOD_TOKEN"], args.model, args.flood_inflight)
        )
        return 0
    resolve(args)
    victim = cpu_set(args.victim_cpus)
    if victim:  # before any thread starts: the event loop's helpers and gRPC's threads inherit it
        os.sched_setaffinity(0, victim)
    result = asyncio.run(measure(args))
    command = "python -m bench.flood " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_report(args.out, args, result, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
