"""RTT estimation and the circuit breaker, driven by a fake clock."""

from __future__ import annotations

import math

import pytest

from fogline.agent.breaker import BreakerState, CircuitBreaker
from fogline.agent.rtt import RttEstimator, inband_sample_ms

pytestmark = pytest.mark.unit


def test_inband_sample_subtracts_reported_compute():
    assert inband_sample_ms(1000.0, 1050.0, 30.0) == 20.0
    assert inband_sample_ms(1000.0, 1050.0, None) == 50.0
    assert inband_sample_ms(1000.0, 1050.0, 80.0) == 0.0  # never negative
    assert inband_sample_ms(1000.0, 1050.0, math.nan) == 50.0


def test_ewma_starts_at_first_sample_and_moves_by_alpha():
    est = RttEstimator(alpha=0.5)
    assert est.smoothed_ms is None and est.high_ms(0) is None
    est.observe(100, now_ms=0)
    assert est.smoothed_ms == 100
    est.observe(200, now_ms=10)
    assert est.smoothed_ms == 150
    est.observe(50, now_ms=20)
    assert est.smoothed_ms == 100


def test_high_percentile_over_window_forgets_old_samples():
    est = RttEstimator(window_ms=1000, percentile=95)
    for i in range(19):
        est.observe(10, now_ms=i)
    est.observe(500, now_ms=19)
    assert est.high_ms(20) == 10  # one outlier in 20 sits above the p95 (nearest rank 19)
    est.observe(400, now_ms=20)
    assert est.high_ms(20) == 400  # two in 21: rank 20 is the smaller outlier
    for i in range(40):
        est.observe(10, now_ms=100 + i)
    assert est.high_ms(140) == 10
    assert est.high_ms(5000) is None  # everything aged out


def test_recovery_from_600_ms_takes_a_handful_of_samples():
    est = RttEstimator(alpha=0.3)
    for t in range(10):
        est.observe(600, now_ms=t)
    n = 0
    while est.smoothed_ms >= 100:
        est.observe(10, now_ms=100 + n)
        n += 1
    assert 4 <= n <= 7


def test_snapshot_and_bad_samples():
    est = RttEstimator()
    est.observe(40, now_ms=1000)
    snap = est.snapshot(1300)
    assert snap.smoothed_ms == 40 and snap.samples == 1 and snap.age_ms == 300 and snap.last_ms == 40
    with pytest.raises(ValueError):
        est.observe(-1, now_ms=0)
    with pytest.raises(ValueError):
        est.observe(math.inf, now_ms=0)
    with pytest.raises(ValueError):
        RttEstimator(alpha=0)


def test_breaker_opens_after_threshold_then_half_opens():
    br = CircuitBreaker(failure_threshold=3, open_ms=500, max_open_ms=2000)
    assert br.state(0) is BreakerState.CLOSED and br.allows_traffic(0)
    br.record_failure(0)
    br.record_failure(10)
    assert br.state(10) is BreakerState.CLOSED
    br.record_failure(20)
    assert br.state(20) is BreakerState.OPEN and not br.allows_traffic(20)
    assert br.snapshot(120).retry_in_ms == pytest.approx(400)
    assert br.state(519) is BreakerState.OPEN
    assert br.state(520) is BreakerState.HALF_OPEN and not br.allows_traffic(520)


def test_breaker_success_closes_and_resets():
    br = CircuitBreaker(failure_threshold=2, open_ms=100)
    br.record_failure(0)
    br.record_success(1)
    br.record_failure(2)
    assert br.state(2) is BreakerState.CLOSED  # the count restarted
    br.record_failure(3)
    assert br.state(3) is BreakerState.OPEN
    br.record_success(200)
    assert br.state(200) is BreakerState.CLOSED and br.snapshot(200).consecutive_failures == 0


def test_failed_trial_reopens_for_longer_up_to_the_cap():
    br = CircuitBreaker(failure_threshold=1, open_ms=100, max_open_ms=300)
    br.record_failure(0)
    br.record_failure(100)  # half-open trial fails -> open for 200
    assert br.state(299) is BreakerState.OPEN and br.state(300) is BreakerState.HALF_OPEN
    br.record_failure(300)  # -> 400, capped at 300
    assert br.state(599) is BreakerState.OPEN and br.state(600) is BreakerState.HALF_OPEN
    br.record_success(600)
    br.record_failure(700)
    assert br.state(800) is BreakerState.HALF_OPEN  # back to the base period after a success


def test_trip_opens_immediately_and_failures_while_open_do_not_extend():
    br = CircuitBreaker(failure_threshold=5, open_ms=100)
    br.trip(0)
    assert br.state(0) is BreakerState.OPEN
    br.record_failure(50)
    assert br.state(100) is BreakerState.HALF_OPEN
    assert br.snapshot(0).opened_count == 1


def test_restart_reseeds_the_average_but_keeps_the_window():
    est = RttEstimator(alpha=0.1)
    for t in range(5):
        est.observe(600, now_ms=t)
    est.restart()
    assert est.smoothed_ms is None and est.high_ms(10) == 600
    est.observe(12, now_ms=20)
    assert est.smoothed_ms == 12


def test_cloud_models_compute_estimate_fades_and_errors_bench():
    from fogline.agent.cloud_models import CloudModels

    m = CloudModels(alpha=0.5, half_life_ms=1000, failures=2, bench_ms=100, max_bench_ms=300)
    assert m.compute_ms("a", 0) == 0.0
    m.answered("a", 40.0, now_ms=0)
    m.answered("a", 80.0, now_ms=0)
    assert m.compute_ms("a", 0) == 60.0 and m.compute_ms("a", 1000) == 30.0
    assert not m.failed("b", 0) and not m.benched("b", 0)
    assert m.failed("b", 10) and m.benched("b", 109) and not m.benched("b", 110)
    assert m.failed("b", 200) and m.benched("b", 399)  # the cool-down doubles...
    m.failed("b", 400)
    m.failed("b", 400)
    assert m.benched("b", 699) and not m.benched("b", 701)  # ...up to the cap
    m.answered("b", None, 800)
    assert not m.failed("b", 800)  # an answer starts the count afresh
    assert m.compute_ms("b", 800) == 0.0


def test_recent_max_covers_the_last_few_samples():
    est = RttEstimator(recent=3)
    assert est.snapshot(0).recent_max_ms is None
    for t, v in enumerate([600, 600, 10, 11]):
        est.observe(v, now_ms=t)
    assert est.snapshot(5).recent_max_ms == 600
    est.observe(9, now_ms=6)
    assert est.snapshot(7).recent_max_ms == 11
    est.restart()
    assert est.snapshot(8).recent_max_ms is None


def test_stale_samples_do_not_hide_a_recovery():
    """A probe sent into the slow link that answers after the recovery is older than the fresh ones:
    it feeds the average but not the recent samples the router reads a recovery from."""
    est = RttEstimator(alpha=0.3, recent=2)
    est.observe(500.0, now_ms=1000.0, sent_at_ms=500.0)
    est.observe(12.0, now_ms=1100.0, sent_at_ms=1088.0)
    est.observe(480.0, now_ms=1110.0, sent_at_ms=630.0)  # stale: sent before the fresh one
    est.observe(11.0, now_ms=1150.0, sent_at_ms=1139.0)
    snap = est.snapshot(1150.0)
    assert snap.recent_max_ms == 12.0
    assert snap.smoothed_ms > 100.0  # the average still remembers the slow link
    assert est.fresh_sent_at == 1139.0
    est.restart()
    assert est.fresh_sent_at is None and est.snapshot(1150.0).recent_max_ms is None


def test_one_low_sample_is_not_a_recovery_with_two_recent():
    est = RttEstimator(alpha=0.3, recent=2)
    for t in range(5):
        est.observe(500.0, now_ms=100.0 * t + 500.0, sent_at_ms=100.0 * t)
    est.observe(10.0, now_ms=1000.0, sent_at_ms=990.0)
    assert est.snapshot(1000.0).recent_max_ms == 500.0
    est.observe(10.0, now_ms=1050.0, sent_at_ms=1040.0)
    assert est.snapshot(1050.0).recent_max_ms == 10.0
