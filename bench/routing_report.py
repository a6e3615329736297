"""The routing benchmark's report: ``routing.md`` (tables, winners, gates), ``routing.json`` and PNG plots.

One plot per scenario (``routing_<scenario>.png``): a row per policy plus the oracle, request latency
over send time on a log axis, each point coloured by the tier that answered (errors and lost requests
marked separately), the SLO as a dashed line, and the network round trip behind as a grey area: the
proxy's D(t) up and then down (``fogline.netproxy.timeline``, the same function the oracle reads; a
blackhole as a dark band).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.routing_metrics import (
    GateResult,
    Summary,
    classify,
    gates_for_scenario,
    summarize,
    summarize_oracle,
    switch_lags,
    winner,
)
from bench.routing_oracle import FRAMING_BYTES, RECONNECT_RTTS, ServiceTimes, expected_cloud_ms, link_timeline
from bench.routing_scenarios import Phase
from fogline.netproxy.timeline import LinkTimeline

if TYPE_CHECKING:
    from bench.routing import BenchResult, ScenarioResult
    from bench.routing_workload import Workload

COLOURS = {"edge": "#1f77b4", "cloud": "#ff7f0e"}


def scenario_summaries(sr: ScenarioResult, workload: Workload) -> tuple[dict[str, Summary], Summary]:
    by_policy = {p: summarize(p, run.outcomes, sr.slo_ms) for p, run in sr.runs.items()}
    oracle = summarize_oracle(sr.oracle, sr.arrivals, workload.tier_quality, sr.slo_ms)
    return by_policy, oracle


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def _ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f}"


def _cos(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def _row(s: Summary, win: bool) -> str:
    name = f"**{s.name}**" if win else s.name
    return (f"| {name} | {_ms(s.p50_ms)} | {_ms(s.p95_ms)} | {_ms(s.p99_ms)} | {_pct(s.slo_attainment)} | "
            f"{_pct(s.full_share)} | {_cos(s.minilm_cosine)} | {_pct(s.digits_accuracy)} | {s.fallbacks} | "
            f"{s.errors} | {s.lost} |")


def _timeline_text(phases: Sequence[Phase]) -> str:
    parts = []
    for p in phases[:8]:
        c = p.conditions
        what = "blackhole" if c.blackhole else f"{c.delay_ms:g} ms"
        if c.jitter_ms:
            what += f" + {c.jitter_dist} jitter {c.jitter_ms:g} ms" + (f" per {c.jitter_slot_ms:g} ms slot" if c.jitter_slot_ms else "")
        if c.bandwidth_kbps:
            what += f", {c.bandwidth_kbps:g} kbit/s"
        parts.append(f"{p.at_s:.2f} s: {what}")
    if len(phases) > 8:
        parts.append(f"... ({len(phases)} phases)")
    return "; ".join(parts)


def _adaptation(sr: ScenarioResult, service: ServiceTimes) -> list[str]:
    """A table of how fast each policy followed the link's turns between good and bad (if any)."""

    def feasible(phase: Phase) -> bool | None:
        ok = {expected_cloud_ms(phase.conditions, m, service) <= sr.slo_ms for m in ("minilm", "digits")}
        return ok.pop() if len(ok) == 1 else None

    first = next(iter(sr.runs.values()), None)
    if first is None:
        return []
    runs = {p: run.outcomes for p, run in sr.runs.items()}
    switches = switch_lags(first.timeline, sr.scenario.duration_s, runs, feasible, sr.slo_ms)
    if not switches:
        return []
    policies = list(runs)
    lines = ["", "How fast each policy followed the link: after a turn to bad, for how long requests still "
             "missed the SLO; after a turn to good, how long until the full model answered again (seconds, "
             "by send time; - = not before the next turn).", "",
             "| link turns | " + " | ".join(policies) + " |", "| --- |" + " ---: |" * len(policies)]
    for sw in switches:
        label = f"{sw.at_s:.2f} s, to {'good: full model after' if sw.to_good else 'bad: misses for'}"
        cells = ["-" if sw.lag_s[p] is None else f"{sw.lag_s[p]:.2f}" for p in policies]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _loads(sr: ScenarioResult) -> str:
    return ", ".join(f"{p} {run.load_1m:.1f}" for p, run in sr.runs.items()) or "n/a"


def _gate_table(gates: list[GateResult]) -> list[str]:
    names = list(dict.fromkeys(g.gate for g in gates))
    lines = ["| gate | holds? | where it fails or cannot be judged |", "| --- | --- | --- |"]
    for name in names:
        these = [g for g in gates if g.gate == name]
        failed = [g for g in these if g.held is False]
        unknown = [g for g in these if g.held is None]
        verdict = "no" if failed else ("not judged" if unknown and not any(g.held for g in these) else "yes")
        notes = "; ".join(f"{g.scenario}: {g.detail}" for g in failed + unknown) or (
            f"{len(these)} scenario(s)")
        lines.append(f"| {name} | {verdict} | {notes} |")
    return lines


def render_markdown(result: BenchResult, workload: Workload, command: str) -> str:
    cfg = result.config
    st = result.service
    lines = [
        "# Routing benchmark: policies vs an oracle under network faults",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}` in "
        f"{result.wall_s:.0f} s on {platform.machine()} with {os.cpu_count()} CPU cores"
        f"{' (quick mode: shortened scenarios)' if cfg.quick else ''}; code: {result.code_note or 'unknown'}.",
        "",
        "Set-up: the cloud (`fogline cloud serve`, CPU), the network proxy (`python -m fogline.netproxy.proxy "
        "--timeline`, seeded per scenario) and the agent (`fogline agent run`) are separate processes on "
        "loopback; the agent reaches the cloud only through the proxy. Each policy runs with a fresh proxy "
        f"and agent (fleet file with that policy), a {cfg.warmup_s:g} s warm-up under the first phase's "
        "conditions, then the scenario (its first phase re-applied at the start, so the link's delay is "
        "the same function of time in every policy's run). "
        f"Load: open-loop Poisson arrivals at {cfg.rate_hz:g} req/s over {cfg.streams} `ModelStreamInfer` "
        f"streams, {100 * cfg.minilm_share:.0f}% `minilm` (the {len(workload.sentences)} sentences of "
        f"`src/fogline/modelbuild/data/sentences.txt`) and the rest `digits` ({result.workload_note}); the same seeded "
        f"schedule for every policy of a scenario (seed {cfg.seed}). SLO {cfg.slo_ms:g} ms unless a scenario "
        "sets its own; requests carry no `deadline_ms`, so the agent's `slo_ms` is the deadline.",
        "",
        f"The machine has {os.cpu_count()} cores shared by cloud, agent, proxy, load generator and whatever "
        "else runs on the host; each scenario lists the host's load average after every run. A load well "
        "above the core count means other work competed for the CPU, which shows up as latency tails even "
        "for `edge_only`.",
        "",
    ]
    all_gates: list[GateResult] = []
    sections: list[str] = []
    winners: list[tuple[str, str]] = []
    columns = [*cfg.policies, "oracle"]
    overview = ["| scenario | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for sr in result.scenarios:
        by_policy, oracle = scenario_summaries(sr, workload)
        cells = {**by_policy, "oracle": oracle}
        overview.append(f"| {sr.scenario.name} | " + " | ".join(
            f"{100 * cells[c].slo_attainment:.0f} / {100 * cells[c].full_share:.0f}" if c in cells else "skipped"
            for c in columns) + " |")
        klass = classify(sr.oracle)
        all_gates += gates_for_scenario(sr.scenario.name, by_policy, oracle, klass)
        win = winner(list(by_policy.values()))
        winners.append((sr.scenario.name, win))
        first = next(iter(sr.runs.values()), None)
        sections += [
            f"### {sr.scenario.name}",
            "",
            f"{sr.scenario.description} ({sr.scenario.duration_s:g} s, {len(sr.arrivals)} requests, "
            f"SLO {sr.slo_ms:g} ms). Timeline: {_timeline_text(first.timeline if first else sr.scenario.phases)}.",
            f"Oracle: the cloud could have met the SLO for {_pct(klass.good_share)} of the requests "
            f"(network {'bad for some requests' if klass.bad else 'good throughout'}). Host load average "
            f"(1 min) after each run: {_loads(sr)}.",
            "",
            "| policy | p50 ms | p95 ms | p99 ms | SLO met | full model | minilm cosine | digits accuracy "
            "| fallbacks | errors | lost |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        sections += [_row(s, s.name == win) for s in by_policy.values()]
        sections.append(_row(oracle, False).replace("| oracle |", "| *oracle* |"))
        sections += ["", f"Winner: **{win}**."]
        sections += _adaptation(sr, result.service)
        for policy, why in sr.skipped.items():
            sections += ["", f"Skipped `{policy}`: {why}"]
        for s in by_policy.values():
            if s.error_examples:
                sections += ["", f"`{s.name}` errors, e.g.: " + "; ".join(f"`{e}`" for e in s.error_examples)]
        sections += ["", f"![{sr.scenario.name}](routing_{sr.scenario.name}.png)", ""]

    lines += [
        "## Gates (issue 8, for `latency_aware`, from this run)",
        "",
        "- zero lost requests in every scenario;",
        "- SLO attainment within 1 point of the oracle's in every scenario;",
        "- at least 90% of the oracle's share of full-model (cloud) answers in every scenario;",
        "- beats `cloud_only` on SLO attainment wherever the network is bad (the oracle sends at least one "
        "request to the edge because the cloud would miss);",
        "- beats `edge_only` on quality wherever the network is good (the oracle sends at least one request "
        "to the cloud): higher `minilm` mean cosine and no lower `digits` accuracy.",
        "",
    ]
    lines += _gate_table(all_gates)
    lines += ["", "## Overview: SLO met % / full-model share % (of all requests)", "", *overview]
    lines += ["", "## Winners", "", "| scenario | winner |", "| --- | --- |"]
    lines += [f"| {name} | {win} |" for name, win in winners]
    skipped = {p: why for sr in result.scenarios for p, why in sr.skipped.items()}
    if skipped:
        lines += ["", "Policies not measured: " + "; ".join(f"`{p}` ({why})" for p, why in skipped.items())]
    lines += [
        "",
        "A winner needs zero errors and zero lost requests; among those, the highest SLO attainment wins, "
        "attainments within 1 point count as a tie, broken by the larger full-model share, then the lower p95.",
        "",
        "## Service times and the oracle",
        "",
        "Measured before the scenarios with the same load over a clean link (proxy with no delay), every "
        "request pinned to one tier (`route=cloud`, then `route=edge`); medians:",
        "",
        "| model | S_edge ms | S_cloud ms | request bytes | cloud answer bytes |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for model in ("minilm", "digits"):
        lines.append(f"| {model} | {st.edge_ms[model]:.1f} | {st.cloud_ms[model]:.1f} | "
                     f"{st.request_bytes[model]:.0f} | {st.response_bytes[model]:.0f} |")
    lines += [
        "",
        "The proxy runs in timeline mode (`bench/netproxy_timeline.py`): the one-way delay of bytes entering "
        "the link at time t is a deterministic function of time, the same for every policy's run of a scenario "
        "(same seed, same phases; the switch times differ by the few ms the control port takes):",
        "",
        "```",
        "d(s) = base delay of the phase in force at s + the jitter drawn for s's slot",
        "       (one draw per jitter_slot_ms slot, seeded by (scenario seed, direction, slot index))",
        "D(t) = max over s <= t of (s + d(s)) - t",
        "```",
        "",
        "so the link behaves like a queue: a delay spike stalls it and drains at real-time speed, nothing "
        "overtakes, and a step from 250 ms down to 5 ms drains over about 245 ms. For each request sent at t "
        "(the first policy's measured send time) the oracle evaluates the same function, on the phases at the "
        "times the proxy reported applying them, and computes",
        "",
        "```",
        f"t'       = t, or L + {RECONNECT_RTTS} * RTT(L) if the link came back from a blackhole at L and t is earlier",
        "cloud_ms = (t' - t) + D_up(t') + S_cloud(model) + D_down(t' + D_up(t') + S_cloud(model))",
        f"           + 8 * (B_request + B_answer + 2 * {FRAMING_BYTES}) / bandwidth_kbps   (only under a cap)",
        "edge_ms  = S_edge(model)",
        "route    = cloud if cloud_ms <= SLO and no blackhole starts before the answer is back, else edge",
        "```",
        "",
        "After a blackhole every connection that carried traffic lost bytes and is reset, so a real client needs "
        f"a new connection: a TCP handshake plus the HTTP/2 preface and SETTINGS exchange, {RECONNECT_RTTS} round "
        "trips at the delay in force (TLS would add more; the benchmark runs without). The oracle charges that "
        "to requests sent before the new connection could be ready; it does not charge the time a client needs "
        "to notice that the link is back. 14 bytes per message are the gRPC length prefix and the HTTP/2 frame "
        "header. The oracle's latency is the chosen route's computed latency; its quality is that tier's answer "
        "for the same item (computed in-process from the same model files); it never errs or loses a request. "
        "It ignores queueing in either tier and on the link beyond D(t) (the measured service times contain "
        "the queueing of the calibration load), so under a bandwidth cap it is optimistic. The link-turn tables "
        "call a phase good or bad by its steady state (mean delay both ways, no drain).",
        "",
        "## Results per scenario",
        "",
        "SLO met and full model are shares of all requests sent (an error or a lost request is a miss); "
        "percentiles are over answered requests; minilm cosine is the mean cosine to the full model's "
        "embedding; digits accuracy is against the held-out labels. Fallbacks: answers marked `fallback` "
        "(the preferred tier failed or was too slow). Bold: the scenario's winner.",
        "",
    ]
    lines += sections
    return "\n".join(lines).rstrip() + "\n"


def summaries_json(result: BenchResult, workload: Workload | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"service_times": {
        "edge_ms": dict(result.service.edge_ms), "cloud_ms": dict(result.service.cloud_ms),
        "request_bytes": dict(result.service.request_bytes), "response_bytes": dict(result.service.response_bytes),
    }, "scenarios": {}}
    for sr in result.scenarios:
        by_policy = {p: summarize(p, run.outcomes, sr.slo_ms) for p, run in sr.runs.items()}
        entry: dict[str, Any] = {p: _summary_dict(s) for p, s in by_policy.items()}
        if workload is not None:
            entry["oracle"] = _summary_dict(summarize_oracle(sr.oracle, sr.arrivals, workload.tier_quality, sr.slo_ms))
        entry["skipped"] = dict(sr.skipped)
        out["scenarios"][sr.scenario.name] = entry
    return out


def _summary_dict(s: Summary) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v

    return {k: clean(v) if not isinstance(v, tuple) else list(v) for k, v in s.__dict__.items()}


def plot_scenario(sr: ScenarioResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [*sr.runs, "oracle"]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.9 * len(rows) + 0.8), sharex=True, squeeze=False)
    first = next(iter(sr.runs.values()), None)
    timeline = first.timeline if first is not None else list(sr.scenario.phases)
    link = first.link_timeline() if first is not None else link_timeline(timeline)
    end = sr.scenario.duration_s
    for ax, name in zip(axes[:, 0], rows, strict=True):
        _draw_network(ax, timeline, link, end)
        if name == "oracle":
            points = [(a.t_s, c.latency_ms, c.route, "ok") for a, c in zip(sr.arrivals, sr.oracle, strict=True)]
        else:
            points = [(o.t_s, o.latency_ms, o.served_by, o.status) for o in sr.runs[name].outcomes]
        for tier, colour in COLOURS.items():
            xs = [t for t, lat, by, st in points if st == "ok" and by == tier and lat is not None]
            ys = [max(lat, 0.5) for t, lat, by, st in points if st == "ok" and by == tier and lat is not None]
            ax.scatter(xs, ys, s=7, c=colour, label=f"{tier}", zorder=3, linewidths=0)
        bad = [(t, lat) for t, lat, _by, st in points if st == "error"]
        if bad:
            ax.scatter([t for t, _ in bad], [lat if lat else 2000 for _, lat in bad], marker="x", s=18,
                       c="red", label="error", zorder=4)
        lost = [t for t, _lat, _by, st in points if st == "lost"]
        if lost:
            ax.scatter(lost, [2500] * len(lost), marker="v", s=18, c="black", label="lost", zorder=4)
        ax.axhline(sr.slo_ms, color="green", linestyle="--", linewidth=1, label=f"SLO {sr.slo_ms:g} ms", zorder=2)
        ax.set_yscale("log")
        ax.set_ylim(1, 3000)
        ax.set_ylabel("latency ms")
        ax.set_title(name, loc="left", fontsize=9)
        ax.set_xlim(0, end)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=5)
    axes[-1, 0].set_xlabel("seconds since the scenario started (request send time)")
    fig.suptitle(f"{sr.scenario.name}: latency per request, coloured by the tier that answered; "
                 "grey = network round trip (right axis), dark band = blackhole", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _draw_network(ax: Any, timeline: Sequence[Phase], link: LinkTimeline, end: float) -> None:
    """Blackholes as dark bands; in grey the network round trip of bytes sent at t (up at t, then down
    at once on arrival: D_up(t) + D_down(t + D_up(t))), as the proxy applied it."""
    twin = ax.twinx()
    for i, phase in enumerate(timeline):
        stop = timeline[i + 1].at_s if i + 1 < len(timeline) else end
        if phase.conditions.blackhole:
            ax.axvspan(phase.at_s, stop, color="0.35", alpha=0.35, zorder=0)
    steps = max(1, int(end / 0.004))
    xs = [end * k / steps for k in range(steps + 1)]
    ys = [0.0 if link.conditions_at(t).blackhole else link.round_trip_ms(t) for t in xs]
    twin.fill_between(xs, ys, step=None, color="0.85", zorder=0)
    twin.set_ylim(0, max(600.0, max(ys or [0]) * 1.1))
    twin.set_ylabel("network RTT ms", fontsize=7, color="0.5")
    twin.tick_params(labelsize=7, colors="0.5")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)


def write_report(result: BenchResult, workload: Workload, command: str | None = None) -> Path:
    import json

    out = result.config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for sr in result.scenarios:
        plot_scenario(sr, out / f"routing_{sr.scenario.name}.png")
    command = command or ("python -m bench.routing --quick" if result.config.quick else "python -m bench.routing")
    path = out / "routing.md"
    path.write_text(render_markdown(result, workload, command), encoding="utf-8")
    (out / "routing.json").write_text(json.dumps(summaries_json(result, workload), indent=2) + "\n", encoding="utf-8")
    return path
