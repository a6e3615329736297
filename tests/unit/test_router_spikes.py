"""A delay spike must not hold requests at the edge once it has passed; a lasting slow-down must still
move them there and keep them there. And the edge backup of a cloud request: when it starts, how long
its answer waits for the cloud's.

The simulation below drives the real ``RttEstimator`` and ``decide`` with a fake clock over a link
whose round trip is a function of the send time, and builds the router's ``LinkView`` the way
``fogline.agent.cloud_link.CloudLink.view`` does (in-band samples per model, ``ServerReady`` probes every 50 ms
while no request is out and after 200 ms without a sample otherwise, calls still waiting as
``outstanding_ms``, a second waiting request as the witness of a slow link).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from router_fixtures import request

from fogline.agent.router import backup_hold_until_ms, backup_start_ms, decide
from fogline.agent.router_types import EdgeView, LinkView, Observation, RouterMemory, RoutingPolicy, Tier
from fogline.agent.rtt import RttEstimator

pytestmark = pytest.mark.unit

LA = RoutingPolicy(policy="latency_aware", slo_ms=100, rtt_threshold_ms=150, rtt_recover_ms=100)
EDGE = EdgeView(service_ms=5.0, service_high_ms=8.0)
BASE_RTT = 30.0


@dataclass
class _Call:
    sent: float
    back: float
    model: str | None  # None: a probe


def simulate(rtt_at: Callable[[float], float], until_ms: float, *, typical: bool = True,
             every_ms: float = 50.0) -> list[tuple[float, Tier, str, bool]]:
    """Requests every ``every_ms`` (digits and minilm in turn) routed by ``latency_aware``; returns
    ``(sent_ms, tier, reason, cloud_preferred)`` per request. ``typical=False`` routes without the
    typical round trip (the router as it was before it had one)."""
    est = RttEstimator(recent=2)
    calls: list[_Call] = []
    memory = RouterMemory()
    last_probe = -1e9
    out = []
    step = 5.0
    t = 0.0
    while t < until_ms:
        for call in [c for c in calls if c.back <= t]:
            calls.remove(call)
            est.observe(call.back - call.sent, call.back, call.sent, call.model)
        requests = [c for c in calls if c.model is not None]
        probes = [c for c in calls if c.model is None]
        last = last_probe if not requests else max(last_probe, est.last_sample_at or -1e9)
        if t - last >= (200.0 if requests else 50.0) and len(probes) < 12:
            last_probe = t
            calls.append(_Call(t, t + rtt_at(t), None))
        if t % every_ms == 0:
            model = "digits" if (t // every_ms) % 2 else "minilm"
            fresh = est.fresh_sent_at if est.fresh_sent_at is not None else -1e9
            waiting = [c for c in requests if c.sent >= fresh]
            witness = waiting[1] if len(waiting) > 1 else (waiting[0] if waiting else None)
            outstanding = t - witness.sent if witness is not None else 0.0
            for probe in probes:
                if probe.sent >= fresh:
                    outstanding = max(outstanding, t - probe.sent)
            snap = est.snapshot(t, model)
            link = LinkView(usable=True, rtt_ms=snap.smoothed_ms, rtt_high_ms=snap.high_ms,
                            rtt_recent_ms=snap.recent_max_ms,
                            rtt_typical_ms=snap.typical_ms if typical else None, outstanding_ms=outstanding)
            d = decide(LA, Observation(link, EDGE, memory), request(model=model))
            memory = d.memory
            out.append((t, d.tier, d.reason, memory.cloud_preferred))
            if d.tier is Tier.CLOUD:
                calls.append(_Call(t, t + rtt_at(t), model))
        t += step
    return out


def spike(at_ms: float, stall_ms: float) -> Callable[[float], float]:
    """The base round trip, but a call sent during the stall waits until it drains (a queue)."""
    return lambda t: BASE_RTT + (max(0.0, at_ms + stall_ms - t) if t >= at_ms else 0.0)


def step(at_ms: float, rtt_ms: float, back_ms: float | None = None) -> Callable[[float], float]:
    """The base round trip until ``at_ms``, then ``rtt_ms`` (until ``back_ms``, draining after it)."""
    def rtt(t: float) -> float:
        if t < at_ms:
            return BASE_RTT
        if back_ms is None or t < back_ms:
            return rtt_ms
        return max(BASE_RTT, rtt_ms - (t - back_ms))
    return rtt


def edge_after(decisions, start_ms: float, end_ms: float = 1e12) -> list[tuple[float, str]]:
    return [(t, reason) for t, tier, reason, _ in decisions if start_ms <= t < end_ms and tier is Tier.EDGE]


def test_one_spike_does_not_hold_the_edge_once_it_has_drained():
    # A 200 ms stall at 2 s (requests every 20 ms): the calls caught in it come back together at
    # about 2.23 s, all slow (up to 230 ms, enough to leave the cloud: the threshold is 150 ms).
    decisions = simulate(spike(2000.0, 200.0), 4000.0, every_ms=20.0)
    assert not edge_after(decisions, 500.0, 2000.0)  # after the first samples
    assert edge_after(decisions, 2000.0, 2240.0)  # the router did see the stall (calls waiting)
    # Once the burst is back, the link answers at its usual speed again: the cloud at once.
    assert edge_after(decisions, 2240.0) == []
    assert decisions[-1][3]  # the cloud is preferred again
    # Without the typical round trip, the average and the last samples kept the edge until two
    # fresh probes had come back.
    before = simulate(spike(2000.0, 200.0), 4000.0, typical=False, every_ms=20.0)
    assert len(edge_after(before, 2240.0)) >= 2


def test_spikes_one_after_another_each_pass():
    def two(t: float) -> float:
        return max(spike(1500.0, 180.0)(t), spike(2600.0, 150.0)(t))
    decisions = simulate(two, 4000.0, every_ms=20.0)
    assert edge_after(decisions, 1730.0, 2600.0) == []
    assert edge_after(decisions, 2800.0) == []


def test_a_lasting_slow_down_moves_to_the_edge_quickly_and_stays():
    decisions = simulate(step(2000.0, 500.0), 5000.0)
    assert not edge_after(decisions, 500.0, 2000.0)  # after the first samples
    # Within one 200 ms probe interval every request goes to the edge, and none returns to the
    # cloud while the link stays bad (the typical round trip is still the old one for about a
    # second: the calls waiting in the slow link keep the router's estimate up meanwhile).
    late = [(t, tier) for t, tier, _, _ in decisions if t >= 2200.0 and tier is Tier.CLOUD]
    assert late == []
    assert not any(preferred for t, _, _, preferred in decisions if t >= 2200.0)


def test_a_recovered_link_is_used_again():
    # Bad from 1 s to 3 s, then the 500 ms backlog drains by about 3.47 s.
    decisions = simulate(step(1000.0, 500.0, back_ms=3000.0), 5000.0)
    assert [t for t, tier, _, _ in decisions if 1200.0 <= t < 3000.0 and tier is Tier.CLOUD] == []
    back = [t for t, tier, _, _ in decisions if t >= 3000.0 and tier is Tier.CLOUD]
    assert back and back[0] < 3470.0 + 300.0
    assert edge_after(decisions, back[0] + 200.0) == []


# --------------------------------------------------------------------------- the edge backup


def test_backup_starts_early_and_its_answer_waits_for_the_cloud():
    edge = EdgeView(service_ms=6.0, service_high_ms=10.0, scheduling_ms=2.0)
    # Held until 100 - 15 = 85 ms; a slow run counted twice (2 x 10) + 2 ms lateness + 5 ms margin.
    assert backup_hold_until_ms(LA, 100.0) == 85.0
    assert backup_start_ms(LA, edge, 100.0) == pytest.approx(85.0 - 20.0 - 2.0 - 5.0)
    queued = replace(edge, queue_depth=2)  # two ahead: 3 x 10 + 10 again for this run
    assert backup_start_ms(LA, queued, 100.0) == pytest.approx(85.0 - 40.0 - 2.0 - 5.0)
    assert backup_start_ms(LA, edge, 20.0) == 0.0
    plain = RoutingPolicy(backup_margin_ms=0.0, backup_budget_factor=1.0)
    assert backup_start_ms(plain, edge, 100.0) == pytest.approx(100.0 - 10.0 - 2.0 - 5.0)


def test_hold_applies_to_deadline_backups_only():
    link = LinkView(usable=True, rtt_ms=20.0, rtt_high_ms=40.0)
    obs = Observation(link, EDGE, RouterMemory(cloud_preferred=True))
    la = decide(LA, obs, request(model="m"))
    assert la.tier is Tier.CLOUD and la.edge_hold_until_ms == 85.0
    cloud_only = decide(replace(LA, policy="cloud_only"), obs, request(model="m"))
    # cloud_only has no deadline backup at all: it waits for the cloud (the edge only on failure).
    assert cloud_only.tier is Tier.CLOUD
    assert cloud_only.edge_start_by_ms is None and cloud_only.edge_hold_until_ms is None
    # Hedging races the edge against the cloud's tail (here 40 ms): the first answer wins at once...
    hedged = decide(replace(LA, policy="hedged"), obs, request(model="m"))
    assert hedged.hedged and hedged.route_reason == "rtt_ok+hedge" and hedged.edge_hold_until_ms is None
    assert hedged.edge_start_by_ms == 40.0
    # ...unless the deadline backup would start first anyway (a tail of 90 ms): then no race.
    slow_tail = Observation(replace(link, rtt_high_ms=90.0), EDGE, obs.memory)
    backup = decide(replace(LA, policy="hedged"), slow_tail, request(model="m"))
    assert backup.route_reason == "rtt_ok" and not backup.hedged and backup.edge_hold_until_ms == 85.0
    assert backup.edge_start_by_ms == la.edge_start_by_ms
    asked = decide(LA, obs, request(model="m", route="cloud"))
    assert asked.edge_start_by_ms is None and asked.edge_hold_until_ms is None


def test_backup_settings_are_validated():
    with pytest.raises(ValueError, match="backup_margin_ms"):
        RoutingPolicy(backup_margin_ms=-1.0)
    with pytest.raises(ValueError, match="backup_budget_factor"):
        RoutingPolicy(backup_budget_factor=0.5)


# --------------------------------------------------------------------------- the typical round trip


def test_typical_is_the_median_of_the_models_own_samples():
    est = RttEstimator(typical_window_ms=1000.0, typical_min_samples=3)
    assert est.typical_ms("a") is None
    est.observe(30.0, now_ms=130.0, sent_at_ms=100.0, model="a")
    est.observe(120.0, now_ms=320.0, sent_at_ms=200.0, model="b")  # a large answer on a narrow link
    est.observe(20.0, now_ms=320.0, sent_at_ms=300.0)  # a probe: small, so it says little about "b"
    est.observe(40.0, now_ms=440.0, sent_at_ms=400.0, model="a")
    assert est.typical_ms("a") is None  # two samples of its own: too few
    est.observe(50.0, now_ms=560.0, sent_at_ms=510.0, model="a")
    assert est.typical_ms("a") == 40.0  # 30, 40, 50
    est.observe(130.0, now_ms=630.0, sent_at_ms=500.0, model="b")
    est.observe(110.0, now_ms=650.0, sent_at_ms=520.0, model="b")
    assert est.typical_ms("b") == 120.0  # "b"'s answers are slow, "a"'s are not
    assert est.typical_ms() == 50.0  # every sample, probes too: 20 30 40 50 110 120 130
    est.observe(60.0, now_ms=700.0, sent_at_ms=640.0, model="a")
    assert est.typical_ms("a") == 45.0  # an even count: the mean of the middle two (40, 50)
    assert est.snapshot(700.0, "a").typical_ms == 45.0


def test_a_burst_of_slow_samples_is_outvoted_a_lasting_change_is_not():
    est = RttEstimator()
    t = 0.0
    for _ in range(20):  # a second of a good link, a sample every 50 ms
        est.observe(30.0, now_ms=t + 30.0, sent_at_ms=t, model="m")
        t += 50.0
    for lag in (200.0, 180.0, 150.0):  # three calls caught in one stall
        est.observe(lag, now_ms=t + lag, sent_at_ms=t, model="m")
        t += 20.0
    assert est.typical_ms("m") == 30.0
    snap = est.snapshot(t, "m")
    assert snap.recent_max_ms >= 150.0 and snap.smoothed_ms > 90.0  # what used to hold the edge
    for _ in range(20):  # then the link turns slow for good
        est.observe(500.0, now_ms=t + 500.0, sent_at_ms=t, model="m")
        t += 50.0
    assert est.typical_ms("m") == 500.0


def test_typical_window_follows_the_freshest_send_and_restart_forgets_it():
    est = RttEstimator(typical_window_ms=100.0, typical_min_samples=1)
    est.observe(300.0, now_ms=300.0, sent_at_ms=0.0)
    est.observe(10.0, now_ms=260.0, sent_at_ms=250.0)
    assert est.typical_ms() == 10.0  # the 300 ms sample was sent 250 ms before the freshest one
    est.restart()
    assert est.typical_ms() is None
    with pytest.raises(ValueError):
        RttEstimator(typical_window_ms=0.0)
    with pytest.raises(ValueError):
        RttEstimator(typical_min_samples=0)
