"""The routing decision: which tier answers one request, and why. Pure: no clock, no I/O, no globals.

``decide(policy, observation, request)`` reads a frozen snapshot of what the agent observed (the cloud
link's health and round-trip time, the edge's queue and service-time estimates, the router's memory of
its previous preference) and returns a ``Decision``: the tier to send the request to, a short reason
that travels back to the client as ``route_reason``, when the edge backup of a cloud request starts and
until when its answer waits for the cloud's (the data plane's fallback timer, ``backup_start_ms`` and
``backup_hold_until_ms``), and the router's next memory.

The round trip the router believes in is ``LinkView.effective_rtt_ms``: the lowest of the moving
average, the last few samples and the typical (median) round trip of the last second, but never less
than what calls still waiting prove. A delay spike thus holds requests at the edge only while calls
are stuck in it; a lasting slow-down keeps them there through the waiting calls and, after a second
or so, through every view of the samples.

Policies
- ``edge_only`` / ``cloud_only``: always that tier (``cloud_only`` waits for the cloud's answer even
  past the deadline, and answers from the edge, marked ``fallback``, only when the cloud call fails
  or the link is down: a request is never dropped).
- ``latency_aware``: prefer the cloud's full model while the measured RTT is under ``rtt_threshold_ms``;
  above it, stop preferring it; prefer it again only once the RTT is back under ``rtt_recover_ms``
  (hysteresis, so a link hovering at the threshold does not flap). Whatever the preference, never pick
  a tier predicted to miss the request's deadline when the other one is predicted to make it.
  A device overloaded (edge queue at ``max_queue_depth``, or host CPU at ``cpu_high``) offloads to
  the cloud whenever the cloud is predicted to make the deadline, even while the RTT keeps the cloud
  unpreferred (reasons ``queue_deep`` / ``cpu_high``); and since the edge prediction counts the work
  queued ahead, a request never waits behind work that makes it miss its deadline when the cloud
  could make it (``edge_busy``).
- ``hedged``: like ``latency_aware``, but when the cloud is chosen the edge starts as well after
  ``hedge_delay_ms`` (when that comes before the deadline backup would start) and the first answer wins.
- ``cascade``: the edge answers first; a classifier answer whose confidence is under
  ``cascade_threshold`` is escalated to the cloud when the deadline leaves room for it.

A link the cloud refuses to authenticate (state ``cloud_unauthenticated``) keeps every request on the
edge under every policy and route, with ``cloud_unauthenticated`` as the reason (``link_<state>`` for
the other unusable states), and drops the cloud preference: it is earned afresh once accepted again.

A model whose version the cloud lacks (``LinkView.version_missing``: it answered NOT_FOUND for the
version the edge serves) stays on the edge under every policy but ``edge_only`` (whose reason stays
its own), with ``cloud_version_missing`` as the reason; the link itself is not judged by it.

New policies plug into ``_POLICIES``; new observations go into ``EdgeView`` or ``LinkView`` with
defaults, so existing callers and tests keep working (the CPU load arrived that way: ``EdgeView.cpu_load``).
Those types live in ``fogline.agent.router_types``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from fogline.agent.router_types import (
    CLOUD_UNAUTHENTICATED,
    CLOUD_VERSION_MISSING,
    Decision,
    EdgeView,
    LinkView,
    Observation,
    Policy,
    RequestView,
    RouterMemory,
    RoutingPolicy,
    Tier,
)

# --------------------------------------------------------------------------- building blocks


def next_memory(policy: RoutingPolicy, link: LinkView, memory: RouterMemory) -> RouterMemory:
    """Hysteresis: leave the cloud above the threshold, come back only below the recover level."""
    rtt = link.effective_rtt_ms
    if link.state == CLOUD_UNAUTHENTICATED:
        # Refused credentials last until someone changes them: nothing measured before still counts.
        return replace(memory, cloud_preferred=False)
    if rtt is None or not link.usable:
        # Nothing measured, or the link is gone: decide afresh once it is back and measured.
        return replace(memory, cloud_preferred=False) if rtt is None else memory
    if memory.cloud_preferred and rtt > policy.rtt_threshold_ms:
        return replace(memory, cloud_preferred=False)
    if not memory.cloud_preferred and rtt < policy.rtt_recover_ms:
        return replace(memory, cloud_preferred=True)
    return memory


def predicted_cloud_ms(policy: RoutingPolicy, link: LinkView) -> float | None:
    rtt = link.effective_rtt_ms
    if rtt is None:
        return None
    return rtt + link.cloud_compute_ms + policy.margin_ms


def predicted_edge_ms(policy: RoutingPolicy, edge: EdgeView) -> float:
    return edge.predicted_ms + policy.margin_ms


def _edge(reason: str, obs: Observation, memory: RouterMemory, policy: RoutingPolicy, fallback=False):
    return Decision(
        Tier.EDGE,
        reason,
        memory,
        fallback=fallback,
        predicted_edge_ms=predicted_edge_ms(policy, obs.edge),
        predicted_cloud_ms=predicted_cloud_ms(policy, obs.link),
    )


def backup_hold_until_ms(policy: RoutingPolicy, deadline_ms: float) -> float:
    """Until when (ms after the request arrived) an edge backup's answer waits for the cloud's: the
    deadline less ``backup_margin_ms``, the part of the request's time the agent does not see."""
    return max(0.0, deadline_ms - policy.backup_margin_ms)


def backup_start_ms(policy: RoutingPolicy, edge: EdgeView, deadline_ms: float) -> float:
    """When (ms after the request arrived) the edge backup of a cloud request starts if the cloud has
    not answered: early enough that a slow edge run plus ``margin_ms`` ends by ``backup_hold_until_ms``.
    A slow run is ``EdgeView.predicted_high_ms`` (the high percentile of the service time for this run
    and the work queued ahead, plus the event loop's lateness) with this run counted
    ``backup_budget_factor`` times. 0 (at once) when that does not fit. A backup that finishes early
    costs nothing but its run: its answer is held for the cloud's."""
    extra = (policy.backup_budget_factor - 1.0) * edge.run_high_ms
    budget = edge.predicted_high_ms + extra + policy.margin_ms
    return max(0.0, backup_hold_until_ms(policy, deadline_ms) - budget)


def _cloud(reason: str, obs: Observation, req: RequestView, memory: RouterMemory, policy: RoutingPolicy):
    return Decision(
        Tier.CLOUD,
        reason,
        memory,
        edge_start_by_ms=backup_start_ms(policy, obs.edge, req.deadline_ms),
        edge_hold_until_ms=backup_hold_until_ms(policy, req.deadline_ms),
        predicted_edge_ms=predicted_edge_ms(policy, obs.edge),
        predicted_cloud_ms=predicted_cloud_ms(policy, obs.link),
    )


def overload_reason(policy: RoutingPolicy, edge: EdgeView) -> str | None:
    """Why the device counts as overloaded (``queue_deep`` or ``cpu_high``), or None when it does not."""
    if policy.max_queue_depth is not None and edge.queue_depth >= policy.max_queue_depth:
        return "queue_deep"
    if policy.cpu_high is not None and edge.cpu_load is not None and edge.cpu_load >= policy.cpu_high:
        return "cpu_high"
    return None


#: Reasons for which the cloud was picked because the edge could not take the work well.
OFFLOAD_REASONS = frozenset({"queue_deep", "cpu_high", "edge_busy"})


def _offload(reason: str, obs: Observation, req: RequestView, memory: RouterMemory, policy: RoutingPolicy):
    """To the cloud because the edge is busy. The edge backup still starts at the last moment it can
    make the deadline; when it cannot make it at all, it waits for the deadline itself (or a cloud
    failure) instead of adding work to the busy edge at once."""
    decision = _cloud(reason, obs, req, memory, policy)
    if decision.edge_start_by_ms == 0.0:
        decision = replace(decision, edge_start_by_ms=req.deadline_ms)
    return decision


def _cloud_as_asked(reason: str, policy: RoutingPolicy, obs: Observation, req: RequestView,
                    memory: RouterMemory) -> Decision:
    """The cloud and nothing but its answer, however late (no deadline backup: the edge steps in only
    when the cloud call fails); the edge, marked ``fallback``, while the link is unusable."""
    if not obs.link.usable:
        return _edge(obs.link.unusable_reason, obs, memory, policy, fallback=True)
    return replace(_cloud(reason, obs, req, memory, policy), edge_start_by_ms=None, edge_hold_until_ms=None)


# --------------------------------------------------------------------------- policies


def _edge_only(policy: RoutingPolicy, obs: Observation, req: RequestView, memory: RouterMemory) -> Decision:
    return _edge("policy_edge_only", obs, memory, policy)


def _cloud_only(policy: RoutingPolicy, obs: Observation, req: RequestView, memory: RouterMemory) -> Decision:
    # Always the cloud's answer, even a late one (the edge answers only when the cloud call fails or
    # the link is down, so a request is still never dropped).
    return _cloud_as_asked("policy_cloud_only", policy, obs, req, memory)


def _latency_aware(
    policy: RoutingPolicy, obs: Observation, req: RequestView, memory: RouterMemory
) -> Decision:
    link, edge = obs.link, obs.edge
    if not link.usable:
        return _edge(link.unusable_reason, obs, memory, policy)
    cloud_ms = predicted_cloud_ms(policy, link)
    if cloud_ms is None:
        return _edge("rtt_unknown", obs, memory, policy)
    edge_ms = predicted_edge_ms(policy, edge)
    edge_makes_it = edge_ms <= req.deadline_ms
    cloud_makes_it = cloud_ms <= req.deadline_ms
    if memory.cloud_preferred:
        if cloud_makes_it:
            return _cloud("rtt_ok", obs, req, memory, policy)
        if edge_makes_it:
            return _edge("deadline", obs, memory, policy)
    else:
        overloaded = overload_reason(policy, edge)
        if overloaded is not None and cloud_makes_it:
            # A busy device sheds work to a healthy cloud, even though the RTT alone would keep it here.
            return _offload(overloaded, obs, req, memory, policy)
        if edge_makes_it:
            return _edge("rtt_high", obs, memory, policy)
        if cloud_makes_it:
            return _cloud("edge_busy", obs, req, memory, policy)
    # Neither is predicted to make it: the faster prediction is the best effort.
    if cloud_ms < edge_ms:
        return _cloud("best_effort", obs, req, memory, policy)
    return _edge("best_effort", obs, memory, policy)


def _hedged(policy: RoutingPolicy, obs: Observation, req: RequestView, memory: RouterMemory) -> Decision:
    decision = _latency_aware(policy, obs, req, memory)
    if decision.tier is not Tier.CLOUD or decision.edge_start_by_ms is None or decision.reason in OFFLOAD_REASONS:
        # An offloaded request keeps only the deadline backup: hedging would pile work on a busy edge.
        return decision
    # Without a configured delay, hedge once the cloud is later than its usual tail (high percentile).
    delay = policy.hedge_delay_ms
    if delay is None and obs.link.rtt_high_ms is not None:
        delay = obs.link.rtt_high_ms + obs.link.cloud_compute_ms
    if delay is None or delay >= decision.edge_start_by_ms:
        # The deadline backup starts first anyway: it runs as for latency_aware (its early answer is
        # held for the cloud's), no race.
        return decision
    return replace(decision, edge_start_by_ms=delay, edge_hold_until_ms=None, hedged=True)


def _cascade(policy: RoutingPolicy, obs: Observation, req: RequestView, memory: RouterMemory) -> Decision:
    decision = _latency_aware(policy, obs, req, memory)
    if decision.tier is Tier.CLOUD and decision.reason in OFFLOAD_REASONS:
        return decision  # the edge is too busy to go first: straight to the cloud
    if decision.tier is Tier.CLOUD and policy.cascade_threshold_for(req.model) is not None:
        return _edge_then_cloud(policy, obs, req, memory)
    return decision


def _edge_then_cloud(policy: RoutingPolicy, obs: Observation, req: RequestView, memory: RouterMemory):
    # Escalation only pays when the edge answer plus a cloud round trip still fits the deadline.
    edge_ms = predicted_edge_ms(policy, obs.edge)
    cloud_ms = predicted_cloud_ms(policy, obs.link) or 0.0
    room = edge_ms + cloud_ms <= req.deadline_ms
    return replace(
        _edge("cascade", obs, memory, policy),
        escalate_below=policy.cascade_threshold_for(req.model) if room else None,
    )


_POLICIES: dict[Policy, Callable[[RoutingPolicy, Observation, RequestView, RouterMemory], Decision]] = {
    Policy.EDGE_ONLY: _edge_only,
    Policy.CLOUD_ONLY: _cloud_only,
    Policy.LATENCY_AWARE: _latency_aware,
    Policy.HEDGED: _hedged,
    Policy.CASCADE: _cascade,
}


# --------------------------------------------------------------------------- entry point


def decide(policy: RoutingPolicy, obs: Observation, req: RequestView) -> Decision:
    """Route one request. The returned ``memory`` must be fed into the next ``Observation``."""
    memory = next_memory(policy, obs.link, obs.memory)
    if req.route == Tier.EDGE.value:
        return _edge("requested_edge", obs, memory, policy)
    if req.route not in ("auto", Tier.CLOUD.value):
        raise ValueError(f"route must be auto, edge or cloud, got {req.route!r}")
    if obs.link.version_missing and policy.policy is not Policy.EDGE_ONLY:
        # The cloud cannot answer this model at the edge's version: the edge does, as for a down link
        # (a fallback when the cloud was asked for by the request or the policy).
        asked = req.route == Tier.CLOUD.value or policy.policy is Policy.CLOUD_ONLY
        return _edge(CLOUD_VERSION_MISSING, obs, memory, policy, fallback=asked)
    if req.route == Tier.CLOUD.value:
        # Honoured as asked: wait for the cloud's answer; the edge steps in only if the cloud fails.
        return _cloud_as_asked("requested_cloud", policy, obs, req, memory)
    return _POLICIES[policy.policy](policy, obs, req, memory)
