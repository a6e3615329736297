"""The reporting half of ``bench.agent``: the run's figures, the gate, markdown and JSON output.

The added latency is a difference of percentiles: the agent path's p50 (p99) minus the in-process p50
(p99) of the same run over the same inputs. The gate (issue 6) is the streaming p50 difference
< 1 ms, for every model measured.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.agent_measure import MODES, Plan, Series

GATE_MS = 1.0
PATH_NAMES = {"inproc": "in-process `EdgeModel.predict`", "stream": "agent, `ModelStreamInfer` (1 in flight)",
              "unary": "agent, `ModelInfer`"}


@dataclass
class Result:
    """Everything one run measured."""

    command: str
    plan: Plan
    cloud_mode: str
    queue_delay_ms: float | None
    concurrency: list[int]
    latency: dict[str, dict[str, Series]] = field(default_factory=dict)  # model -> mode -> series
    throughput: dict[str, list[Series]] = field(default_factory=dict)  # model -> rows
    machine: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    agent_exit: int | None = None

    def added(self, model: str, mode: str, q: float) -> float:
        lat = self.latency[model]
        return lat[mode].p(q) - lat["inproc"].p(q)

    def gate(self) -> bool:
        return bool(self.latency) and all(self.added(m, "stream", 50) < GATE_MS for m in self.latency)

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
    batching = ("fleet default (`batching.max_queue_delay_ms: 2`)" if result.queue_delay_ms is None
                else f"`batching.max_queue_delay_ms: {result.queue_delay_ms:g}`")
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
        f"{_f(m.get('load1_mean', math.nan), 2)}, max {_f(m.get('load1_max', math.nan), 2)} during the run; "
        f"machine CPU busy {_f(m.get('machine_cpu_mean_pct', math.nan), 0)}% on average (all cores = "
        f"{100 * (m.get('cores') or 1)}%: agent {_f(m.get('agent_cpu_mean_pct', math.nan), 0)}%, "
        f"benchmark client {_f(m.get('client_cpu_mean_pct', math.nan), 0)}%).",
        "",
        f"Setup: `fogline agent run` in its own process, policy `edge_only`, every request `route: edge`, "
        f"cloud: {cloud}; batching {batching}. In-process: `EdgeModel.load(dir, intra_op_threads=1)`, the "
        "agent's session settings, called in the benchmark process. The client uses fogline's generated "
        "stub; requests are built as protobuf messages once before timing (serializing them stays timed). "
        f"Latency: {plan.rounds} rounds of one block per path (order rotated each round), "
        + ", ".join(f"{n} requests per block for {k}" for k, n in plan.blocks.items())
        + "; one request in flight; one input row per request.",
        "",
        "## Latency (ms)",
        "",
        "| model | path | requests | p50 | p99 | added p50 | added p99 | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, lat in result.latency.items():
        for mode in MODES:
            s = lat[mode]
            added = ("" if mode == "inproc" else
                     f"**{result.added(model, mode, 50):+.3f}** | {result.added(model, mode, 99):+.3f}")
            lines.append(f"| {model} | {PATH_NAMES[mode]} | {s.count} | {_f(s.p(50))} | {_f(s.p(99))} | "
                         + (added or " | ") + f" | {s.errors} |")
    lines += [
        "",
        "Added = the agent path's percentile minus the in-process percentile (same run, same inputs).",
        "Agent answers match the in-process outputs to "
        + ", ".join(f"{max(lat[m].max_abs_diff for m in ('stream', 'unary')):.1e} ({model})"
                    for model, lat in result.latency.items()) + " (max |difference|).",
        "",
        "## Throughput",
        "",
        "Closed loops for "
        f"{plan.tput_s:g} s each after {plan.tput_warmup_s:g} s of warm-up. Agent `stream, c=N`: N concurrent "
        "streams on one channel, each with one request in flight; `unary, c=N`: N concurrent callers. "
        "In-process rows are references: one thread, and two (the agent's executor size).",
        "",
        "| model | client | requests/s | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for model, rows in result.throughput.items():
        for s in rows:
            lines.append(f"| {model} | {s.label} | {s.rate:.1f} | {_f(s.p(50))} | {_f(s.p(99))} | {s.errors} |")
    gate = result.gate()
    lines += [
        "",
        "## Gate",
        "",
        *[f"- {model}: streaming p50 added **{result.added(model, 'stream', 50):+.3f} ms** "
          f"(< {GATE_MS:g} ms: {'pass' if result.added(model, 'stream', 50) < GATE_MS else 'FAIL'})"
          for model in result.latency],
        f"- p50 added latency on the streaming edge route < {GATE_MS:g} ms: **{'PASS' if gate else 'FAIL'}**.",
        f"- Requests: {result.requests()}, errors: **{result.errors()}**; agent exit code after SIGTERM: "
        f"{result.agent_exit}.",
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
        "queue_delay_ms": result.queue_delay_ms,
        "machine": result.machine,
        "seconds": result.seconds,
        "latency": {model: {mode: series(s) for mode, s in lat.items()} for model, lat in result.latency.items()},
        "added_ms": {model: {f"{mode}_p{q}": result.added(model, mode, q) for mode in ("stream", "unary")
                             for q in (50, 99)} for model in result.latency},
        "throughput": {model: [series(s) for s in rows] for model, rows in result.throughput.items()},
        "gate": {"stream_p50_added_below_ms": GATE_MS, "pass": result.gate()},
        "requests": result.requests(),
        "errors": result.errors(),
        "agent_exit": result.agent_exit,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n", encoding="utf-8")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _grpc_version() -> str:
    import grpc

    return grpc.__version__
