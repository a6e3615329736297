"""The oracle: for each request, the best route in hindsight, and what it would have achieved.

The oracle knows the conditions the proxy had in force when a request was sent and the measured
service times of both tiers, and picks the cloud whenever the cloud would have met the deadline,
the edge otherwise. Its expected latency for a request of model ``m`` is::

    cloud_ms(m) = 2 * E[one_way_ms] + S_cloud(m) + 8 * (B_up(m) + B_down(m) + 2 * 14) / bw_kbps
    edge_ms(m)  = S_edge(m)
    route       = cloud  if the link is not blackholed and cloud_ms(m) <= deadline_ms  else edge

where ``E[one_way_ms]`` is the mean of the proxy's own per-chunk delay sampler for those conditions
(base delay plus jitter draw, never below zero; the proxy runs in another process and does not
record its draws, so the oracle uses their mean), ``S_cloud`` / ``S_edge`` are the median
latencies of requests pinned to each tier over a clean link (``route=cloud`` / ``route=edge``,
measured under the same load before the scenarios; the cloud's includes the agent's hop), ``B_up`` /
``B_down`` are the median serialized request and cloud-answer sizes in bytes, 14 bytes per message are
the gRPC length prefix (5) and the HTTP/2 DATA frame header (9), and the last term is zero without a
bandwidth cap (``bw_kbps`` kilobits per second = bits per millisecond). The oracle ignores queueing
(on the link or in either tier) beyond what the measured service times contain.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from bench.netproxy import NetConditions
from bench.routing_scenarios import Phase, conditions_at
from bench.routing_workload import Arrival

#: gRPC's 5-byte message prefix plus the 9-byte HTTP/2 DATA frame header, per message.
FRAMING_BYTES = 14
_SAMPLES = 100_000


@dataclass(frozen=True)
class ServiceTimes:
    """Measured per-model service times (ms) and message sizes (bytes) over a clean link."""

    edge_ms: Mapping[str, float]
    cloud_ms: Mapping[str, float]
    request_bytes: Mapping[str, float]
    response_bytes: Mapping[str, float]


@dataclass(frozen=True)
class OracleChoice:
    index: int
    model: str
    route: str  # "cloud" | "edge"
    latency_ms: float
    cloud_ms: float  # expected cloud latency (inf under a blackhole)
    edge_ms: float


@lru_cache(maxsize=256)
def expected_one_way_ms(conditions: NetConditions) -> float:
    """Mean one-way delay (ms) of the proxy's sampler for ``conditions`` (seeded, so repeatable)."""
    if conditions.jitter_ms == 0:
        return conditions.delay_ms
    rng = random.Random(12345)
    total = sum(conditions.sample_delay_s(rng) for _ in range(_SAMPLES))
    return total / _SAMPLES * 1000.0


def expected_cloud_ms(conditions: NetConditions, model: str, times: ServiceTimes) -> float:
    """The formula in the module docstring; ``inf`` when the link is blackholed."""
    if conditions.blackhole:
        return math.inf
    latency = 2.0 * expected_one_way_ms(conditions) + times.cloud_ms[model]
    if conditions.bandwidth_kbps is not None:
        size = times.request_bytes[model] + times.response_bytes[model] + 2 * FRAMING_BYTES
        latency += 8.0 * size / conditions.bandwidth_kbps
    return latency


def oracle_choice(arrival: Arrival, t_s: float, timeline: Sequence[Phase], times: ServiceTimes,
                  deadline_ms: float) -> OracleChoice:
    """The best route for one request sent at ``t_s`` under the applied ``timeline``."""
    cond = conditions_at(timeline, t_s)
    cloud = expected_cloud_ms(cond, arrival.model, times)
    edge = times.edge_ms[arrival.model]
    if cloud <= deadline_ms:
        return OracleChoice(arrival.index, arrival.model, "cloud", cloud, cloud, edge)
    return OracleChoice(arrival.index, arrival.model, "edge", edge, cloud, edge)


def oracle_choices(arrivals: Sequence[Arrival], timeline: Sequence[Phase], times: ServiceTimes,
                   deadline_ms: float, sent_s: Sequence[float] | None = None) -> list[OracleChoice]:
    """One choice per arrival; ``sent_s`` (measured send times) replaces the planned ones if given."""
    moments = [a.t_s for a in arrivals] if sent_s is None else list(sent_s)
    return [oracle_choice(a, t, timeline, times, deadline_ms) for a, t in zip(arrivals, moments, strict=True)]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of no values")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
