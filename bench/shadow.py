"""Live agreement benchmark: what shadowing 10% of the edge's answers costs, and what it measures.

    python -m bench.shadow              # about 2 minutes on a 2-core machine; writes bench/results/shadow.md
    python -m bench.shadow --quick      # about 40 seconds, a smoke run
    fogline bench shadow ...            # the same

One cloud (``fogline cloud serve``, its metrics endpoint on) and two agents (``fogline agent run``), each
in its own process, the agents pointed straight at the cloud (loopback, no network shaping): both
``policy: edge_only`` with the fleet defaults, one with ``routing.shadow.share: 0`` and one with
``--share`` (0.1). Everything else about them is the same.

Rounds of blocks, the two agents alternating (A, B, then B, A: machine noise and drift hit both alike):
a block sends one model's traffic to one agent, paced at ``--rate`` requests per second (one request
in flight, unary ``ModelInfer``), then waits until the agent has no shadow out, so each block's shadows
land in its own cloud counts. The traffic is real: scikit-learn's held-out digit images (split as the
models build splits them) and the sentences the minilm build keeps for its fidelity check, cycled.

Per block it records the client's latencies, the cloud's answered requests per model
(``nv_inference_request_success``) and the CPU time of the cloud and of the agent (psutil). The report:

1. **edge p50, 0% vs share**, per model: the median over rounds of each agent's p50, and the median of
   the per-round differences;
2. **cloud load**: requests/s the cloud answered while each agent ran, and the cloud's CPU (one core
   = 100%); the agent's CPU per request;
3. **agreement**, from the shadowing agent's status call (``fogline agent status --json``): the
   running and total figure per model, the rows compared, the shadows' outcomes, against the
   manifest's offline figure and gate.

Every answer of the shadowing agent is also checked against the other agent's answer to the same
input: shadowing must not change what a client gets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.routing_procs import _ADDRESS, Proc, cloud_answers, fleet_file, start_agent

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
MODELS = ("digits", "minilm")
#: Requests per second per model in a block (one in flight): a camera's frame rate, a kiosk's searches.
RATES = {"digits": 100.0, "minilm": 40.0}


@dataclass(frozen=True)
class Plan:
    rounds: int
    block_s: float
    warmup: int


FULL = Plan(rounds=5, block_s=4.0, warmup=30)
QUICK = Plan(rounds=2, block_s=1.0, warmup=10)


@dataclass
class Block:
    """One model's traffic to one agent for ``block_s`` seconds."""

    agent: str
    model: str
    round: int
    latencies_ms: list[float]
    seconds: float
    cloud_requests: dict[str, float]
    cloud_cpu_s: float
    agent_cpu_s: float


@dataclass
class Run:
    plan: Plan
    share: float
    rates: dict[str, float]
    blocks: list[Block] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers_checked: int = 0
    answers_differing: int = 0
    problems: list[str] = field(default_factory=list)
    started: str = ""
    wall_s: float = 0.0


# ------------------------------------------------------------------------------------ processes
class Cloud:
    """``fogline cloud serve`` with its metrics endpoint on a port it picked."""

    def __init__(self, models: Path) -> None:
        argv = [sys.executable, "-m", "fogline.cli", "cloud", "serve", "--listen", "127.0.0.1:0", "--models",
                str(models), "--device", "cpu", "--metrics-port", "0", "--torch-threads", "1"]
        self.proc, match = Proc.start("cloud", argv, rf"serving .* on {_ADDRESS}.*metrics port (\d+)", 180.0)
        self.port, self.metrics_port = int(match.group(2)), int(match.group(3))

    def answered(self) -> dict[str, float]:
        """Requests answered so far per model (``nv_inference_request_success``)."""
        answers = cloud_answers(self.metrics_port)
        return {model: answers.get(model, 0.0) for model in MODELS}


def write_fleet(directory: Path, share: float) -> Path:
    return fleet_file(directory / f"fleet-shadow-{share:g}.yaml", models=list(MODELS),
                      routing={"policy": "edge_only", "shadow": {"share": share}},
                      cloud={"endpoint": "127.0.0.1:1"})  # --cloud gives the real one


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# ------------------------------------------------------------------------------------ traffic
def traffic() -> dict[str, list[Any]]:
    """Protobuf requests (built once, before timing) of held-out digits and the minilm sentences."""
    from fogline import codec
    from fogline.modelbuild.fidelity import load_sentences
    from fogline.models.digits_net import DigitsConfig, load_digits_split

    images = load_digits_split(DigitsConfig()).test_x
    digits = [codec.request_to_proto(codec.InferRequest("digits", {"image": images[i: i + 1]}))
              for i in range(len(images))]
    minilm = []
    for sentence in load_sentences():
        text = np.empty(1, dtype=object)
        text[0] = sentence.encode("utf-8")
        minilm.append(codec.request_to_proto(codec.InferRequest("minilm", {"text": text})))
    return {"digits": digits, "minilm": minilm}


class Agent:
    """One agent process and a channel to it."""

    def __init__(self, label: str, share: float, fleet: Path, cloud_port: int, models: Path) -> None:
        self.label, self.share = label, share
        self.proc, self.port = start_agent(fleet, cloud_port=cloud_port, models_dir=models)
        self.channel: Any = None
        self.stub: Any = None

    async def open(self) -> None:
        import grpc

        from fogline.inference import grpc_service_pb2_grpc as pb_grpc

        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def status(self) -> dict[str, Any]:
        from fogline.agent import status

        return status.fetch(f"127.0.0.1:{self.port}")

    async def shadows_settled(self, timeout_s: float = 15.0) -> None:
        """Wait until no shadow is out (so a block's shadows are counted in its own block)."""
        end = time.monotonic() + timeout_s
        while (await asyncio.to_thread(self.status))["shadow"]["inflight"]:
            if time.monotonic() > end:
                raise RuntimeError(f"agent {self.label}: shadows still out after {timeout_s:g} s")
            await asyncio.sleep(0.01)


async def paced(agent: Agent, model: str, requests: list[Any], rate_hz: float, seconds: float,
                offset: int, run: Run, reference: dict[tuple[str, int], dict[str, np.ndarray]]) -> list[float]:
    """Requests at ``rate_hz`` for ``seconds`` (the next one at once when one ran late); latencies (ms)."""
    from fogline import codec

    latencies: list[float] = []
    start = time.perf_counter()
    k = 0
    while k / rate_hz < seconds:
        wait = start + k / rate_hz - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        item = (offset + k) % len(requests)
        began = time.perf_counter()
        reply = await agent.stub.ModelInfer(requests[item])
        latencies.append((time.perf_counter() - began) * 1000.0)
        answer = codec.response_from_proto(reply)
        if answer.parameters.get("served_by") != "edge":
            run.problems.append(f"{agent.label} {model}: served_by {answer.parameters.get('served_by')}")
        key = (model, item)
        if key not in reference:
            reference[key] = answer.outputs
        else:
            run.answers_checked += 1
            same = all(np.array_equal(answer.outputs[n], v) for n, v in reference[key].items())
            run.answers_differing += not same
        k += 1
    return latencies


async def measure(args: argparse.Namespace, plan: Plan, run: Run, cloud: Cloud, agents: list[Agent]) -> None:
    requests = traffic()
    reference: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for agent in agents:
        await agent.open()
        for model in MODELS:  # warm-up: sessions, channels, the cloud's first shadows
            await paced(agent, model, requests[model], RATES[model], plan.warmup / RATES[model], 0, run, reference)
        await agent.shadows_settled()
    offsets = dict.fromkeys(MODELS, 0)
    for r in range(plan.rounds):
        order = agents if r % 2 == 0 else agents[::-1]
        for model in MODELS:
            for agent in order:
                cloud_before, cloud_cpu, agent_cpu = cloud.answered(), cpu_seconds(cloud.proc.popen.pid), \
                    cpu_seconds(agent.proc.popen.pid)
                began = time.perf_counter()
                latencies = await paced(agent, model, requests[model], RATES[model], plan.block_s,
                                        offsets[model], run, reference)
                await agent.shadows_settled()
                seconds = time.perf_counter() - began
                after = cloud.answered()
                run.blocks.append(Block(agent.label, model, r, latencies, seconds,
                                        {m: after[m] - cloud_before[m] for m in MODELS},
                                        cpu_seconds(cloud.proc.popen.pid) - cloud_cpu,
                                        cpu_seconds(agent.proc.popen.pid) - agent_cpu))
            # both agents get the same items in a round; the next round moves on
            offsets[model] += int(RATES[model] * plan.block_s)
            print(f"  round {r + 1}/{plan.rounds} {model}: " + ", ".join(
                f"{b.agent} p50 {statistics.median(b.latencies_ms):.2f} ms" for b in run.blocks[-2:]), flush=True)
    run.status = await asyncio.to_thread(agents[-1].status)
    for agent in agents:
        await agent.channel.close()


def manifests(models: Path) -> dict[str, dict[str, Any]]:
    from fogline.models.repository import ModelRepository

    repo = ModelRepository(models)
    return {name: repo.manifest(name) for name in MODELS}


# ------------------------------------------------------------------------------------ main
def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 40 s instead of about 2 minutes")
    parser.add_argument("--share", type=float, default=0.1, help="the shadowing agent's routing.shadow.share")
    parser.add_argument("--rounds", type=int, help="rounds of blocks (default 5; --quick 2)")
    parser.add_argument("--block-s", type=float, help="seconds per block (default 4; --quick 1)")
    parser.add_argument("--models", type=Path, help="model repository (built if missing; default "
                        "$FOGLINE_TEST_MODELS or .cache/test-models)")
    parser.add_argument("--out", type=Path, default=RESULTS / "shadow.md", help="markdown report path")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m bench.shadow") -> int:
    from bench.shadow_report import write_markdown
    from fogline.modelbuild.build import ensure_models

    args = build_parser(prog).parse_args(argv)
    if not 0 < args.share <= 1:
        print(f"{prog}: --share must be in (0, 1], got {args.share}", file=sys.stderr)
        return 2
    base = QUICK if args.quick else FULL
    plan = Plan(args.rounds or base.rounds, args.block_s or base.block_s, base.warmup)
    models = args.models or Path(os.environ.get("FOGLINE_TEST_MODELS", REPO_ROOT / ".cache" / "test-models"))
    ensure_models(models)
    run = Run(plan, args.share, dict(RATES), manifests=manifests(models),
              started=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    began = time.monotonic()
    procs: list[Proc] = []
    try:
        with tempfile.TemporaryDirectory(prefix="fogline-bench-shadow-") as tmp:
            print("starting the cloud and two agents", flush=True)
            cloud = Cloud(models)
            procs.append(cloud.proc)
            agents = []
            for label, share in (("0%", 0.0), (f"{args.share * 100:g}%", args.share)):
                agent = Agent(label, share, write_fleet(Path(tmp), share), cloud.port, models)
                procs.append(agent.proc)
                agents.append(agent)
            asyncio.run(measure(args, plan, run, cloud, agents))
    finally:
        for proc in reversed(procs):
            proc.stop()
    run.wall_s = time.monotonic() - began
    command = " ".join(["python -m bench.shadow", *(argv if argv is not None else sys.argv[1:])])
    verdict = write_markdown(run, args.out, command)
    print(f"wrote {args.out} ({run.wall_s:.0f} s): {verdict}")
    return 0 if not run.problems and not run.answers_differing else 1


if __name__ == "__main__":
    sys.exit(main())
