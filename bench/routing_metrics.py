"""Scoring a routing run: latency percentiles, SLO attainment, full-model share, quality, winners, gates.

Definitions (the report repeats them):

- *SLO attainment*: answered without error within the deadline, over all requests sent (an error or
  a lost request is a miss);
- *full-model share*: answers with ``served_by == "cloud"`` over all requests sent;
- *quality*: ``minilm`` mean cosine between the answer and the full model's embedding; ``digits``
  accuracy against the held-out labels (over the answered requests of that model);
- percentiles: nearest-rank over the answered requests.

Everything here is pure and works on ``Outcome`` / ``OracleChoice`` lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.routing_driver import Outcome
from bench.routing_oracle import OracleChoice
from bench.routing_scenarios import Phase
from bench.routing_workload import Arrival

#: Two SLO attainments closer than this (fraction) count as a tie when naming a winner.
TIE = 0.01


@dataclass(frozen=True)
class Summary:
    """One policy (or the oracle) in one scenario."""

    name: str
    requests: int
    answered: int
    errors: int
    lost: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    slo_attainment: float
    full_share: float
    minilm_cosine: float
    digits_accuracy: float
    fallbacks: int = 0
    error_examples: tuple[str, ...] = field(default=())


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def summarize(name: str, outcomes: Sequence[Outcome], slo_ms: float) -> Summary:
    answered = [o for o in outcomes if o.status == "ok"]
    latencies = [o.latency_ms for o in answered if o.latency_ms is not None]
    n = max(1, len(outcomes))
    errors = [o for o in outcomes if o.status == "error"]
    examples = tuple(dict.fromkeys(o.error for o in errors))[:3]
    return Summary(
        name=name,
        requests=len(outcomes),
        answered=len(answered),
        errors=len(errors),
        lost=sum(o.status == "lost" for o in outcomes),
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        slo_attainment=sum(lat <= slo_ms for lat in latencies) / n,
        full_share=sum(o.served_by == "cloud" for o in answered) / n,
        minilm_cosine=_mean([o.quality for o in answered if o.model == "minilm" and o.quality is not None]),
        digits_accuracy=_mean([o.quality for o in answered if o.model == "digits" and o.quality is not None]),
        fallbacks=sum(o.fallback for o in answered),
        error_examples=examples,
    )


def summarize_oracle(choices: Sequence[OracleChoice], arrivals: Sequence[Arrival],
                     tier_quality: Mapping[tuple[str, str], np.ndarray], slo_ms: float) -> Summary:
    """The oracle's figures: its expected latencies, and the quality of the tier it picks per item."""
    latencies = [c.latency_ms for c in choices]
    n = max(1, len(choices))
    quality = {"minilm": [], "digits": []}
    for c, a in zip(choices, arrivals, strict=True):
        quality[a.model].append(float(tier_quality[(a.model, c.route)][a.item]))
    return Summary(
        name="oracle",
        requests=len(choices),
        answered=len(choices),
        errors=0,
        lost=0,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        slo_attainment=sum(lat <= slo_ms for lat in latencies) / n,
        full_share=sum(c.route == "cloud" for c in choices) / n,
        minilm_cosine=_mean(quality["minilm"]),
        digits_accuracy=_mean(quality["digits"]),
    )


def winner(summaries: Sequence[Summary]) -> str:
    """The best policy of a scenario (the oracle excluded).

    Only policies without errors or lost requests qualify. The highest SLO attainment wins; within
    ``TIE`` of the best, the higher full-model share, then the lower p95 latency.
    """
    eligible = [s for s in summaries if s.name != "oracle" and s.errors == 0 and s.lost == 0]
    if not eligible:
        return "none (every policy had errors or lost requests)"
    best_slo = max(s.slo_attainment for s in eligible)
    close = [s for s in eligible if s.slo_attainment >= best_slo - TIE]
    close.sort(key=lambda s: (-round(s.full_share, 4), s.p95_ms if not math.isnan(s.p95_ms) else math.inf))
    return close[0].name


@dataclass(frozen=True)
class ScenarioClass:
    """Whether the network was bad and/or good for some requests, according to the oracle."""

    bad_share: float  # requests the cloud could not have answered in time
    good_share: float  # requests the cloud could have answered in time

    @property
    def bad(self) -> bool:
        return self.bad_share > 0

    @property
    def good(self) -> bool:
        return self.good_share > 0


def classify(choices: Sequence[OracleChoice]) -> ScenarioClass:
    n = max(1, len(choices))
    cloud = sum(c.route == "cloud" for c in choices)
    return ScenarioClass(bad_share=(len(choices) - cloud) / n, good_share=cloud / n)


@dataclass(frozen=True)
class GateResult:
    gate: str
    scenario: str
    held: bool | None  # None: does not apply / could not be measured
    detail: str


def gates_for_scenario(scenario: str, by_policy: Mapping[str, Summary], oracle: Summary,
                       klass: ScenarioClass, policy: str = "latency_aware") -> list[GateResult]:
    """The issue's gates for ``policy`` in one scenario (see the report for their wording)."""
    la = by_policy.get(policy)
    if la is None:
        return [GateResult("all", scenario, None, f"{policy} did not run")]
    out = [
        GateResult("zero lost", scenario, la.lost == 0, f"lost {la.lost}, errors {la.errors}"),
        GateResult("SLO within 1 point of oracle", scenario,
                   la.slo_attainment >= oracle.slo_attainment - 0.01,
                   f"{100 * la.slo_attainment:.1f}% vs oracle {100 * oracle.slo_attainment:.1f}%"),
        GateResult(">= 90% of oracle's full-model share", scenario,
                   la.full_share >= 0.9 * oracle.full_share - 1e-12,
                   f"{100 * la.full_share:.1f}% vs oracle {100 * oracle.full_share:.1f}% "
                   f"(needs {90 * oracle.full_share:.1f}%)"),
    ]
    cloud_only = by_policy.get("cloud_only")
    if klass.bad:
        if cloud_only is None:
            out.append(GateResult("beats cloud_only on SLO (bad network)", scenario, None, "cloud_only did not run"))
        else:
            out.append(GateResult("beats cloud_only on SLO (bad network)", scenario,
                                  la.slo_attainment > cloud_only.slo_attainment,
                                  f"{100 * la.slo_attainment:.1f}% vs {100 * cloud_only.slo_attainment:.1f}%"))
    edge_only = by_policy.get("edge_only")
    if klass.good:
        if edge_only is None:
            out.append(GateResult("beats edge_only on quality (good network)", scenario, None, "edge_only did not run"))
        else:
            better = la.minilm_cosine > edge_only.minilm_cosine and not (
                la.digits_accuracy < edge_only.digits_accuracy)
            out.append(GateResult("beats edge_only on quality (good network)", scenario, better,
                                  f"cosine {la.minilm_cosine:.4f} vs {edge_only.minilm_cosine:.4f}, "
                                  f"digits {100 * la.digits_accuracy:.1f}% vs {100 * edge_only.digits_accuracy:.1f}%"))
    return out


@dataclass(frozen=True)
class Switch:
    """A moment the link turned from good to bad for the cloud (or back), and what each policy did.

    ``lag_s`` per policy: after a turn to *bad*, how long SLO misses went on (send time of the last
    request sent before the next switch that missed, minus the switch time; 0 when none missed); after
    a turn to *good*, how long until the full model answered again (send time of the first request
    answered by the cloud, minus the switch time; None when none was before the next switch).
    """

    at_s: float
    to_good: bool
    lag_s: Mapping[str, float | None]


def switch_lags(timeline: Sequence[Phase], end_s: float, runs: Mapping[str, Sequence[Outcome]],
                cloud_feasible: Callable[[Phase], bool | None], slo_ms: float) -> list[Switch]:
    """``Switch`` records for every change between phases where the cloud is feasible and not.

    ``cloud_feasible(phase)`` says whether the cloud could meet the SLO under that phase (None: for
    some models only, which is neither and never counts as a switch).
    """
    out: list[Switch] = []
    states = [cloud_feasible(p) for p in timeline]
    for i in range(1, len(timeline)):
        before, after = states[i - 1], states[i]
        if before is None or after is None or before == after:
            continue
        start = timeline[i].at_s
        stop = timeline[i + 1].at_s if i + 1 < len(timeline) else end_s
        lags: dict[str, float | None] = {}
        for policy, outcomes in runs.items():
            window = [o for o in outcomes if start <= o.t_s < stop]
            if after:
                first = next((o for o in sorted(window, key=lambda o: o.t_s) if o.served_by == "cloud"), None)
                lags[policy] = None if first is None else first.t_s - start
            else:
                misses = [o.t_s for o in window
                          if o.status != "ok" or o.latency_ms is None or o.latency_ms > slo_ms]
                lags[policy] = max(misses) - start if misses else 0.0
        out.append(Switch(start, bool(after), lags))
    return out
