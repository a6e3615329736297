"""Agent benchmark: what the edge agent adds on top of calling onnxruntime in-process.

    python -m bench.agent                 # full run (about 2 minutes), writes bench/results/agent.md
    python -m bench.agent --quick         # about 20 seconds, for tests and smoke checks
    fogline bench agent ...               # the same

What it measures, all in one run on one machine:

1. **Latency, side by side.** For each model (``digits``: the sharpest test, the model itself takes
   ~0.05 ms; ``minilm``: the realistic one) the same inputs go every way, in alternating blocks so
   machine noise hits all of them alike: ``EdgeModel.predict`` in this process (the agent's thread
   settings: one intra-op thread), and each agent over one ``ModelStreamInfer`` stream with one
   request in flight and over unary ``ModelInfer``. The agent's *added* latency is its percentile
   minus the in-process percentile of the same run.
   A third server, ``bench.agent_floor`` (the same ``grpc.aio`` + ``fogline.codec`` stack answering
   zeros, no model, no routing), measured alongside, says how much of that is Python gRPC itself.
2. **Throughput** at concurrency 1 and 8: a closed loop of ``c`` concurrent *streams*, each with one
   request in flight (like ``c`` local clients), and the same with ``c`` concurrent unary callers. As a
   reference, the in-process rate with one thread and with the agent's two executor threads.

Two agents run side by side by default: one with the fleet defaults (``batching.max_queue_delay_ms``
2 ms) and one with the batching delay at 0 (``--queue-delay-ms default 0``; the first one listed is
the one the gate is judged on). Each is ``fogline agent run`` in its own process, from a temporary
fleet file (policy ``edge_only``; every request also says ``route: edge``) with no cloud
(``--cloud ''``; ``--cloud-mode unreachable`` points it at a closed port instead, so its link keeps
reconnecting in the background). The client is fogline's generated stub plus ``fogline.codec``;
requests are converted to protobuf messages once, before timing (serializing them, a few microseconds,
stays timed); every answer is checked (no error, ``served_by=edge``, the in-process output) after its
clock stops. Agents and the in-process model load one private copy of the edge files, so a rebuild of
the repository during the run cannot make them differ.

Gate (issue 6): p50 added latency on the streaming edge route < 1 ms, for both models.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.agent_measure import (
    Plan,
    Route,
    Sampler,
    latency_blocks,
    make_cases,
    throughput_agent,
    throughput_in_process,
)
from bench.agent_report import (
    FLOOR_STREAM,
    FLOOR_UNARY,
    INPROC,
    INPROC_PACED,
    AgentSpec,
    Result,
    code_state,
    write_json,
    write_markdown,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
MODELS = ("digits", "minilm")
DEVICE_ID = "bench-agent"
FLOOR = "floor"  # the port of bench.agent_floor in the ports map

#: requests per block and rounds of blocks (one per path), per model; seconds per throughput row
FULL = Plan(blocks={"digits": 400, "minilm": 80}, rounds=6, warmup=40, tput_s=2.5, tput_warmup_s=0.5)
QUICK = Plan(blocks={"digits": 40, "minilm": 8}, rounds=2, warmup=5, tput_s=0.5, tput_warmup_s=0.2)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 20 s instead of about 2 minutes")
    parser.add_argument("--models", type=Path, help="model repository (built if missing; default $FOGLINE_TEST_MODELS or .cache/test-models)")
    parser.add_argument("--out", type=Path, default=RESULTS / "agent.md", help="markdown report path")
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON here")
    parser.add_argument("--cloud-mode", choices=["none", "unreachable"], default="none",
                        help="none: no cloud configured; unreachable: a cloud endpoint nobody listens on")
    parser.add_argument("--queue-delay-ms", nargs="+", default=["default", "0"], metavar="MS",
                        help="one agent per value: its batching.max_queue_delay_ms ('default': the fleet "
                             "default); the first is the one the gate is judged on (default: default 0)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="throughput levels")
    return parser


def agent_specs(values: list[str]) -> list[AgentSpec]:
    """``--queue-delay-ms`` values as agent specs; ``ValueError`` for anything else."""
    specs = []
    for value in values:
        if value == "default":
            specs.append(AgentSpec("defaults", None))
            continue
        delay = float(value)
        if delay < 0:
            raise ValueError(f"--queue-delay-ms values must be >= 0 or 'default', got {value!r}")
        specs.append(AgentSpec(f"delay {delay:g} ms", delay))
    if len({s.label for s in specs}) != len(specs):
        raise ValueError("--queue-delay-ms values must differ")
    return specs


def write_fleet(directory: Path, spec: AgentSpec) -> Path:
    """A one-device fleet file: both models, policy edge_only, quiet logs, no metrics endpoint."""
    from bench.routing_procs import fleet_file

    batching = {} if spec.queue_delay_ms is None else {"batching": {"max_queue_delay_ms": spec.queue_delay_ms}}
    return fleet_file(directory / f"fleet-{len(list(directory.iterdir()))}.yaml", models=list(MODELS),
                      routing={"policy": "edge_only"}, defaults=batching, device=DEVICE_ID)


def snapshot_models(models_dir: Path, into: Path) -> Path:
    """Copy what the edge needs (manifest, INT8 file, tokenizer) of each model's newest version into
    ``into``: the agents and the in-process model then load the same bytes even if someone rebuilds
    ``models_dir`` during the run."""
    import shutil

    from fogline.models.repository import ModelRepository, read_manifest

    repo = ModelRepository(models_dir)
    for name in MODELS:
        src = repo.resolve(name)
        dst = into / name / src.name
        dst.mkdir(parents=True)
        artifacts = read_manifest(src)["artifacts"]
        for rel in ["manifest.json", *(artifacts[k] for k in ("edge", "tokenizer") if k in artifacts)]:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst / rel)
    return into


def closed_port() -> int:
    """A loopback port nobody listens on (bound, read, released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_floor(models_dir: Path):
    """``bench.agent_floor`` (gRPC + codec, no model) as a child process; returns it and its port."""
    from bench.routing_procs import Proc

    argv = [sys.executable, "-m", "bench.agent_floor", "--models", str(models_dir)]
    proc, match = Proc.start("floor", argv, r"serving floor on [\d.]+:(\d+)", 60.0)
    return proc, int(match.group(1))


def start_agent(fleet: Path, models_dir: Path, cloud_mode: str):
    """``fogline agent run`` as a child process; returns it (``bench.routing_procs.Proc``) and its port."""
    from bench.routing_procs import Proc

    cloud = "" if cloud_mode == "none" else f"127.0.0.1:{closed_port()}"
    argv = [sys.executable, "-m", "fogline.cli", "agent", "run", "--config", str(fleet), "--device", DEVICE_ID,
            "--listen", "127.0.0.1:0", "--cloud", cloud, "--models", str(models_dir), "--grace-s", "5"]
    proc, match = Proc.start("agent", argv, r"serving .* on [\d.]+:(\d+)", 120.0)
    return proc, int(match.group(1))


async def measure(result: Result, ports: dict[str, int], plan: Plan, models_dir: Path) -> None:
    from fogline.models.edge_runtime import EdgeModel
    from fogline.models.repository import ModelRepository

    repo = ModelRepository(models_dir)
    routes = [Route(INPROC, "inproc"), Route(INPROC_PACED, "inproc_paced"), Route(FLOOR_STREAM, "stream", ports[FLOOR], check=False),
              Route(FLOOR_UNARY, "unary", ports[FLOOR], check=False)]
    for spec in result.agents:
        routes += [Route(result.key("stream", spec), "stream", ports[spec.label]),
                   Route(result.key("unary", spec), "unary", ports[spec.label])]
    for name in MODELS:
        # The same session settings as the agent's EdgePool: one intra-op thread.
        model = EdgeModel.load(repo.resolve(name), intra_op_threads=1)
        cases = make_cases(model, n=64 if name == "digits" else 48)
        print(f"{name}: latency, {plan.rounds} rounds of {plan.blocks[name]} requests per path", flush=True)
        lat = await latency_blocks(routes, model, cases, plan)
        result.latency[name] = lat
        for key, s in lat.items():
            print(f"  {key:<26} p50 {s.p(50):7.3f} ms  p99 {s.p(99):7.3f} ms  n={s.count} errors={s.errors}",
                  flush=True)
        print(f"{name}: throughput", flush=True)
        rows = [throughput_in_process(model, cases, threads, plan) for threads in (1, 2)]
        for spec in result.agents:
            for mode in ("stream", "unary"):
                for c in result.concurrency:
                    label = f"{result.key(mode, spec)}, c={c}"
                    rows.append(await throughput_agent(ports[spec.label], model, cases, mode, c, plan, label))
        for row in rows:
            print(f"  {row.label:<32} {row.rate:9.1f} req/s  p50 {row.p(50):7.3f} ms  errors={row.errors}",
                  flush=True)
        result.throughput[name] = rows
        del model


def run(result: Result, plan: Plan, models_dir: Path) -> Result:
    """Start the agents and the floor, measure, stop them (SIGTERM: the drain path), fill in ``result``."""
    with tempfile.TemporaryDirectory(prefix="fogline-bench-agent-") as tmp:
        models_dir = snapshot_models(models_dir, Path(tmp) / "models")
        fleets = Path(tmp) / "fleets"
        fleets.mkdir()
        procs = []
        try:
            ports = {}
            for spec in result.agents:
                proc, ports[spec.label] = start_agent(write_fleet(fleets, spec), models_dir, result.cloud_mode)
                procs.append(proc)
            floor, ports[FLOOR] = start_floor(models_dir)
            procs.append(floor)
            sampler = Sampler([p.popen.pid for p in procs])
            sampler.start()
            started = time.perf_counter()
            try:
                asyncio.run(measure(result, ports, plan, models_dir))
            finally:
                result.seconds = time.perf_counter() - started
                result.machine = sampler.stop()
        finally:
            exits = [(proc.name, proc.stop()) for proc in procs]
            result.agent_exits = [code for name, code in exits if name == "agent"]
    return result


def main(argv: list[str] | None = None, prog: str = "python -m bench.agent") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    try:
        specs = agent_specs(args.queue_delay_ms)
        if any(c < 1 for c in args.concurrency):
            raise ValueError("--concurrency values must be >= 1")
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    from fogline.modelbuild.build import ensure_models

    models_dir = args.models or Path(os.environ.get("FOGLINE_TEST_MODELS", REPO_ROOT / ".cache" / "test-models"))
    ensure_models(models_dir, names=list(MODELS))
    plan = QUICK if args.quick else FULL
    result = Result(command=" ".join([prog, *argv]), plan=plan, agents=specs, cloud_mode=args.cloud_mode,
                    concurrency=list(args.concurrency), code=code_state())
    try:
        run(result, plan, models_dir)
    except RuntimeError as exc:  # an agent did not start (StartError)
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    write_markdown(args.out, result)
    if args.json:
        write_json(args.json, result)
    first = result.agents[0]
    print(f"wrote {args.out}: streaming p50 added ({first.label}) "
          + ", ".join(f"{m} {result.added(m, result.key('stream', first), 50):+.3f} ms" for m in result.latency)
          + f" -> gate {'PASS' if result.gate() else 'FAIL'}; errors {result.errors()}")
    return 0 if result.errors() == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
