"""The oracle: for each request, the best route in hindsight, and what it would have achieved.

The oracle knows the link exactly and the measured service times of both tiers, and picks the cloud
whenever the cloud would have met the deadline, the edge otherwise. The benchmark runs the proxy in
timeline mode (``fogline.netproxy.timeline``), where the one-way delay of bytes entering the link at
time t is a deterministic function D(t) of the conditions applied, the moments the proxy applied them
(it reports them) and the proxy's seed; the oracle evaluates that same function (the same code) on a
``LinkTimeline`` rebuilt from those reports. For a request of model ``m`` sent at ``t``::

    t'          = t, or the moment a fresh connection is ready if the link came back from a
                  blackhole at L <= t: L + RECONNECT_RTTS * RTT(L)   (see below)
    cloud_ms(m) = (t' - t) + D_up(t') + S_cloud(m) + D_down(t' + D_up(t') + S_cloud(m))
                  + 8 * (B_up(m) + B_down(m) + 2 * 14) / bw_kbps      (only under a bandwidth cap)
    edge_ms(m)  = S_edge(m)
    route       = cloud  if cloud_ms(m) <= deadline_ms and no blackhole falls in [t, t + cloud_ms(m)]
                  (the proxy drops bytes still on the link when one starts), else edge

D(t) has the queue semantics of the proxy: a delay spike (a heavy-tailed jitter draw, or a step from
250 ms down to 5 ms) stalls the link and drains at real-time speed, so requests sent just after a
step down still see most of the old delay. ``S_cloud`` / ``S_edge`` are the median latencies of
requests pinned to each tier over a clean link (``route=cloud`` / ``route=edge``, measured under the
same load before the scenarios; the cloud's includes the agent's hop), ``B_up`` / ``B_down`` the
median serialized request and cloud-answer sizes, 14 bytes per message the gRPC length prefix (5) and
the HTTP/2 DATA frame header (9); ``bw_kbps`` kilobits per second = bits per millisecond.

Reconnect: a blackhole drops bytes, and a byte stream with a hole cannot continue, so every client
that had traffic on the link (the agent probes it every 50-200 ms) must open a new connection when
the link returns: a TCP handshake and the HTTP/2 preface/SETTINGS exchange, ``RECONNECT_RTTS`` = 2
round trips at the delay in force then (TLS would add one or two more; the benchmark runs without).
The oracle charges that to requests sent before the new connection could be ready. It ignores other
queueing (on the link or in either tier) beyond what the measured service times contain, so under a
bandwidth cap it is optimistic.

``expected_cloud_ms`` is the steady-state version (mean one-way delay of the conditions, no drain):
the report uses it to say whether the cloud is feasible under a phase at all.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from bench.routing_scenarios import Phase
from bench.routing_workload import Arrival
from fogline.netproxy.proxy import NetConditions
from fogline.netproxy.timeline import LinkPhase, LinkTimeline

#: gRPC's 5-byte message prefix plus the 9-byte HTTP/2 DATA frame header, per message.
FRAMING_BYTES = 14
#: Round trips a client needs for a fresh connection: TCP handshake, HTTP/2 preface and SETTINGS.
RECONNECT_RTTS = 2
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
    """Mean one-way delay (ms) of the proxy's jitter sampler for ``conditions`` (seeded, repeatable;
    timeline mode draws the same distribution per slot, clamped at ``max_delay_ms``)."""
    if conditions.jitter_ms == 0:
        return conditions.delay_ms
    rng = random.Random(12345)
    total = sum(conditions.sample_delay_s(rng) for _ in range(_SAMPLES))
    return total / _SAMPLES * 1000.0


def expected_cloud_ms(conditions: NetConditions, model: str, times: ServiceTimes) -> float:
    """Steady state under ``conditions``: the mean one-way delay both ways, no drain, no reconnect;
    ``inf`` when the link is blackholed."""
    if conditions.blackhole:
        return math.inf
    latency = 2.0 * expected_one_way_ms(conditions) + times.cloud_ms[model]
    if conditions.bandwidth_kbps is not None:
        size = times.request_bytes[model] + times.response_bytes[model] + 2 * FRAMING_BYTES
        latency += 8.0 * size / conditions.bandwidth_kbps
    return latency


def link_timeline(timeline: Sequence[Phase] | LinkTimeline, seed: int = 0) -> LinkTimeline:
    """The proxy's D(t) for phases applied at the given times (seconds from the schedule's start)."""
    if isinstance(timeline, LinkTimeline):
        return timeline
    return LinkTimeline(seed, [LinkPhase(p.at_s, p.conditions) for p in timeline])


def reconnect_ready_s(link: LinkTimeline, t_s: float) -> float:
    """When a client sending at ``t_s`` has a usable connection (``t_s`` unless a blackhole ended
    shortly before: then its end plus ``RECONNECT_RTTS`` round trips)."""
    i = link.phase_index(t_s)
    for j in range(i, 0, -1):
        before, after = link.phases[j - 1], link.phases[j]
        if before.conditions.blackhole and not after.conditions.blackhole:
            lift = after.start_s
            ready = lift + RECONNECT_RTTS * link.round_trip_ms(lift) / 1000.0
            return max(t_s, ready)
        if after.start_s + 5.0 < t_s:  # long ago: cannot matter
            break
    return t_s


def blackholed_between(link: LinkTimeline, start_s: float, end_s: float) -> bool:
    """Whether a blackhole is in force at any moment of [start_s, end_s] (the proxy drops bytes that
    are still on the link when one starts)."""
    i = link.phase_index(start_s)
    for phase in link.phases[i:]:
        if phase.start_s > end_s:
            break
        if phase.conditions.blackhole:
            return True
    return False


def cloud_ms_at(link: LinkTimeline, t_s: float, model: str, times: ServiceTimes) -> float:
    """The cloud's latency for a request of ``model`` sent at ``t_s`` (the module docstring's formula)."""
    cond = link.conditions_at(t_s)
    if cond.blackhole:
        return math.inf
    start = reconnect_ready_s(link, t_s)
    latency = (start - t_s) * 1000.0 + link.round_trip_ms(start, times.cloud_ms[model])
    if blackholed_between(link, t_s, t_s + latency / 1000.0):
        return math.inf  # the link dies while the request or its answer is on it: both are lost
    if cond.bandwidth_kbps is not None:
        size = times.request_bytes[model] + times.response_bytes[model] + 2 * FRAMING_BYTES
        latency += 8.0 * size / cond.bandwidth_kbps
    return latency


def oracle_choice(arrival: Arrival, t_s: float, timeline: Sequence[Phase] | LinkTimeline, times: ServiceTimes,
                  deadline_ms: float, seed: int = 0) -> OracleChoice:
    """The best route for one request sent at ``t_s`` over the link of ``timeline``."""
    cloud = cloud_ms_at(link_timeline(timeline, seed), t_s, arrival.model, times)
    edge = times.edge_ms[arrival.model]
    if cloud <= deadline_ms:
        return OracleChoice(arrival.index, arrival.model, "cloud", cloud, cloud, edge)
    return OracleChoice(arrival.index, arrival.model, "edge", edge, cloud, edge)


def oracle_choices(arrivals: Sequence[Arrival], timeline: Sequence[Phase] | LinkTimeline, times: ServiceTimes,
                   deadline_ms: float, sent_s: Sequence[float] | None = None, seed: int = 0) -> list[OracleChoice]:
    """One choice per arrival; ``sent_s`` (measured send times) replaces the planned ones if given.

    ``timeline``: the phases as the proxy applied them (times in seconds from the schedule's start,
    the warm-up's phase may start before 0) and ``seed`` the proxy's seed, or a ready ``LinkTimeline``.
    """
    link = link_timeline(timeline, seed)
    moments = [a.t_s for a in arrivals] if sent_s is None else list(sent_s)
    return [oracle_choice(a, t, link, times, deadline_ms) for a, t in zip(arrivals, moments, strict=True)]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of no values")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
