"""The routing benchmark: fogline's routing policies against each other and an oracle, under network faults.

    python -m bench.routing                 # every scenario x every policy -> bench/results/routing.md
    python -m bench.routing --quick         # two short scenarios, two policies (the test suite's smoke run)
    fogline bench routing --scenarios outage,flapping --policies latency_aware,cloud_only

What one run does:

1. builds the reference models if they are missing and loads the workload (sentences, held-out digits)
   with the full model's answers as the quality reference (``routing_workload``);
2. starts the cloud (``fogline cloud serve``) once, as a subprocess;
3. calibrates: one agent behind a clean proxy gets the benchmark's load pinned to ``route=cloud``,
   then to ``route=edge``; the median latencies per model are the oracle's service times
   (``routing_oracle``);
4. for every scenario and policy: a fresh proxy (``python -m fogline.netproxy.proxy --timeline``, seeded per
   scenario: the link's delay is the same deterministic function of time in every policy's run) in
   front of the cloud, a fresh agent (``fogline agent run``) whose fleet file sets the policy, a short
   warm-up under the first phase's conditions, then the scenario's seeded Poisson schedule (the same
   one for every policy) while the scenario's timeline is played on the proxy's control port (the
   proxy reports when it applied each change; the oracle rebuilds the link's D(t) from those times);
5. scores every run (``routing_metrics``), computes the oracle per request, and writes the report
   and plots (``routing_report``).

A policy the agent refuses at start (a configuration error, exit code 2) is skipped and the report
says so. Exit code: 0 when every run finished (gates are reported, not enforced), 1 when a run could
not be carried out, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import routing_procs as procs
from bench.routing_driver import Outcome, replay
from bench.routing_oracle import OracleChoice, ServiceTimes, link_timeline, median, oracle_choices
from bench.routing_scenarios import SCENARIO_DIR, Phase, Scenario, ScenarioError, load_scenarios
from bench.routing_workload import Arrival, Workload, load_workload, poisson_schedule, scenario_seed
from fogline.netproxy.timeline import LinkTimeline

POLICIES = ("edge_only", "cloud_only", "latency_aware", "hedged", "cascade")
QUICK_POLICIES = ("latency_aware", "cloud_only")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class BenchConfig:
    models_dir: Path
    scenarios: tuple[Scenario, ...]
    policies: tuple[str, ...] = POLICIES
    rate_hz: float = 20.0
    streams: int = 4
    minilm_share: float = 0.5
    slo_ms: float = 100.0
    seed: int = 7
    warmup_s: float = 2.0
    calibrate_s: float = 4.0
    drain_s: float = 8.0
    out_dir: Path = RESULTS_DIR
    quick: bool = False

    def slo_for(self, scenario: Scenario) -> float:
        return scenario.slo_ms if scenario.slo_ms is not None else self.slo_ms


@dataclass
class PolicyRun:
    policy: str
    outcomes: list[Outcome]
    timeline: list[Phase]  # conditions as applied, with measured times (s from the schedule's start)
    wall_s: float
    #: The host's 1-minute load average after the run (other work on the machine shows up in tails).
    load_1m: float = 0.0
    #: Every change the proxy applied, at the times it reported (s from the schedule's start; the
    #: warm-up's phase starts before 0, the first phase is re-applied at the start so its jitter slots
    #: count from there in every run), and the proxy's seed: together the link's exact D(t).
    link: list[Phase] = field(default_factory=list)
    link_seed: int = 0

    def link_timeline(self) -> LinkTimeline:
        return link_timeline(self.link or self.timeline, self.link_seed)


@dataclass
class ScenarioResult:
    scenario: Scenario
    slo_ms: float
    arrivals: tuple[Arrival, ...]
    runs: dict[str, PolicyRun] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # policy -> why
    oracle: list[OracleChoice] = field(default_factory=list)


@dataclass
class BenchResult:
    config: BenchConfig
    service: ServiceTimes
    workload_note: str
    scenarios: list[ScenarioResult]
    wall_s: float
    #: Which code ran: the commit, and whether the measured parts changed on disk during the run.
    code_note: str = ""

    def problems(self) -> list[str]:
        """Every run with errors or lost requests, one line each (empty: the zero-loss property holds)."""
        out = []
        for sr in self.scenarios:
            for policy, run in sr.runs.items():
                lost = sum(o.status == "lost" for o in run.outcomes)
                errors = [o for o in run.outcomes if o.status == "error"]
                if lost or errors:
                    example = f" (e.g. {errors[0].error})" if errors else ""
                    out.append(f"{sr.scenario.name}/{policy}: {lost} lost, {len(errors)} errors{example}")
        return out


def _log(message: str) -> None:
    print(f"[routing {time.strftime('%H:%M:%S')}] {message}", flush=True)


class _Session:
    """The long-lived parts of a benchmark: the cloud process, the workload, a temp folder."""

    def __init__(self, config: BenchConfig, workload: Workload, cloud_port: int, tmp: Path) -> None:
        self.config, self.workload, self.cloud_port, self.tmp = config, workload, cloud_port, tmp

    async def run_policy(self, scenario: Scenario, policy: str, arrivals: Sequence[Arrival], *,
                         route: str = "auto", slo_ms: float) -> PolicyRun:
        """One policy through one scenario: fresh proxy and agent, warm-up, the measured schedule."""
        cfg = self.config
        seed = scenario_seed(cfg.seed, scenario.name)
        proxy, proxy_port, control_port = procs.start_proxy(self.cloud_port, seed=seed)
        control = procs.ProxyControl(control_port)
        agent = None
        try:
            first = scenario.phases[0].conditions
            warm_reply = await control.command(procs.conditions_command(first))
            fleet = procs.write_fleet(self.tmp, policy, cloud_port=proxy_port, slo_ms=slo_ms)
            agent, agent_port = procs.start_agent(fleet, cloud_port=proxy_port, models_dir=cfg.models_dir)
            address = f"127.0.0.1:{agent_port}"
            warm = poisson_schedule(cfg.warmup_s, cfg.rate_hz, streams=cfg.streams,
                                    item_counts=self.workload.item_counts, minilm_share=cfg.minilm_share,
                                    seed=seed + 1)
            await replay(address, self.workload, warm, streams=cfg.streams, route=route, drain_s=cfg.drain_s)
            applied: list[Phase] = [Phase(0.0, first)]
            link: list[Phase] = []
            player: list[asyncio.Task] = []

            async def play(t0: float) -> None:
                # The proxy reports time.monotonic(); the schedule counts from perf_counter().
                origin = t0 + (time.monotonic() - time.perf_counter())
                link.append(Phase(warm_reply["applied_at"] - origin, first))
                reply = await control.command(procs.conditions_command(first))
                link.append(Phase(reply["applied_at"] - origin, first))
                for phase in scenario.phases[1:]:
                    await asyncio.sleep(max(0.0, t0 + phase.at_s - time.perf_counter()))
                    reply = await control.command(procs.conditions_command(phase.conditions))
                    at = reply["applied_at"] - origin
                    applied.append(Phase(at, phase.conditions))
                    link.append(Phase(at, phase.conditions))

            def on_start(t0: float) -> None:
                player.append(asyncio.create_task(play(t0)))

            started = time.perf_counter()
            outcomes = await replay(address, self.workload, arrivals, streams=cfg.streams, route=route,
                                    drain_s=cfg.drain_s, on_start=on_start)
            for task in player:
                if not task.done():
                    task.cancel()
                elif task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            return PolicyRun(policy, outcomes, applied, time.perf_counter() - started, os.getloadavg()[0],
                             link, seed)
        finally:
            await control.close()
            if agent is not None:
                agent.stop()
            proxy.stop()

    async def calibrate(self) -> ServiceTimes:
        """Median latency per model with every request pinned to each tier, over a clean link."""
        cfg = self.config
        clean = Scenario("calibration", "clean link", cfg.calibrate_s, (Phase(0.0, _clean()),))
        arrivals = poisson_schedule(cfg.calibrate_s, cfg.rate_hz, streams=cfg.streams,
                                    item_counts=self.workload.item_counts, minilm_share=cfg.minilm_share,
                                    seed=cfg.seed + 99)
        times: dict[str, dict[str, float]] = {"edge": {}, "cloud": {}}
        sizes: dict[str, dict[str, float]] = {"request": {}, "response": {}}
        for tier in ("cloud", "edge"):
            run = await self.run_policy(clean, "latency_aware", arrivals, route=tier, slo_ms=cfg.slo_ms)
            for model in ("minilm", "digits"):
                ok = [o for o in run.outcomes if o.model == model and o.status == "ok" and o.served_by == tier]
                if len(ok) < 3:
                    raise RuntimeError(f"calibration: only {len(ok)} {model} requests were served by the {tier} "
                                       f"when pinned to it; cannot measure its service time")
                times[tier][model] = median([o.latency_ms for o in ok])  # type: ignore[misc]
                if tier == "cloud":
                    sizes["request"][model] = median([o.request_bytes for o in ok])
                    sizes["response"][model] = median([o.response_bytes for o in ok])
        return ServiceTimes(times["edge"], times["cloud"], sizes["request"], sizes["response"])


def _clean():
    from fogline.netproxy.proxy import NetConditions

    return NetConditions()


async def _run(config: BenchConfig, workload: Workload, cloud_port: int, tmp: Path) -> tuple[ServiceTimes, list[ScenarioResult]]:
    session = _Session(config, workload, cloud_port, tmp)
    _log("calibrating service times (clean link, requests pinned to each tier)")
    service = await session.calibrate()
    _log("service times (ms): " + ", ".join(
        f"{m} edge {service.edge_ms[m]:.1f} / cloud {service.cloud_ms[m]:.1f}" for m in ("minilm", "digits")))
    results: list[ScenarioResult] = []
    skipped: dict[str, str] = {}
    for scenario in config.scenarios:
        slo = config.slo_for(scenario)
        arrivals = poisson_schedule(scenario.duration_s, config.rate_hz, streams=config.streams,
                                    item_counts=workload.item_counts, minilm_share=config.minilm_share,
                                    seed=scenario_seed(config.seed, scenario.name))
        result = ScenarioResult(scenario, slo, arrivals)
        for policy in config.policies:
            if policy in skipped:
                result.skipped[policy] = skipped[policy]
                continue
            _log(f"{scenario.name} / {policy}: {len(arrivals)} requests over {scenario.duration_s:g} s")
            try:
                run = await session.run_policy(scenario, policy, arrivals, slo_ms=slo)
            except procs.StartError as exc:
                if "code 2" not in str(exc):
                    raise
                skipped[policy] = result.skipped[policy] = f"the agent refused it at start: {exc}"
                _log(f"{policy} skipped: {exc}")
                continue
            result.runs[policy] = run
            ok = sum(o.status == "ok" for o in run.outcomes)
            cloud = sum(o.served_by == "cloud" for o in run.outcomes)
            _log(f"  answered {ok}/{len(arrivals)}, cloud {cloud}, load {run.load_1m:.1f}, "
                 f"errors {sum(o.status == 'error' for o in run.outcomes)}, "
                 f"lost {sum(o.status == 'lost' for o in run.outcomes)}")
        # The oracle sees the first policy's link (every run's D(t) is the same function of time
        # up to the few ms its switch times differ by) and that run's measured send times.
        reference = next(iter(result.runs.values()), None)
        if reference is not None:
            result.oracle = oracle_choices(arrivals, reference.link_timeline(), service, slo,
                                           sent_s=[o.t_s for o in reference.outcomes])
        else:
            result.oracle = oracle_choices(arrivals, list(scenario.phases), service, slo,
                                           seed=scenario_seed(config.seed, scenario.name))
        results.append(result)
    return service, results


def run_benchmark(config: BenchConfig, command: str | None = None) -> BenchResult:
    """Everything: models, cloud, calibration, scenarios, report. Returns the raw results."""
    from fogline.modelbuild.build import ensure_models

    started = time.perf_counter()
    code_before = code_state()
    _log(f"models in {config.models_dir} (building what is missing)")
    ensure_models(config.models_dir, progress=True)
    workload = load_workload(config.models_dir)
    _log(f"workload: {len(workload.sentences)} sentences, {workload.split_note}")
    cloud, cloud_port = procs.start_cloud(config.models_dir)
    try:
        with tempfile.TemporaryDirectory(prefix="fogline-bench-") as tmp:
            service, scenarios = asyncio.run(_run(config, workload, cloud_port, Path(tmp)))
    finally:
        cloud.stop()
    code_after = code_state()
    note = code_before if code_after == code_before else (
        f"{code_before}; CHANGED during the run, now {code_after}: later runs used newer code")
    result = BenchResult(config, service, workload.split_note, scenarios, time.perf_counter() - started, note)
    from bench.routing_report import write_report

    path = write_report(result, workload, command)
    _log(f"report written to {path} ({result.wall_s:.0f} s in all)")
    return result


def code_state() -> str:
    """The commit and a digest of the measured packages' files (agent, cloud, models, protocol)."""
    import hashlib
    import subprocess

    root = procs.REPO_ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        head = "unknown"
    digest = hashlib.sha256()
    for folder in ("src/fogline",):
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            try:
                digest.update(path.read_bytes())
            except OSError:  # removed while we looked: that is a change too
                digest.update(b"<gone>")
    return f"commit {head}, sources {digest.hexdigest()[:12]}"


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_config(args: argparse.Namespace) -> BenchConfig:
    from fogline.models.repository import default_models_dir

    models = Path(args.models) if args.models else Path(default_models_dir())
    names = _csv(args.scenarios) if args.scenarios else None
    scenarios = load_scenarios(args.scenario_dir, names)
    if args.quick and names is None:
        scenarios = [s for s in scenarios if s.quick]
    if args.quick:
        scenarios = [s.scaled(args.time_scale or 0.4) for s in scenarios]
    elif args.time_scale:
        scenarios = [s.scaled(args.time_scale) for s in scenarios]
    policies = tuple(_csv(args.policies)) if args.policies else (QUICK_POLICIES if args.quick else POLICIES)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; expected some of {', '.join(POLICIES)}")
    config = BenchConfig(models_dir=models, scenarios=tuple(scenarios), policies=policies,
                         rate_hz=args.rate, streams=args.streams, slo_ms=args.slo_ms, seed=args.seed,
                         out_dir=Path(args.out), quick=args.quick)
    if args.quick:
        config = replace(config, warmup_s=1.5, calibrate_s=2.5, drain_s=6.0)
    return config


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Routing policies vs an oracle under network faults.")
    parser.add_argument("--quick", action="store_true", help="short smoke run: quick scenarios, 2 policies")
    parser.add_argument("--scenarios", help="comma-separated scenario names (default: all)")
    parser.add_argument("--policies", help=f"comma-separated policies (default: {','.join(POLICIES)})")
    parser.add_argument("--models", help="model repository (default $FOGLINE_MODELS or ./models)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="where routing.md and the PNGs go")
    parser.add_argument("--scenario-dir", default=str(SCENARIO_DIR), help="folder of scenario YAML files")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (Poisson)")
    parser.add_argument("--streams", type=int, default=4, help="ModelStreamInfer streams sharing the load")
    parser.add_argument("--slo-ms", type=float, default=100.0, help="latency goal unless a scenario sets one")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--time-scale", type=float, default=None, help="multiply every scenario's times")
    parser.add_argument("--json", action="store_true", help="also print the summaries as JSON")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m bench.routing") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        config = build_config(args)
    except (ScenarioError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_benchmark(config, " ".join([prog, *(argv if argv is not None else sys.argv[1:])]))
    except (procs.StartError, RuntimeError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        from bench.routing_report import summaries_json

        print(json.dumps(summaries_json(result), indent=2))
    for line in result.problems():
        print(f"{prog}: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
