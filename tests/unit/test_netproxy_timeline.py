"""The proxy's timeline mode: D(t) as a deterministic, queue-like function of time (the proxy
delaying real bytes by it is in tests/integration/test_netproxy.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogline.netproxy.proxy import NetConditions
from fogline.netproxy.timeline import LinkTimeline, slot_delay_ms

pytestmark = pytest.mark.unit

JITTERY = NetConditions(delay_ms=10, jitter_ms=4, jitter_dist="pareto", jitter_slot_ms=20)


def _d_ms(tl: LinkTimeline, direction: str, s: float) -> float:
    """d(s) from the definition: the phase in force at s, and the jitter of s's slot in it."""
    phase = tl.phases[tl.phase_index(s)]
    c = phase.conditions
    slot = int((s - phase.start_s) * 1000 // c.jitter_slot_ms) if c.jitter_ms and s >= phase.start_s else 0
    return slot_delay_ms(c, tl.seed, direction, slot)


def _brute_force_ms(tl: LinkTimeline, direction: str, t: float, step: float = 1e-4) -> float:
    """D(t) = max over s <= t of (s + d(s)) - t, on a dense grid of s from 0.5 s before the first phase."""
    best = t + _d_ms(tl, direction, t) / 1000.0
    s = tl.phases[0].start_s - 0.5
    while s < t:
        best = max(best, s + _d_ms(tl, direction, s) / 1000.0)
        s += step
    return (best - t) * 1000.0


def test_a_step_down_drains_at_real_time_speed_and_a_step_up_is_immediate():
    tl = LinkTimeline(3, [])
    tl.apply(0.0, NetConditions(delay_ms=250))
    tl.apply(6.0, NetConditions(delay_ms=5))
    tl.apply(8.0, NetConditions(delay_ms=250))
    assert tl.one_way_ms("up", 5.0) == pytest.approx(250)
    assert tl.one_way_ms("up", 6.0) == pytest.approx(250)  # bytes just before the step are still queued
    assert tl.one_way_ms("up", 6.1) == pytest.approx(150)
    assert tl.one_way_ms("down", 6.2) == pytest.approx(50)
    assert tl.one_way_ms("up", 6.3) == pytest.approx(5)
    assert tl.one_way_ms("up", 8.0) == pytest.approx(250)  # a step up holds at once
    # Before the first phase its delay holds; a round trip chains up, service and down.
    assert tl.one_way_ms("up", -1.0) == pytest.approx(250)
    assert tl.round_trip_ms(7.0, service_ms=20) == pytest.approx(30)
    # Up at 5.9 arrives at 6.15, answered at 6.17: the down link still drains until 6.25.
    assert tl.round_trip_ms(5.9, service_ms=20) == pytest.approx(350)


def test_jitter_is_a_deterministic_function_of_seed_direction_and_slot():
    a = LinkTimeline(11, [])
    a.apply(100.0, JITTERY)
    b = LinkTimeline(11, [])
    b.apply(-3.0, JITTERY)  # another clock: the slots count from when the conditions were applied
    grid = [k * 0.007 + 0.0031 for k in range(1500)]  # off the slot edges (float sums differ there)
    ups = [a.one_way_ms("up", 100.0 + t) for t in grid]
    assert ups == pytest.approx([b.one_way_ms("up", -3.0 + t) for t in grid], abs=1e-6)
    assert ups != [a.one_way_ms("down", 100.0 + t) for t in grid]
    other = LinkTimeline(12, [])
    other.apply(100.0, JITTERY)
    assert ups != [other.one_way_ms("up", 100.0 + t) for t in grid]
    # Heavy-tailed: mostly near the base delay, sometimes far above it, never above the cap.
    ordered = sorted(ups)
    assert 10 <= ordered[len(ordered) // 2] < 25
    assert ordered[-1] > 60 and ordered[-1] <= JITTERY.max_delay_ms + 1e-9
    assert min(ups) >= 10 - 1e-9


def test_timeline_matches_the_definition_across_phases():
    tl = LinkTimeline(5, [])
    tl.apply(0.0, JITTERY)
    tl.apply(0.7, NetConditions(delay_ms=5))
    tl.apply(0.9, NetConditions(delay_ms=5, blackhole=True))
    tl.apply(1.1, NetConditions(delay_ms=120, jitter_ms=2, jitter_dist="uniform", jitter_slot_ms=7))
    for t in [0.0, 0.013, 0.25, 0.5, 0.69, 0.7, 0.71, 0.8, 0.95, 1.1, 1.15, 1.3]:
        for direction in ("up", "down"):
            assert tl.one_way_ms(direction, t) == pytest.approx(_brute_force_ms(tl, direction, t), abs=0.15), (
                direction, t)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), times=st.lists(st.floats(0, 3), min_size=2, max_size=30))
def test_delivery_is_fifo(seed, times):
    tl = LinkTimeline(seed, [])
    tl.apply(0.0, JITTERY)
    tl.apply(1.0, NetConditions(delay_ms=200))
    tl.apply(2.0, NetConditions(delay_ms=1))
    arrivals = [tl.arrival_s("up", t) for t in sorted(times)]
    assert arrivals == sorted(arrivals)
    assert all(a >= t for a, t in zip(arrivals, sorted(times), strict=True))


def test_conditions_that_do_not_fit_timeline_mode_are_refused():
    tl = LinkTimeline(1, [])
    with pytest.raises(ValueError, match="jitter_slot_ms"):
        tl.apply(0.0, NetConditions(delay_ms=10, jitter_ms=4))
    tl.apply(1.0, NetConditions(delay_ms=10))
    with pytest.raises(ValueError, match="time order"):
        tl.apply(0.5, NetConditions(delay_ms=10))
    with pytest.raises(ValueError, match="direction"):
        tl.one_way_ms("sideways", 1.0)
    with pytest.raises(ValueError, match="jitter_slot_ms"):
        NetConditions(jitter_slot_ms=-1)
