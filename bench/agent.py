"""Agent benchmark: what the edge agent adds on top of calling onnxruntime in-process.

    python -m bench.agent                 # full run (about 2-3 minutes), writes bench/results/agent.md
    python -m bench.agent --quick         # a few seconds, for tests and smoke checks
    fogline bench agent ...               # the same

What it measures, all in one run on one machine:

1. **Latency, side by side.** For each model (``digits``: the sharpest test, the model itself takes
   ~0.05 ms; ``minilm``: the realistic one) the same inputs go three ways, in alternating blocks so
   machine noise hits all three alike: ``EdgeModel.predict`` in this process (the same thread settings
   as the agent: one intra-op thread), the agent over one ``ModelStreamInfer`` stream with one request
   in flight, and the agent over unary ``ModelInfer``. The agent's *added* latency is its percentile
   minus the in-process percentile.
2. **Throughput** at concurrency 1 and 8: a closed loop of ``c`` concurrent *streams*, each with one
   request in flight (like ``c`` local clients), and the same with ``c`` concurrent unary callers. As a
   reference, the in-process rate with one thread and with the agent's two executor threads.

The agent is ``fogline agent run`` in its own process, started from a temporary fleet file (policy
``edge_only``, and every request also says ``route: edge``) with no cloud (``--cloud ''``; with
``--cloud-mode unreachable`` it points at a closed port instead and keeps reconnecting in the
background). The client is fogline's generated stub plus ``fogline.codec``; requests are converted to
protobuf messages once, before timing (their serialization, a few microseconds, stays in the timed
path); every answer is checked (no error, ``served_by=edge``, the in-process output) outside the timing.

Gate (issue 6): p50 added latency on the streaming edge route < 1 ms, for both models.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench.agent_measure import (
    MODES,
    Plan,
    Sampler,
    latency_blocks,
    make_cases,
    throughput_agent,
    throughput_in_process,
)
from bench.agent_report import Result, write_json, write_markdown

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("digits", "minilm")
DEVICE_ID = "bench-agent"

#: requests per block and rounds of (in-process, stream, unary) blocks, per model; seconds per throughput row
FULL = Plan(blocks={"digits": 500, "minilm": 120}, rounds=6, warmup=40, tput_s=3.0, tput_warmup_s=0.5)
QUICK = Plan(blocks={"digits": 60, "minilm": 12}, rounds=2, warmup=5, tput_s=0.6, tput_warmup_s=0.2)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of a few minutes")
    parser.add_argument("--models", type=Path, help="model repository (built if missing; default .cache/test-models)")
    parser.add_argument("--out", type=Path, default=RESULTS / "agent.md", help="markdown report path")
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON here")
    parser.add_argument("--cloud-mode", choices=["none", "unreachable"], default="none",
                        help="none: no cloud configured; unreachable: a cloud endpoint nobody listens on")
    parser.add_argument("--queue-delay-ms", type=float,
                        help="the device's batching.max_queue_delay_ms (default: the fleet default)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="throughput levels")
    return parser


def write_fleet(directory: Path, queue_delay_ms: float | None) -> Path:
    """A one-device fleet file: both models, policy edge_only, quiet logs, no metrics endpoint."""
    import yaml

    defaults: dict = {
        "listen": "127.0.0.1:0",
        "models": list(MODELS),
        "routing": {"policy": "edge_only"},
        "logging": {"level": "WARNING", "format": "text"},
        "metrics": {"port": 0},
    }
    if queue_delay_ms is not None:
        defaults["batching"] = {"max_queue_delay_ms": queue_delay_ms}
    fleet = {"version": 1, "defaults": defaults, "devices": {DEVICE_ID: {}}}
    path = directory / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False), encoding="utf-8")
    return path


def closed_port() -> int:
    """A loopback port nobody listens on (bound, read, released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_agent(fleet: Path, models_dir: Path, cloud_mode: str):
    from bench.routing_procs import Proc, StartError

    cloud = "" if cloud_mode == "none" else f"127.0.0.1:{closed_port()}"
    argv = [sys.executable, "-m", "fogline.cli", "agent", "run", "--config", str(fleet), "--device", DEVICE_ID,
            "--listen", "127.0.0.1:0", "--cloud", cloud, "--models", str(models_dir), "--grace-s", "5"]
    proc = Proc("agent", argv)
    try:
        match = proc.wait_for(r"serving .* on [\d.]+:(\d+)", 120.0)
    except StartError:
        proc.stop()
        raise
    return proc, int(match.group(1))


async def run(args: argparse.Namespace, plan: Plan, models_dir: Path) -> Result:
    from edge_models.edge_runtime import EdgeModel
    from edge_models.repository import ModelRepository

    repo = ModelRepository(models_dir)
    result = Result(command=args.command, plan=plan, cloud_mode=args.cloud_mode,
                    queue_delay_ms=args.queue_delay_ms, concurrency=list(args.concurrency))
    with tempfile.TemporaryDirectory(prefix="fogline-bench-agent-") as tmp:
        fleet = write_fleet(Path(tmp), args.queue_delay_ms)
        proc, port = start_agent(fleet, models_dir, args.cloud_mode)
        sampler = Sampler(proc.popen.pid)
        sampler.start()
        try:
            started = time.perf_counter()
            for name in MODELS:
                # The same thread settings as the agent's EdgePool: one intra-op thread per session.
                model = EdgeModel.load(repo.resolve(name), intra_op_threads=1)
                cases = make_cases(model, n=64 if name == "digits" else 48)
                print(f"{name}: latency, {plan.rounds} rounds of {plan.blocks[name]} requests per path", flush=True)
                lat = await latency_blocks(port, model, cases, plan)
                result.latency[name] = lat
                for mode in MODES:
                    s = lat[mode]
                    print(f"  {mode:<10} p50 {s.p(50):7.3f} ms  p99 {s.p(99):7.3f} ms  n={s.count} "
                          f"errors={s.errors}", flush=True)
                print(f"{name}: throughput", flush=True)
                rows = [throughput_in_process(model, cases, threads, plan) for threads in (1, 2)]
                for mode in ("stream", "unary"):
                    for c in args.concurrency:
                        rows.append(await throughput_agent(port, model, cases, mode, c, plan))
                for row in rows:
                    print(f"  {row.label:<28} {row.rate:9.1f} req/s  p50 {row.p(50):7.3f} ms  "
                          f"errors={row.errors}", flush=True)
                result.throughput[name] = rows
                del model
            result.seconds = time.perf_counter() - started
        finally:
            result.machine = sampler.stop()
            result.agent_exit = proc.stop()
    return result


def main(argv: list[str] | None = None, prog: str = "python -m bench.agent") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    args.command = " ".join([prog, *argv])
    if any(c < 1 for c in args.concurrency):
        print(f"{prog}: --concurrency values must be >= 1", file=sys.stderr)
        return 2
    from edge_models.build import ensure_models

    models_dir = args.models or Path(".cache/test-models")
    ensure_models(models_dir)
    plan = QUICK if args.quick else FULL
    try:
        result = asyncio.run(run(args, plan, models_dir))
    except RuntimeError as exc:  # the agent did not start (StartError), or the run broke
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    write_markdown(args.out, result)
    if args.json:
        write_json(args.json, result)
    gate = result.gate()
    print(f"wrote {args.out}: streaming p50 added "
          + ", ".join(f"{m} {result.added(m, 'stream', 50):+.3f} ms" for m in result.latency)
          + f" -> gate {'PASS' if gate else 'FAIL'}; errors {result.errors()}")
    return 0 if result.errors() == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
