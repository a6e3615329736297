"""The router as a pure function: every policy, the hysteresis band, deadlines, the route parameter, a
cloud that refuses the agent's credentials (link state ``cloud_unauthenticated``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from router_fixtures import observation, request

from fogline.agent.router import decide, next_memory
from fogline.agent.router_types import (
    CLOUD_UNAUTHENTICATED,
    Decision,
    EdgeView,
    LinkView,
    Policy,
    RequestView,
    RouterMemory,
    RoutingPolicy,
    Tier,
)
from fogline.fleet.model import LoadConfig, RoutingConfig

pytestmark = pytest.mark.unit

LA = RoutingPolicy(policy=Policy.LATENCY_AWARE, slo_ms=100, rtt_threshold_ms=150, rtt_recover_ms=100)


obs = observation
req = request


def test_good_link_prefers_cloud_with_an_edge_backup_timer():
    d = decide(LA, obs(rtt=20), req(deadline=100))
    assert d.tier is Tier.CLOUD and d.reason == "rtt_ok" and not d.fallback
    # The edge answers by 85 ms (100 less the 15 ms backup margin) even if its run takes twice the
    # 10 ms expected (+ 5 ms margin): start by 60 ms, and hold an early answer until 85 ms.
    assert d.edge_start_by_ms == pytest.approx(60.0)
    assert d.edge_hold_until_ms == pytest.approx(85.0)
    assert d.predicted_cloud_ms == pytest.approx(25.0)


def test_first_measurement_below_recover_switches_preference_on():
    d = decide(LA, obs(rtt=30, preferred=False), req())
    assert d.tier is Tier.CLOUD and d.memory.cloud_preferred


def test_hysteresis_band_keeps_current_preference():
    # 120 ms sits between recover (100) and threshold (150): whatever was preferred stays preferred.
    up = decide(LA, obs(rtt=120, preferred=True), req(deadline=1000))
    down = decide(LA, obs(rtt=120, preferred=False), req(deadline=1000))
    assert up.tier is Tier.CLOUD and up.memory.cloud_preferred
    assert down.tier is Tier.EDGE and down.reason == "rtt_high" and not down.memory.cloud_preferred


def test_above_threshold_stops_preferring_cloud():
    d = decide(LA, obs(rtt=160, preferred=True), req(deadline=1000))
    assert d.tier is Tier.EDGE and d.reason == "rtt_high" and not d.memory.cloud_preferred


def test_full_hysteresis_cycle_through_memory():
    memory = RouterMemory(cloud_preferred=False)
    seen = []
    for rtt in [50, 120, 140, 160, 140, 120, 105, 99, 120]:
        d = decide(LA, replace(obs(rtt=rtt), memory=memory), req(deadline=1000))
        memory = d.memory
        seen.append(d.tier.value)
    assert seen == ["cloud", "cloud", "cloud", "edge", "edge", "edge", "edge", "cloud", "cloud"]


def test_outstanding_call_age_counts_as_rtt_before_answers_return():
    # Smoothed RTT still says 10 ms, but a cloud call has been out for 200 ms: the link got slow.
    d = decide(LA, obs(rtt=10, outstanding=200), req(deadline=1000))
    assert d.tier is Tier.EDGE and not d.memory.cloud_preferred


def test_cloud_predicted_to_miss_deadline_goes_to_edge_even_if_preferred():
    d = decide(LA, obs(rtt=90, compute=20), req(deadline=100))
    assert d.tier is Tier.EDGE and d.reason == "deadline"
    assert d.memory.cloud_preferred  # the preference itself is unchanged


def test_busy_edge_offloads_to_cloud_when_only_cloud_makes_the_deadline():
    d = decide(LA, obs(rtt=120, preferred=False, queue=20, service=10), req(deadline=200))
    assert d.tier is Tier.CLOUD and d.reason == "edge_busy"


def test_both_miss_picks_the_faster_prediction():
    slow_edge = decide(LA, obs(rtt=60, preferred=True, queue=20, service=10), req(deadline=50))
    assert slow_edge.tier is Tier.CLOUD and slow_edge.reason == "best_effort"
    slow_cloud = decide(LA, obs(rtt=500, preferred=False, service=80), req(deadline=50))
    assert slow_cloud.tier is Tier.EDGE and slow_cloud.reason == "best_effort"


def test_unknown_rtt_stays_on_edge():
    d = decide(LA, obs(rtt=None, preferred=True), req())
    assert d.tier is Tier.EDGE and d.reason == "rtt_unknown" and not d.memory.cloud_preferred


def test_unusable_link_goes_to_edge_with_the_link_state_as_reason():
    d = decide(LA, obs(usable=False, state="breaker_open"), req())
    assert d.tier is Tier.EDGE and d.reason == "link_breaker_open" and not d.fallback
    assert decide(LA, obs(usable=False, state=""), req()).reason == "link_down"


@pytest.mark.parametrize("route", ["auto", "edge", "cloud"])
@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize("state", ["not_configured", "down", "breaker_open"])
def test_no_policy_or_route_sends_work_to_an_unusable_link(policy, route, state):
    # What the data plane relies on for a device without a cloud (its link view is ``not_configured``).
    settings = RoutingPolicy(policy=policy, cascade_threshold=0.5, hedge_delay_ms=1, max_queue_depth=1, cpu_high=0.1)
    for link in (obs(usable=False, state=state), obs(rtt=None, usable=False, state=state, queue=9)):
        d = decide(settings, link, req(route=route))
        assert d.tier is Tier.EDGE and d.escalate_below is None and not d.hedged


def test_route_edge_and_cloud_are_honoured():
    assert decide(LA, obs(rtt=10), req(route="edge")).tier is Tier.EDGE
    assert decide(LA, obs(rtt=10), req(route="edge")).reason == "requested_edge"
    d = decide(LA, obs(rtt=900, preferred=False), req(route="cloud"))
    assert d.tier is Tier.CLOUD and d.reason == "requested_cloud" and d.edge_start_by_ms is None


def test_route_cloud_with_link_down_falls_back_to_edge():
    d = decide(LA, obs(usable=False, state="down"), req(route="cloud"))
    assert d.tier is Tier.EDGE and d.fallback and d.reason == "link_down"


def test_bad_route_is_refused():
    with pytest.raises(ValueError, match="route"):
        decide(LA, obs(), req(route="moon"))


def test_edge_only_and_cloud_only():
    edge_only = RoutingPolicy(policy="edge_only")
    cloud_only = RoutingPolicy(policy="cloud_only")
    assert decide(edge_only, obs(rtt=1), req()).tier is Tier.EDGE
    d = decide(cloud_only, obs(rtt=900, preferred=False), req())
    assert d.tier is Tier.CLOUD and d.reason == "policy_cloud_only"
    down = decide(cloud_only, obs(usable=False, state="down"), req())
    assert down.tier is Tier.EDGE and down.fallback


def test_edge_backup_timer_accounts_for_queue():
    d = decide(LA, obs(rtt=10, queue=3, service=10), req(deadline=100))
    # 3 ahead + this one = 40 ms of edge work, this run budgeted twice (+10), + 5 ms margin, done by 85.
    assert d.tier is Tier.CLOUD and d.edge_start_by_ms == pytest.approx(30.0)


def test_edge_backup_timer_never_negative():
    d = decide(LA, obs(rtt=5, queue=0, service=10), req(deadline=12))
    assert d.tier is Tier.CLOUD and d.edge_start_by_ms == 0.0


def test_hedged_starts_edge_after_hedge_delay():
    hedged = RoutingPolicy(policy="hedged", hedge_delay_ms=30)
    d = decide(hedged, obs(rtt=10), req(deadline=100))
    assert d.tier is Tier.CLOUD and d.edge_start_by_ms == 30 and d.edge_hold_until_ms is None
    assert d.reason == "rtt_ok" and d.hedged and d.route_reason == "rtt_ok+hedge"
    assert decide(LA, obs(rtt=10), req(deadline=100)).route_reason == "rtt_ok"  # only a hedge is marked
    by_tail = RoutingPolicy(policy="hedged")
    o = obs(LinkView(usable=True, rtt_ms=10, rtt_high_ms=20, cloud_compute_ms=4))
    assert decide(by_tail, o, req(deadline=100)).edge_start_by_ms == 24


def test_cascade_runs_edge_first_with_escalation_when_there_is_room():
    cascade = RoutingPolicy(policy="cascade", cascade_threshold=0.8)
    d = decide(cascade, obs(rtt=10), req(deadline=100))
    assert d.tier is Tier.EDGE and d.escalate_below == 0.8
    tight = decide(cascade, obs(rtt=10, service=60), req(deadline=70))
    assert tight.escalate_below is None
    per_model = RoutingPolicy(policy="cascade", cascade_threshold=0.8, cascade_thresholds=(("digits", 0.95),))
    assert decide(per_model, obs(rtt=10), req(deadline=100)).escalate_below == 0.95
    other = decide(per_model, obs(rtt=10), RequestView(model="minilm", deadline_ms=100))
    assert other.escalate_below == 0.8


def test_policy_validation_and_from_config():
    with pytest.raises(ValueError, match="hysteresis"):
        RoutingPolicy(rtt_threshold_ms=100, rtt_recover_ms=150)
    with pytest.raises(ValueError):
        RoutingPolicy(policy="fastest")
    with pytest.raises(ValueError, match="below rtt_threshold_ms"):  # the fleet model's rule: no empty band
        RoutingPolicy(rtt_threshold_ms=100, rtt_recover_ms=100)
    routing = RoutingConfig(policy="cloud_only", slo_ms=50, rtt_threshold_ms=80, rtt_recover_ms=60,
                            cascade_thresholds={"digits": 0.7})
    p = RoutingPolicy.from_config(routing, LoadConfig())
    assert p.policy is Policy.CLOUD_ONLY and p.slo_ms == 50 and p.rtt_recover_ms == 60
    assert p.cascade_threshold_for("digits") == 0.7 and p.cascade_threshold_for("minilm") == 0.8
    assert RoutingPolicy(cascade_threshold=None).cascade_threshold_for("minilm") is None


def test_next_memory_is_pure():
    link = LinkView(usable=True, rtt_ms=200)
    before = RouterMemory(cloud_preferred=True)
    after = next_memory(LA, link, before)
    assert before.cloud_preferred and not after.cloud_preferred
    assert isinstance(decide(LA, obs(), req()), Decision)


def test_backup_timer_budgets_for_slow_edge_runs():
    slow_tail = replace(obs(rtt=10, service=10), edge=EdgeView(service_ms=10, service_high_ms=30))
    d = decide(LA, slow_tail, req(deadline=100))
    assert d.tier is Tier.CLOUD and d.edge_start_by_ms == pytest.approx(20.0)  # 100 - 15 - 2 x 30 - 5


def test_recent_low_samples_recover_before_the_average_does():
    # The average still remembers a slow spell (400 ms); the last three samples are all 12 ms.
    link = LinkView(usable=True, rtt_ms=400, rtt_recent_ms=12)
    assert link.effective_rtt_ms == 12
    assert next_memory(LA, link, RouterMemory(cloud_preferred=False)).cloud_preferred
    # One slow sample among the recent ones: the average decides, as before.
    spiky = LinkView(usable=True, rtt_ms=40, rtt_recent_ms=300)
    assert spiky.effective_rtt_ms == 40
    # Calls still waiting override both.
    waiting = LinkView(usable=True, rtt_ms=400, rtt_recent_ms=12, outstanding_ms=250)
    assert waiting.effective_rtt_ms == 250
    assert not next_memory(LA, waiting, RouterMemory(cloud_preferred=True)).cloud_preferred


# --------------------------------------------------------------------------- a cloud that refuses our credentials

REFUSED = LinkView(usable=False, state=CLOUD_UNAUTHENTICATED, rtt_ms=5.0, rtt_recent_ms=5.0)


def observe(link=REFUSED, *, preferred=True, queue=0):
    return observation(link, preferred=preferred, queue=queue)


@pytest.mark.parametrize("policy", list(Policy))
def test_every_policy_keeps_requests_on_the_edge_with_the_auth_reason(policy):
    settings = RoutingPolicy(policy=policy, cascade_threshold=0.5, max_queue_depth=2, cpu_high=0.5)
    decision = decide(settings, observe(), RequestView("digits"))
    assert decision.tier is Tier.EDGE
    expected = "policy_edge_only" if policy is Policy.EDGE_ONLY else CLOUD_UNAUTHENTICATED
    assert decision.reason == expected
    assert decision.escalate_below is None  # a cascade never escalates to a cloud that refuses us


def test_an_overloaded_edge_still_does_not_offload_to_a_refusing_cloud():
    settings = RoutingPolicy(max_queue_depth=2)
    decision = decide(settings, observe(queue=50), RequestView("digits"))
    assert decision.tier is Tier.EDGE and decision.reason == CLOUD_UNAUTHENTICATED


def test_requested_cloud_is_answered_by_the_edge_marked_fallback():
    decision = decide(RoutingPolicy(), observe(), RequestView("digits", route="cloud"))
    assert decision.tier is Tier.EDGE and decision.fallback
    assert decision.reason == CLOUD_UNAUTHENTICATED


def test_cloud_only_falls_back_with_the_auth_reason():
    decision = decide(RoutingPolicy(policy=Policy.CLOUD_ONLY), observe(), RequestView("digits"))
    assert decision.tier is Tier.EDGE and decision.fallback and decision.reason == CLOUD_UNAUTHENTICATED


def test_the_cloud_preference_is_dropped_and_earned_again_after_acceptance():
    policy = RoutingPolicy()
    assert not next_memory(policy, REFUSED, RouterMemory(cloud_preferred=True)).cloud_preferred
    # Accepted again, the link has no RTT yet: nothing preferred until it is measured ...
    fresh = LinkView(usable=True, rtt_ms=None)
    assert not decide(policy, observe(fresh, preferred=False), RequestView("digits")).memory.cloud_preferred
    # ... and a good measurement brings the cloud back.
    good = LinkView(usable=True, rtt_ms=10.0)
    decision = decide(policy, observe(good, preferred=False), RequestView("digits"))
    assert decision.tier is Tier.CLOUD and decision.reason == "rtt_ok"


def test_other_unusable_states_keep_their_link_prefix():
    assert LinkView(usable=False, state="breaker_open").unusable_reason == "link_breaker_open"
    assert LinkView(usable=False, state="").unusable_reason == "link_down"
    assert REFUSED.unusable_reason == CLOUD_UNAUTHENTICATED
