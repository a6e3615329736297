"""What the router reads and what it returns: the routing settings, the snapshot views, the decision.

Plain frozen values with no behaviour beyond derived properties, so the pure router
(``fogline.agent.router.decide``) and everything that builds its inputs (the data plane, the cloud link, the
edge runners) share one vocabulary:

- ``RoutingPolicy``: one device's routing knobs, from the fleet YAML's ``routing`` and ``load`` blocks
  (``RoutingPolicy.from_config``; the defaults here are the fleet model's, read from it);
- ``LinkView`` / ``EdgeView`` / ``RequestView``: what is known about the cloud link, the local model
  and the request at the moment of the decision; ``RouterMemory``: what the router carries from one
  decision to the next (the hysteresis state); ``Observation`` bundles them;
- ``Decision``: the tier, the reason, the fallback timers and the next memory.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from fogline.agent.shadow import ShadowSettings
from fogline.fleet.model import LoadConfig, RoutingConfig, default_of


class Tier(str, enum.Enum):
    EDGE = "edge"
    CLOUD = "cloud"


class Policy(str, enum.Enum):
    EDGE_ONLY = "edge_only"
    CLOUD_ONLY = "cloud_only"
    LATENCY_AWARE = "latency_aware"
    HEDGED = "hedged"
    CASCADE = "cascade"


_DEFAULT_POLICY = Policy(default_of(RoutingConfig, "policy"))


@dataclass(frozen=True)
class RoutingPolicy:
    """The routing knobs of one device (from the fleet YAML's ``routing`` and ``load`` blocks).

    Built from the fleet model by ``from_config``; the defaults of the keys the fleet file sets are
    read from ``fogline.fleet.model`` (never written again here), so ``RoutingPolicy()`` is what a
    device gets from empty ``routing`` and ``load`` blocks.
    """

    policy: Policy = _DEFAULT_POLICY
    slo_ms: float = float(default_of(RoutingConfig, "slo_ms"))
    rtt_threshold_ms: float = float(default_of(RoutingConfig, "rtt_threshold_ms"))
    rtt_recover_ms: float = float(default_of(RoutingConfig, "rtt_recover_ms"))
    hedge_delay_ms: float | None = default_of(RoutingConfig, "hedge_delay_ms")
    #: None: cascade never escalates (it routes as latency_aware).
    cascade_threshold: float | None = default_of(RoutingConfig, "cascade_threshold")
    #: Per-model cascade thresholds, ``((model, threshold), ...)``, overriding ``cascade_threshold``.
    cascade_thresholds: tuple[tuple[str, float], ...] = ()
    #: Allowance for scheduling jitter added to every prediction (event loop, thread hand-off).
    margin_ms: float = 5.0
    #: The end of a deadline the edge backup of a cloud request leaves free: what the agent cannot see
    #: of a request's time (the answer's trip back to the client, a timer that fires late). An edge
    #: answer ready earlier is held until ``deadline - backup_margin_ms`` in case the cloud's comes.
    #: (On the routing benchmark's 2-core host, a held answer reaches the client 4-6 ms after the agent
    #: lets it go, and 10-20 ms when other work holds the CPU.)
    backup_margin_ms: float = 15.0
    #: The edge backup budgets its own run at this many times the edge's slow-run time (the work queued
    #: ahead once): a backup often runs cold, or next to the other requests the same network event
    #: made late. Starting early costs an edge run, not the cloud's answer (see ``backup_margin_ms``).
    backup_budget_factor: float = 2.0
    #: Overload: this many requests waiting or running for the model (None: no limit) ...
    max_queue_depth: int | None = default_of(LoadConfig, "max_queue_depth")
    #: ... or host CPU use at least this (0..1; None: ignore the CPU) sends work to a healthy cloud.
    cpu_high: float | None = default_of(LoadConfig, "cpu_high_percent") / 100.0
    #: Live agreement (``routing.shadow``): which edge answers are also asked of the cloud. The router
    #: ignores it; it rides here so a reload applies it with the rest of the routing block.
    shadow: ShadowSettings = field(default_factory=ShadowSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", Policy(self.policy))
        if self.slo_ms <= 0:
            raise ValueError(f"slo_ms must be positive, got {self.slo_ms}")
        if self.backup_margin_ms < 0:
            raise ValueError(f"backup_margin_ms must not be negative, got {self.backup_margin_ms}")
        if self.backup_budget_factor < 1:
            raise ValueError(f"backup_budget_factor must be at least 1, got {self.backup_budget_factor}")
        if self.rtt_recover_ms >= self.rtt_threshold_ms:  # the fleet model's rule (RoutingConfig)
            raise ValueError(
                f"rtt_recover_ms ({self.rtt_recover_ms}) must be below rtt_threshold_ms "
                f"({self.rtt_threshold_ms}); the gap between them is the hysteresis band"
            )
        if self.max_queue_depth is not None and self.max_queue_depth < 1:
            raise ValueError(f"max_queue_depth must be at least 1, got {self.max_queue_depth}")
        if self.cpu_high is not None and not 0 < self.cpu_high <= 1:
            raise ValueError(f"cpu_high is a fraction in (0, 1], got {self.cpu_high}")

    @classmethod
    def from_config(cls, routing: RoutingConfig, load: LoadConfig) -> RoutingPolicy:
        """A device's ``routing`` block and its ``load`` limits, value for value (no defaults added)."""
        return cls(
            policy=Policy(routing.policy),
            slo_ms=float(routing.slo_ms),
            rtt_threshold_ms=float(routing.rtt_threshold_ms),
            rtt_recover_ms=float(routing.rtt_recover_ms),
            hedge_delay_ms=routing.hedge_delay_ms,
            cascade_threshold=routing.cascade_threshold,
            cascade_thresholds=tuple(sorted(routing.cascade_thresholds.items())),
            max_queue_depth=load.max_queue_depth,
            cpu_high=load.cpu_high_percent / 100.0,
            shadow=ShadowSettings.from_config(routing.shadow),
        )

    def cascade_threshold_for(self, model: str) -> float | None:
        return dict(self.cascade_thresholds).get(model, self.cascade_threshold)


#: The link state (and the route reason) while the cloud refuses this agent's credentials
#: (UNAUTHENTICATED or PERMISSION_DENIED): a configuration problem, not a network one, so requests stay
#: on the edge until the credentials change (retried every while, or on a reload), however good the RTT.
CLOUD_UNAUTHENTICATED = "cloud_unauthenticated"


#: The route reason while the cloud lacks the model version this agent serves (it answered NOT_FOUND
#: for it): the link works, but the cloud cannot answer this model paired with the edge, so it stays here.
CLOUD_VERSION_MISSING = "cloud_version_missing"


@dataclass(frozen=True)
class LinkView:
    """The cloud link as the router sees it."""

    #: The stream is connected and the circuit breaker is closed.
    usable: bool
    #: Why not usable ("connecting", "down", "breaker_open", ``CLOUD_UNAUTHENTICATED``...); "ready"
    #: when usable.
    state: str = "ready"
    #: Smoothed network round trip (ms), None before the first sample.
    rtt_ms: float | None = None
    #: Windowed high percentile of the round trip (ms).
    rtt_high_ms: float | None = None
    #: The largest of the last few samples (ms): when even that is low, the network is good now,
    #: whatever the slower moving average still remembers.
    rtt_recent_ms: float | None = None
    #: The median round trip of the last second or so, for this request's model (ms; None: too few
    #: samples). One delay spike, whose few slow samples still weigh on the moving average and the
    #: recent samples, leaves it where it was: once the link answers again, the spike is over.
    rtt_typical_ms: float | None = None
    #: How long cloud calls have been waiting, minus expected compute (ms): the RTT is at least this.
    #: It reacts to a sudden slowdown long before the slow answers come back.
    outstanding_ms: float = 0.0
    #: Expected cloud compute time for the request's model (ms).
    cloud_compute_ms: float = 0.0
    #: The cloud answered NOT_FOUND for the version of the request's model this agent serves (the data
    #: plane's per-model state, retried every while): the model stays on the edge whatever the link.
    version_missing: bool = False

    @property
    def unusable_reason(self) -> str:
        """The route reason of a request kept off this unusable link: ``cloud_unauthenticated`` as it
        is (the operator's cue to fix credentials, not the network), ``link_<state>`` otherwise."""
        if self.state == CLOUD_UNAUTHENTICATED:
            return CLOUD_UNAUTHENTICATED
        return "link_" + (self.state if self.state and self.state != "ready" else "down")

    @property
    def effective_rtt_ms(self) -> float | None:
        """The round trip the router believes in: the lowest of the moving average, the recent samples
        (a recovery shows within a few probes) and the typical (median) round trip (a lone delay spike
        passes as soon as the link answers again), but never less than what calls still waiting
        already prove. The last term is what keeps a lasting slow-down honest: while it is younger than
        the typical window, probes and requests sent into it are out, and their waiting counts."""
        if self.rtt_ms is None:
            return None
        current = self.rtt_ms
        for view in (self.rtt_recent_ms, self.rtt_typical_ms):
            if view is not None:
                current = min(current, view)
        return max(current, self.outstanding_ms)


@dataclass(frozen=True)
class EdgeView:
    """The local runtime for the request's model (always loaded: the agent serves only the models its
    device lists, and refuses any other request before routing it)."""

    #: Requests waiting or running for this model.
    queue_depth: int = 0
    #: How many run at once (executor threads for this model).
    workers: int = 1
    #: Expected time to run one request once it starts (ms).
    service_ms: float = 10.0
    #: A high percentile of that time (ms; None = same as ``service_ms``): the edge backup timer
    #: budgets for a slow run, so a deadline holds on a busy CPU too.
    service_high_ms: float | None = None
    #: How late the agent's event loop currently runs (ms, a high percentile): CPU contention that
    #: delays starting the edge, added to the backup budget.
    scheduling_ms: float = 0.0
    #: Host CPU utilisation 0..1, when measured (for load-based offloading).
    cpu_load: float | None = None

    @property
    def predicted_ms(self) -> float:
        """Queueing plus service: requests ahead of this one share the workers."""
        ahead = self.queue_depth / max(1, self.workers)
        return (ahead + 1.0) * self.service_ms

    @property
    def run_high_ms(self) -> float:
        """One slow run: the high percentile of the service time (never below the expected one)."""
        return self.service_ms if self.service_high_ms is None else max(self.service_ms, self.service_high_ms)

    @property
    def predicted_high_ms(self) -> float:
        """Like ``predicted_ms`` with the slow-run service time: the edge backup's budget."""
        ahead = self.queue_depth / max(1, self.workers)
        return (ahead + 1.0) * self.run_high_ms + self.scheduling_ms


@dataclass(frozen=True)
class RequestView:
    model: str
    #: "auto" | "edge" | "cloud" (the request's ``route`` parameter).
    route: str = "auto"
    #: Time budget left for this request (ms), from the request or the SLO.
    deadline_ms: float = 100.0


@dataclass(frozen=True)
class RouterMemory:
    """What the router carries from one decision to the next (the hysteresis state)."""

    cloud_preferred: bool = False


@dataclass(frozen=True)
class Observation:
    link: LinkView
    edge: EdgeView
    memory: RouterMemory = RouterMemory()


@dataclass(frozen=True)
class Decision:
    tier: Tier
    reason: str
    memory: RouterMemory
    #: The preferred tier could not be used and the other one answers (reported as ``fallback``).
    fallback: bool = False
    #: For a cloud decision: start the edge after this many ms if no cloud answer is back (the last
    #: moment the edge still makes the deadline, or the hedge delay). None: only on cloud failure.
    edge_start_by_ms: float | None = None
    #: For a deadline backup: an edge answer ready before this many ms waits until then for the
    #: cloud's (which still wins if it comes). None: the first answer wins at once (hedging).
    edge_hold_until_ms: float | None = None
    #: For a hedged cloud decision: the edge starts after ``edge_start_by_ms`` and the first answer
    #: wins (no hold). Clients see it in ``route_reason``.
    hedged: bool = False
    #: For a cascade: escalate to the cloud when the edge's confidence is under this.
    escalate_below: float | None = None
    predicted_edge_ms: float | None = None
    predicted_cloud_ms: float | None = None

    @property
    def route_reason(self) -> str:
        """The reason as the response's ``route_reason`` carries it: ``rtt_ok``, or ``rtt_ok+hedge``
        when the edge raced the cloud."""
        return self.reason + "+hedge" if self.hedged else self.reason
