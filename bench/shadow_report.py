"""The report half of ``bench.shadow``: figures from the blocks, and the markdown written from them."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.agent_report import code_state

MODELS = ("digits", "minilm")
#: The metric live agreement reports per task, and where the build put its offline figure.
METRIC = {"digits": "top1_agreement", "minilm": "cosine_mean"}


@dataclass(frozen=True)
class Latency:
    """One model's edge p50 for both agents: medians over rounds, and the per-round difference."""

    model: str
    base_p50: float
    shadow_p50: float
    base_p90: float
    shadow_p90: float
    delta_p50: float
    delta_min: float
    delta_max: float
    requests: int


@dataclass(frozen=True)
class Load:
    """What the cloud and an agent did while one agent ran one model's blocks."""

    agent: str
    model: str
    offered_rate: float
    cloud_rate: float
    cloud_cpu_percent: float
    agent_cpu_ms_per_request: float


def latencies(run: Any, base: str, shadow: str) -> list[Latency]:
    out = []
    for model in MODELS:
        rounds: dict[int, dict[str, list[float]]] = {}
        for block in run.blocks:
            if block.model == model:
                rounds.setdefault(block.round, {})[block.agent] = block.latencies_ms
        p50 = {a: [statistics.median(r[a]) for r in rounds.values()] for a in (base, shadow)}
        p90 = {a: [_p(r[a], 90) for r in rounds.values()] for a in (base, shadow)}
        deltas = [s - b for s, b in zip(p50[shadow], p50[base], strict=True)]
        count = sum(len(r[shadow]) + len(r[base]) for r in rounds.values())
        out.append(Latency(model, statistics.median(p50[base]), statistics.median(p50[shadow]),
                           statistics.median(p90[base]), statistics.median(p90[shadow]), statistics.median(deltas),
                           min(deltas), max(deltas), count))
    return out


def loads(run: Any) -> list[Load]:
    out = []
    for agent in dict.fromkeys(block.agent for block in run.blocks):
        for model in MODELS:
            blocks = [b for b in run.blocks if b.agent == agent and b.model == model]
            seconds = sum(b.seconds for b in blocks)
            requests = sum(len(b.latencies_ms) for b in blocks)
            out.append(Load(agent, model, run.rates[model], sum(b.cloud_requests[model] for b in blocks) / seconds,
                            100.0 * sum(b.cloud_cpu_s for b in blocks) / seconds,
                            1000.0 * sum(b.agent_cpu_s for b in blocks) / max(1, requests)))
    return out


def agreement_rows(run: Any) -> list[dict[str, Any]]:
    rows = []
    for model in MODELS:
        manifest = run.manifests.get(model, {})
        offline = (manifest.get("metrics") or {}).get("int8", {}).get(METRIC[model])
        for version, entry in sorted(run.status.get("shadow", {}).get("models", {}).get(model, {}).items()):
            value, gate = entry.get("value"), entry.get("gate")
            meets = value is not None and (gate is None or value >= gate)
            rows.append({"model": model, "version": version, "metric": entry.get("metric"), "value": value,
                         "total": entry.get("total"), "rows": entry.get("rows", 0), "offline": offline,
                         "gate": gate, "meets": meets, "outcomes": entry.get("outcomes", {})})
    return rows


def write_markdown(run: Any, out: Path, command: str) -> str:
    """Write the report; returns its one-line verdict."""
    base, shadow = "0%", f"{run.share * 100:g}%"
    lat, load, agree = latencies(run, base, shadow), loads(run), agreement_rows(run)
    gates_met = bool(agree) and all(row["meets"] for row in agree) and {r["model"] for r in agree} == set(MODELS)
    cost = ", ".join(f"{x.model} {x.delta_p50:+.3f} ms" for x in lat)
    verdict = (f"agreement {'meets' if gates_met else 'MISSES'} the manifests' gates; edge p50 cost of "
               f"shadowing {shadow}: {cost}")
    lines = [
        f"# Live agreement: shadowing {shadow} of edge answers",
        "",
        f"`{command}` — {run.started}, {run.wall_s:.0f} s, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}),"
        f" {code_state()}. Cloud, both agents and the client share the machine (no pinning).",
        "",
        f"**Verdict:** {verdict}.",
        "",
        "Two `fogline agent run` processes (`policy: edge_only`, fleet defaults), one with `routing.shadow.share: 0`, "
        f"one with `{run.share:g}`, in front of one `fogline cloud serve` (CPU, one torch thread) on loopback. "
        f"{run.plan.rounds} rounds; per round and model each agent gets a {run.plan.block_s:g} s block of paced traffic "
        f"(one request in flight, unary; digits {run.rates['digits']:g}/s, minilm {run.rates['minilm']:g}/s), in "
        "alternating order, then the block waits until the agent has no shadow out. Traffic: held-out digit images "
        "of the models build's split and the minilm fidelity sentences (`src/fogline/modelbuild/data/sentences.txt`).",
        "",
        "## Edge latency (client-side), 0% vs shadowing",
        "",
        f"| model | p50 {base} | p50 {shadow} | p50 difference (median, range over rounds) | p90 {base} | p90 {shadow} | requests |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for x in lat:
        lines.append(f"| {x.model} | {x.base_p50:.3f} ms | {x.shadow_p50:.3f} ms | {x.delta_p50:+.3f} ms "
                     f"({x.delta_min:+.3f} .. {x.delta_max:+.3f}) | {x.base_p90:.3f} ms | {x.shadow_p90:.3f} ms | {x.requests} |")
    lines += [
        "",
        "Medians over rounds of each block's p50 (p90); the difference is taken per round (same items, same "
        "minute), then its median.",
        "",
        "## Cloud load",
        "",
        "| agent | model | offered to the agent | answered by the cloud | cloud CPU (1 core = 100%) | agent CPU per request |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for x in load:
        lines.append(f"| {x.agent} | {x.model} | {x.offered_rate:g}/s | {x.cloud_rate:.2f}/s | "
                     f"{x.cloud_cpu_percent:.1f}% | {x.agent_cpu_ms_per_request:.3f} ms |")
    lines += [
        "",
        "Cloud requests are its `nv_inference_request_success` counts over the agent's blocks (with the wait for its "
        "shadows), divided by their duration; CPU from psutil. The 0% agent sends the cloud nothing (its link only "
        "probes `ServerReady`), so its cloud CPU is the idle cloud's.",
        "",
        "## Agreement: live (shadowed traffic) vs the manifest (offline)",
        "",
        "| model | version | metric | live, last window | live, all rows | rows compared | offline (manifest `metrics.int8`) | gate | meets gate | shadow outcomes |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in agree:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(row["outcomes"].items())) or "-"
        lines.append(f"| {row['model']} | {row['version']} | {row['metric']} | {_f(row['value'])} | {_f(row['total'])} | "
                     f"{row['rows']} | {_f(row['offline'])} | {_f(row['gate'])} | {'yes' if row['meets'] else 'NO'} | "
                     f"{outcomes} |")
    lines += [
        "",
        "Live figures come from the shadowing agent's status call (`fogline agent status --json`, section `shadow`), "
        "the same figures as `fogline_agent_shadow_agreement`. Offline: INT8 against the full model on the build's "
        "evaluation rows (digits: 360 held-out images; minilm: the 235 sentences). Live compares the edge's INT8 "
        "answer with the cloud's full model on the shadowed requests.",
        "",
        f"Answers unchanged: {run.answers_checked} answers compared with an earlier answer to the same input "
        f"(either agent), {run.answers_differing} differed.",
    ]
    if run.problems:
        lines += ["", "Problems:", *[f"- {p}" for p in run.problems[:20]]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return verdict


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
