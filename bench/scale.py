"""Scale-out: agents spread over 1, 2 and 4 cloud replicas; one replica killed, one added, under load.

    python -m bench.scale                    # the real run (a host with 16+ cores); bench/results/scale.md
    python -m bench.scale --quick --out /tmp/scale.md   # a tiny run (the test's): 1 and 2 replicas, digits

Every part is a process of its own, started by its CLI: ``fogline cloud serve`` replicas, ``fogline agent
run`` agents whose fleet file lists the replicas (``cloud.endpoint: ipv4:...``, policy ``cloud_only``)
and one closed-loop load generator per agent (``bench.scale_client``). Where the host has the cores,
each replica is pinned with ``taskset`` to ``--replica-cpus`` cores of its own, each agent and each
load generator to one core of its own (the report says whether the run was pinned).

1. scaling: for each replica count N, throughput (answers/s over the measured window), p50/p99 and the
   share each replica served (its own ``nv_inference_request_success``); efficiency =
   throughput(N) / (N x throughput(1)). The offered load: ``--concurrency`` callers per agent, the same
   for every N; or, with ``--callers-per-replica C``, N x C callers spread over the agents, so every
   replica sees the same requests in flight (and so batches alike) at every N. A batching server's
   throughput grows with the requests it has in flight, so only the second measures what adding
   replicas adds; with a fixed caller count one replica batches more than each of four.
2. kill: at the largest N, one replica gets SIGKILL a third into the window: requests lost (errors),
   answered by the edge, throughput before and after.
3. add: N-1 replicas listed, the N-th running but unlisted; a third into the window the fleet file is
   rewritten and every agent gets SIGHUP: seconds until the new replica answers its first request and
   until it serves its share (its rate over 1 s >= 80% of the others' mean).

Gates (issue 21): efficiency >= 0.85 at N = 4 on a 16-core host; 0 requests lost in the kill run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.routing_procs import Proc, cloud_answers, fleet_file

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEVICE = "bench-device"
_ADDRESS = r"(\d+\.\d+\.\d+\.\d+):(\d+)"


# ------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class Layout:
    """Which cores each process gets (None: not pinned)."""

    replicas: tuple[str | None, ...]
    agents: tuple[str | None, ...]
    clients: tuple[str | None, ...]

    @property
    def pinned(self) -> bool:
        return self.replicas[0] is not None if self.replicas else False


def plan_layout(cores: list[int], replicas: int, per_replica: int, agents: int) -> Layout:
    """Replicas first (``per_replica`` cores each), then one core per agent and per load generator;
    nothing pinned when the host has fewer cores than that."""
    need = replicas * per_replica + 2 * agents
    if len(cores) < need:
        return Layout((None,) * replicas, (None,) * agents, (None,) * agents)
    spans = [cores[i * per_replica:(i + 1) * per_replica] for i in range(replicas)]
    rest = cores[replicas * per_replica:]
    return Layout(tuple(",".join(map(str, s)) for s in spans), tuple(str(c) for c in rest[:agents]),
                  tuple(str(c) for c in rest[agents:2 * agents]))


def _taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


# ------------------------------------------------------------------------------------ processes
@dataclass
class Replica:
    proc: Proc
    port: int
    metrics_port: int

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def successes(self) -> float:
        """Requests this replica answered (``nv_inference_request_success``, every model); NaN once dead."""
        try:
            return sum(cloud_answers(self.metrics_port).values())
        except OSError:
            return float("nan")


def start_replicas(args: argparse.Namespace, cpus: list[str | None]) -> list[Replica]:
    """One ``fogline cloud serve`` per entry of ``cpus``, started side by side."""
    found: list[Replica | BaseException] = [RuntimeError("not started")] * len(cpus)

    def start(i: int) -> None:
        argv = [*_taskset(cpus[i]), sys.executable, "-m", "fogline.cli", "cloud", "serve", "--listen",
                "127.0.0.1:0", "--models", str(args.models), "--device", "cpu", "--metrics-port", "0",
                "--torch-threads", str(args.replica_cpus), "--max-connection-age-s", str(args.max_connection_age_s)]
        try:
            proc, match = Proc.start(f"cloud-{i}", argv, rf"serving .* on {_ADDRESS}.*metrics port (\d+)", 180.0)
            found[i] = Replica(proc, int(match.group(2)), int(match.group(3)))
        except BaseException as exc:  # raised below, after the others stopped
            found[i] = exc

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(cpus))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in found if isinstance(r, BaseException)]
    if errors:
        stop_all([r.proc for r in found if isinstance(r, Replica)])
        raise errors[0]
    return [r for r in found if isinstance(r, Replica)]


def write_fleet(path: Path, replicas: list[Replica], args: argparse.Namespace) -> Path:
    return fleet_file(path, models=[args.model], routing={"policy": "cloud_only", "slo_ms": 2000},
                      cloud={"endpoint": "ipv4:" + ",".join(r.name for r in replicas), "request_timeout_ms": 5000},
                      device=DEVICE)


def start_agents(fleet: Path, args: argparse.Namespace, cpus: tuple[str | None, ...]) -> list[tuple[Proc, int]]:
    agents = []
    for i, cpu in enumerate(cpus):
        argv = [*_taskset(cpu), sys.executable, "-m", "fogline.cli", "agent", "run", "--config", str(fleet),
                "--device", DEVICE, "--listen", "127.0.0.1:0", "--models", str(args.models), "--grace-s", "5"]
        proc, match = Proc.start(f"agent-{i}", argv, rf"serving .* on {_ADDRESS}", 120.0)
        agents.append((proc, int(match.group(2))))
    return agents


def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        proc.stop()


class Clients:
    """One ``bench.scale_client`` per agent, running ``seconds``; ``wait()`` gives every record."""

    def __init__(self, ports: list[int], cpus: tuple[str | None, ...], args: argparse.Namespace, seconds: float,
                 callers: list[int]):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
        self.started = time.monotonic()
        self.procs = [subprocess.Popen(
            [*_taskset(cpu), sys.executable, "-m", "bench.scale_client", "--port", str(port), "--model", args.model,
             "--closed", str(count), "--seconds", f"{seconds:g}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO), text=True)
            for port, cpu, count in zip(ports, cpus, callers, strict=True)]

    def wait(self) -> np.ndarray:
        rows: list[list] = []
        for proc in self.procs:
            out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"load generator failed ({proc.returncode}): {err.strip()[-500:]}")
            rows += json.loads(out)["records"]
        return np.array([(s, d, "cex".index(c)) for s, d, c in rows], dtype=float).reshape(-1, 3)


def callers_per_agent(args: argparse.Namespace, n: int) -> list[int]:
    """Closed-loop callers for each agent with ``n`` replicas serving (see the module docstring)."""
    if args.callers_per_replica is None:
        return [args.concurrency] * args.agents
    total = n * args.callers_per_replica
    return [total // args.agents + (1 if i < total % args.agents else 0) for i in range(args.agents)]


# ------------------------------------------------------------------------------------ runs
@dataclass
class Window:
    """The requests answered in one interval: how many, by whom, how fast."""

    seconds: float
    total: int = 0
    cloud: int = 0
    edge: int = 0
    lost: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")

    @classmethod
    def of(cls, records: np.ndarray, start: float, end: float) -> Window:
        inside = records[(records[:, 1] >= start) & (records[:, 1] < end)]
        lat = (inside[:, 1] - inside[:, 0]) * 1000.0
        ok = lat[inside[:, 2] < 2]
        return cls(end - start, len(inside), int((inside[:, 2] == 0).sum()), int((inside[:, 2] == 1).sum()),
                   int((inside[:, 2] == 2).sum()), *(np.percentile(ok, [50, 99]) if len(ok) else (float("nan"),) * 2))

    @property
    def rate(self) -> float:
        return (self.cloud + self.edge) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Results:
    layout: Layout
    scaling: dict[int, Window] = field(default_factory=dict)
    shares: dict[int, list[float]] = field(default_factory=dict)
    kill: dict[str, Window] = field(default_factory=dict)
    add: dict[str, float] = field(default_factory=dict)


def _setup(args: argparse.Namespace, layout: Layout, n: int, tmp: Path, listed: int | None = None):
    replicas = start_replicas(args, list(layout.replicas[:n]))
    fleet = write_fleet(tmp / f"fleet-{n}.yaml", replicas[:listed], args)
    try:
        agents = start_agents(fleet, args, layout.agents)
    except BaseException:
        stop_all([r.proc for r in replicas])
        raise
    return replicas, fleet, agents


def scaling_run(args: argparse.Namespace, layout: Layout, n: int, tmp: Path) -> tuple[Window, list[float]]:
    replicas, _, agents = _setup(args, layout, n, tmp)
    try:
        clients = Clients([port for _, port in agents], layout.clients, args, args.warmup + args.seconds,
                          callers_per_agent(args, n))
        before = [r.successes() for r in replicas]
        records = clients.wait()
        served = [r.successes() - b for r, b in zip(replicas, before, strict=True)]
    finally:
        stop_all([p for p, _ in agents] + [r.proc for r in replicas])
    start = clients.started + args.warmup
    total = sum(served) or 1.0
    return Window.of(records, start, start + args.seconds), [s / total for s in served]


def kill_run(args: argparse.Namespace, layout: Layout, n: int, tmp: Path) -> dict[str, Window]:
    replicas, _, agents = _setup(args, layout, n, tmp)
    try:
        clients = Clients([port for _, port in agents], layout.clients, args, args.warmup + args.seconds,
                          callers_per_agent(args, n))
        killed_at = clients.started + args.warmup + args.seconds / 3
        time.sleep(max(0.0, killed_at - time.monotonic()))
        replicas[0].proc.popen.send_signal(signal.SIGKILL)
        records = clients.wait()
    finally:
        stop_all([p for p, _ in agents] + [r.proc for r in replicas])
    start, end = clients.started + args.warmup, clients.started + args.warmup + args.seconds
    return {"before": Window.of(records, start, killed_at), "after": Window.of(records, killed_at, end),
            "all": Window.of(records, clients.started, float(records[:, 1].max(initial=end)) + 1e-6)}


def add_run(args: argparse.Namespace, layout: Layout, n: int, tmp: Path) -> dict[str, float]:
    replicas, fleet, agents = _setup(args, layout, n, tmp, listed=n - 1)
    samples: list[tuple[float, list[float]]] = []
    try:
        clients = Clients([port for _, port in agents], layout.clients, args, args.warmup + args.seconds,
                          callers_per_agent(args, n))
        added_at = clients.started + args.warmup + args.seconds / 3
        end = clients.started + args.warmup + args.seconds
        reloaded = False
        while time.monotonic() < end:
            samples.append((time.monotonic(), [r.successes() for r in replicas]))
            if not reloaded and time.monotonic() >= added_at:
                write_fleet(fleet, replicas, args)
                for proc, _ in agents:
                    proc.popen.send_signal(signal.SIGHUP)
                added_at, reloaded = time.monotonic(), True
            time.sleep(0.25)
        records = clients.wait()
    finally:
        stop_all([p for p, _ in agents] + [r.proc for r in replicas])
    return {"first_s": _first_answer(samples, added_at), "share_s": _fair_share(samples, added_at),
            "lost": float((records[:, 2] == 2).sum()), "requests": float(len(records))}


def _first_answer(samples: list[tuple[float, list[float]]], added_at: float) -> float:
    base = next((counts[-1] for t, counts in samples if t >= added_at), 0.0)
    return next((t - added_at for t, counts in samples if t >= added_at and counts[-1] > base), float("nan"))


def _fair_share(samples: list[tuple[float, list[float]]], added_at: float, span_s: float = 1.0) -> float:
    """Seconds after ``added_at`` until the new replica's rate over ``span_s`` is >= 80% of the others' mean."""
    for i, (t, counts) in enumerate(samples):
        j = next((k for k in range(i, len(samples)) if samples[k][0] >= t + span_s), None)
        if t < added_at or j is None:
            continue
        deltas = np.array(samples[j][1]) - np.array(counts)
        if deltas[-1] > 0 and deltas[-1] >= 0.8 * float(np.mean(deltas[:-1])):
            return samples[j][0] - added_at
    return float("nan")


def measure(args: argparse.Namespace) -> Results:
    cores = sorted(os.sched_getaffinity(0))
    top = max(args.replicas)
    layout = plan_layout(cores, top, args.replica_cpus, args.agents)
    results = Results(layout)
    with tempfile.TemporaryDirectory(prefix="fogline-scale-") as tmp:
        for n in args.replicas:
            print(f"scaling: {n} replica(s) ...", flush=True)
            results.scaling[n], results.shares[n] = scaling_run(args, layout, n, Path(tmp))
        if top >= 2:
            print(f"kill: {top} replicas, one SIGKILLed ...", flush=True)
            results.kill = kill_run(args, layout, top, Path(tmp))
            print(f"add: {top - 1} replicas, one added ...", flush=True)
            results.add = add_run(args, layout, top, Path(tmp))
    return results


# ------------------------------------------------------------------------------------ report
def efficiency(results: Results, n: int) -> float:
    one = results.scaling.get(1)
    if one is None or n not in results.scaling or one.rate <= 0:
        return float("nan")
    return results.scaling[n].rate / (n * one.rate)


def gates(results: Results) -> list[tuple[str, bool]]:
    top = max(results.scaling)
    lost = results.kill["all"].lost if results.kill else 0
    return [(f"scaling efficiency at N={top} >= 0.85 ({efficiency(results, top):.2f})", efficiency(results, top) >= 0.85),
            (f"0 requests lost in the kill run ({lost})", bool(results.kill) and lost == 0)]


def load_text(args: argparse.Namespace) -> str:
    if args.callers_per_replica is None:
        return f"{args.concurrency} closed-loop callers per agent at every N"
    return (f"{args.callers_per_replica} closed-loop callers per replica (N x {args.callers_per_replica} "
            "spread over the agents)")


def write_report(path: Path, args: argparse.Namespace, results: Results, note: str = "") -> str:
    cores = len(os.sched_getaffinity(0))
    pinned = "pinned with taskset" if results.layout.pinned else "not pinned (too few cores)"
    lines = [
        "# Scale-out: agents over cloud replicas", "",
        f"Host: {platform.node()}, {cores} cores, Python {platform.python_version()}; {pinned}. "
        f"Model `{args.model}`, {args.agents} agent(s), {load_text(args)}, "
        f"{args.replica_cpus} core(s) and torch thread(s) per replica, window {args.seconds:g} s after "
        f"{args.warmup:g} s warm-up, max connection age {args.max_connection_age_s:g} s. {note}".rstrip(), "",
        "## Scaling", "",
        "| replicas | answers/s | cloud | edge | lost | p50 ms | p99 ms | efficiency | share per replica |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, w in results.scaling.items():
        share = " / ".join(f"{s:.0%}" for s in results.shares[n])
        lines.append(f"| {n} | {w.rate:.1f} | {w.cloud} | {w.edge} | {w.lost} | {w.p50_ms:.1f} | {w.p99_ms:.1f} "
                     f"| {efficiency(results, n):.2f} | {share} |")
    if results.kill:
        lines += ["", f"## Kill ({max(results.scaling)} replicas, one SIGKILLed a third into the window)", "",
                  "| interval | answers/s | cloud | edge | lost | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, w in results.kill.items():
            lines.append(f"| {name} | {w.rate:.1f} | {w.cloud} | {w.edge} | {w.lost} | {w.p50_ms:.1f} | {w.p99_ms:.1f} |")
    if results.add:
        a = results.add
        lines += ["", f"## Add ({max(results.scaling) - 1} replicas listed, the fleet file rewritten + SIGHUP)", "",
                  f"First answer from the new replica {a['first_s']:.2f} s after the reload; its share (>= 80% of "
                  f"the others' mean rate over 1 s) after {a['share_s']:.2f} s; {a['lost']:.0f} of "
                  f"{a['requests']:.0f} requests lost."]
    lines += ["", "## Gates", ""] + [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in gates(results)]
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=REPO / "models", help="model repository (default ./models)")
    parser.add_argument("--replicas", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--replica-cpus", type=int, default=2, help="cores (and torch threads) per replica")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop callers per agent")
    parser.add_argument("--callers-per-replica", type=int, default=None, metavar="C",
                        help="instead of --concurrency: N x C callers over the agents at N replicas")
    parser.add_argument("--model", default="minilm", choices=("minilm", "digits"))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-connection-age-s", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.md")
    parser.add_argument("--quick", action="store_true", help="1 and 2 replicas, digits, short windows")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.replicas, args.replica_cpus, args.agents, args.callers_per_replica = [1, 2], 1, 1, 4
        args.model, args.seconds, args.warmup = "digits", 3.0, 1.5
    return args


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    results = measure(args)
    print(write_report(args.out, args, results, "quick run" if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
