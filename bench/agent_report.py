"""The reporting half of ``bench.agent``: the run's figures, the gate, markdown and JSON output.

The added latency is a difference of percentiles: an agent path's p50 (p99) minus the in-process p50
(p99) of the same run over the same inputs. The gate (issue 6) is the streaming p50 difference
< 1 ms for every model, judged on the first agent of the run (the fleet defaults unless told
otherwise); the others are reported beside it.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.agent_measure import Plan, Series

GATE_MS = 1.0
INPROC = "in-process"
FLOOR_STREAM = "gRPC floor stream (no model)"
FLOOR_UNARY = "gRPC floor unary (no model)"
#: The in-process call again, each after 1 ms of idling: the model as a request that arrives now and then
#: finds the CPU (caches cooled), where the back-to-back baseline runs hot. A reference, not the baseline.
INPROC_PACED = "in-process, 1 ms apart"
#: Reference rows: no "added" figures of their own.
REFERENCES = (INPROC, INPROC_PACED, FLOOR_STREAM, FLOOR_UNARY)


@dataclass(frozen=True)
class AgentSpec:
    """One agent of the run: a label and its ``batching.max_queue_delay_ms`` (None: the fleet default)."""

    label: str
    queue_delay_ms: float | None

    def describe(self) -> str:
        if self.queue_delay_ms is None:
            return "fleet defaults (`batching.max_queue_delay_ms: 2`)"
        return f"`batching.max_queue_delay_ms: {self.queue_delay_ms:g}`"


@dataclass
class Result:
    """Everything one run measured."""

    command: str
    plan: Plan
    agents: list[AgentSpec]
    cloud_mode: str
    concurrency: list[int]
    latency: dict[str, dict[str, Series]] = field(default_factory=dict)  # model -> path key -> series
    throughput: dict[str, list[Series]] = field(default_factory=dict)  # model -> rows
    machine: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    agent_exits: list[int | None] = field(default_factory=list)
    code: str = ""

    @staticmethod
    def key(mode: str, spec: AgentSpec) -> str:
        return f"agent {mode}, {spec.label}"

    def added(self, model: str, key: str, q: float) -> float:
        lat = self.latency[model]
        return lat[key].p(q) - lat[INPROC].p(q)

    def gate_of(self, spec: AgentSpec) -> bool:
        key = self.key("stream", spec)
        return bool(self.latency) and all(self.added(m, key, 50) < GATE_MS for m in self.latency)

    def gate(self) -> bool:
        """The gate, judged on the first agent (the fleet defaults unless told otherwise)."""
        return self.gate_of(self.agents[0])

    def all_series(self) -> list[Series]:
        return [s for lat in self.latency.values() for s in lat.values()] + [
            s for rows in self.throughput.values() for s in rows]

    def errors(self) -> int:
        return sum(s.errors for s in self.all_series())

    def requests(self) -> int:
        return sum(s.count + s.errors for s in self.all_series())


def _f(x: float, digits: int = 3) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def write_markdown(path: Path, result: Result) -> None:
    m = result.machine
    cloud = ("none (`--cloud ''`)" if result.cloud_mode == "none"
             else "an endpoint nobody listens on (the link keeps reconnecting)")
    plan = result.plan
    lines = [
        "# Edge agent benchmark: added latency and throughput",
        "",
        f"Command: `{result.command}` ({result.seconds:.0f} s of measuring). Generated "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "",
        f"Machine: {platform.machine()}, **{m.get('cores')} CPU cores** shared with other work, Python "
        f"{platform.python_version()}, onnxruntime {_ort_version()}, grpcio {_grpc_version()}. "
        f"Load average (1 min): {_f(m.get('load1_start', math.nan), 2)} at start, mean "
        f"{_f(m.get('load1_mean', math.nan), 2)}, max {_f(m.get('load1_max', math.nan), 2)} during the run. "
        f"CPU busy on average {_f(m.get('machine_cpu_mean_pct', math.nan), 0)}% of the machine; of one core: "
        f"servers (agents, floor) {_f(m.get('agents_cpu_mean_pct', math.nan), 0)}%, benchmark client "
        f"{_f(m.get('client_cpu_mean_pct', math.nan), 0)}% (the rest is other work on the machine). "
        f"Code: {result.code}.",
        "",
        "Setup: each agent is `fogline agent run` in its own process, policy `edge_only`, every request "
        f"`route: edge`, cloud: {cloud}. Agents: "
        + "; ".join(f"**{spec.label}**: {spec.describe()}" for spec in result.agents)
        + ". In-process: `EdgeModel.load(dir, intra_op_threads=1)` (the agent's session settings) called "
        "in the benchmark process; both load one private copy of the INT8 files. The client is fogline's generated stub; requests are built as protobuf "
        "messages once before timing (serializing them stays timed). One input row per request, one "
        f"request in flight; {plan.rounds} rounds of one block per path, path order rotated each round, "
        + ", ".join(f"{n} requests per block for {k}" for k, n in plan.blocks.items()) + ".",
        "",
        "## Latency (ms)",
        "",
        "| model | path | requests | p50 | p99 | added p50 | added p99 | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, lat in result.latency.items():
        for key, s in lat.items():
            added = (" | " if key in REFERENCES else
                     f"**{result.added(model, key, 50):+.3f}** | {result.added(model, key, 99):+.3f}")
            lines.append(f"| {model} | {key} | {s.count} | {_f(s.p(50))} | {_f(s.p(99))} | {added} | {s.errors} |")
    diffs = ", ".join(f"{max(s.max_abs_diff for s in lat.values()):.1e} ({model})"
                      for model, lat in result.latency.items())
    lines += [
        "",
        "Added = the agent path's percentile minus the in-process percentile (same run, same inputs). "
        f"Agent answers equal the in-process outputs within {diffs} (max absolute difference). The gRPC "
        "floor is `bench.agent_floor`: the same `grpc.aio` server and `fogline.codec` decoding and "
        "encoding, answering zeros with no model, no router and no queue; an agent's p50 minus the floor's "
        "p50 is what the agent's own request path (routing, edge queue, thread pool, model) costs.",
        "",
        "## Throughput",
        "",
        f"Closed loops, {plan.tput_s:g} s each after {plan.tput_warmup_s:g} s of warm-up. `agent stream, ..., "
        "c=N`: N concurrent streams on one channel, each with one request in flight; `agent unary, ..., "
        "c=N`: N concurrent unary callers. In-process rows are references: one thread, and two (the "
        "agent's executor size).",
        "",
        "| model | client | requests/s | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for model, rows in result.throughput.items():
        for s in rows:
            lines.append(f"| {model} | {s.label} | {s.rate:.1f} | {_f(s.p(50))} | {_f(s.p(99))} | {s.errors} |")
    lines += ["", "## Gate", "", f"p50 added latency on the streaming edge route < {GATE_MS:g} ms:", ""]
    for i, spec in enumerate(result.agents):
        key = result.key("stream", spec)
        per_model = ", ".join(f"{model} {result.added(model, key, 50):+.3f} ms" for model in result.latency)
        verdict = "PASS" if result.gate_of(spec) else "FAIL"
        judged = " (the gate)" if i == 0 else ""
        lines.append(f"- agent with {spec.describe()}{judged}: {per_model} -> **{verdict}**")
    if all(FLOOR_STREAM in lat for lat in result.latency.values()):
        floor = ", ".join(f"{model} {lat[FLOOR_STREAM].p(50):.3f} ms" for model, lat in result.latency.items())
        lines.append(f"- for scale, the gRPC floor's streaming p50 (round trip, no model): {floor}")
    if all(INPROC_PACED in lat for lat in result.latency.values()):
        paced = ", ".join(f"{model} {lat[INPROC_PACED].p(50):.3f} ms (back to back {lat[INPROC].p(50):.3f})"
                          for model, lat in result.latency.items())
        lines.append(f"- for scale, the in-process p50 when each call follows 1 ms of idling, as an agent's "
                     f"model call does (caches cooled; the gate still uses the back-to-back baseline): {paced}")
    lines += [
        "",
        f"Requests: {result.requests()}, errors: **{result.errors()}**; agent exit codes after SIGTERM: "
        f"{', '.join(str(code) for code in result.agent_exits)}.",
    ]
    problems = [f"{s.label}: {p}" for s in result.all_series() for p in s.problems]
    if problems:
        lines += ["", "First problems seen:", "", *[f"- {p}" for p in problems[:10]]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_json(path: Path, result: Result) -> None:
    def series(s: Series) -> dict[str, Any]:
        return {"label": s.label, "count": s.count, "errors": s.errors, "p50_ms": s.p(50), "p99_ms": s.p(99),
                "rate_per_s": s.rate if s.seconds else None, "max_abs_diff": s.max_abs_diff,
                "problems": s.problems}

    data = {
        "command": result.command,
        "cloud_mode": result.cloud_mode,
        "agents": [{"label": a.label, "queue_delay_ms": a.queue_delay_ms, "gate_pass": result.gate_of(a)}
                   for a in result.agents],
        "machine": result.machine,
        "code": result.code,
        "seconds": result.seconds,
        "latency": {model: {key: series(s) for key, s in lat.items()} for model, lat in result.latency.items()},
        "added_ms": {model: {key: {"p50": result.added(model, key, 50), "p99": result.added(model, key, 99)}
                             for key in lat if key not in REFERENCES} for model, lat in result.latency.items()},
        "throughput": {model: [series(s) for s in rows] for model, rows in result.throughput.items()},
        "gate": {"stream_p50_added_below_ms": GATE_MS, "judged_on": result.agents[0].label, "pass": result.gate()},
        "requests": result.requests(),
        "errors": result.errors(),
        "agent_exits": result.agent_exits,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def code_state() -> str:
    """The commit the agent code comes from, and whether ``src/fogline/`` differs from it (a shared tree)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src/fogline"],
                               cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"commit {head}" + (" with uncommitted changes in src/fogline/" if dirty else "")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _grpc_version() -> str:
    import grpc

    return grpc.__version__
