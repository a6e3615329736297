"""The routing benchmark's pure parts: scenarios, the arrival schedule, the oracle and the scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.cli import main as bench_main
from bench.routing_driver import Outcome
from bench.routing_metrics import classify, gates_for_scenario, percentile, summarize, winner
from bench.routing_oracle import (
    RECONNECT_RTTS,
    ServiceTimes,
    cloud_ms_at,
    expected_cloud_ms,
    expected_one_way_ms,
    oracle_choices,
)
from bench.routing_scenarios import Phase, ScenarioError, load_scenarios, scenario_from_mapping
from bench.routing_workload import Arrival, poisson_schedule, scenario_seed
from fogline.netproxy.proxy import NetConditions
from fogline.netproxy.timeline import LinkTimeline

pytestmark = pytest.mark.unit

TIMES = ServiceTimes(edge_ms={"minilm": 8.0, "digits": 4.0}, cloud_ms={"minilm": 20.0, "digits": 6.0},
                     request_bytes={"minilm": 120.0, "digits": 310.0},
                     response_bytes={"minilm": 1674.0, "digits": 180.0})


# --------------------------------------------------------------------------- scenarios


def test_shipped_scenarios_cover_the_issue():
    scenarios = {s.name: s for s in load_scenarios()}
    assert set(scenarios) == {"steady_good", "steady_bad", "step_up", "step_down", "flapping",
                              "heavy_tail_jitter", "outage", "bandwidth_cap"}
    outage = scenarios["outage"]
    dark = [p for p in outage.phases if p.conditions.blackhole]
    assert len(dark) == 1
    following = outage.phases[outage.phases.index(dark[0]) + 1]
    assert following.at_s - dark[0].at_s == pytest.approx(5.0)
    flapping = scenarios["flapping"]
    assert [p.at_s for p in flapping.phases] == [0, 2, 4, 6, 8, 10]
    assert [p.conditions.delay_ms for p in flapping.phases] == [5, 250] * 3
    assert scenarios["heavy_tail_jitter"].phases[0].conditions.jitter_dist == "pareto"
    assert scenarios["bandwidth_cap"].phases[0].conditions.bandwidth_kbps is not None
    assert sum(s.duration_s for s in scenarios.values()) <= 120  # keeps the full run under 15 minutes


def test_conditions_at_and_scaling():
    s = scenario_from_mapping({"name": "x", "duration_s": 10, "phases": [
        {"at_s": 0, "delay_ms": 5}, {"at_s": 4, "blackhole": True}]}, "x.yaml")
    assert s.conditions_at(3.99).delay_ms == 5
    assert s.conditions_at(4.0).blackhole
    assert s.conditions_at(-1).delay_ms == 5
    half = s.scaled(0.5)
    assert half.duration_s == 5 and [p.at_s for p in half.phases] == [0, 2]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"name": "x", "duration_s": 5}, "exactly one of"),
        ({"name": "x", "duration_s": 5, "phases": [{"at_s": 1, "delay_ms": 5}]}, "must start at 0"),
        ({"name": "x", "duration_s": 5, "phases": [{"at_s": 0, "delay": 5}]}, "unknown key 'delay'"),
        ({"name": "x", "duration_s": 5, "phases": [{"at_s": 0, "delay_ms": -1}]}, "delay_ms: must be >= 0"),
        ({"name": "x", "duration_s": 5, "phases": [{"at_s": 0, "jitter_dist": "cauchy"}]}, "jitter_dist"),
        ({"name": "x", "duration_s": 5, "phases": [{"at_s": 0}, {"at_s": 7}]}, "after the scenario ends"),
        ({"name": "x", "duration_s": 5, "phases": [{"at_s": 0}, {"at_s": 0}]}, "increasing order"),
        ({"name": "x", "duration_s": 5, "phases": [{"at_s": 0, "blackhole": "yes"}]}, "true or false"),
        ({"name": "x y", "duration_s": 5, "phases": [{"at_s": 0}]}, "short identifier"),
        ({"name": "x", "duration_s": "5", "phases": [{"at_s": 0}]}, "duration_s: expected a number"),
        ({"name": "x", "duration_s": 5, "repeat": {"every_s": 1}}, "repeat"),
        ({"name": "x", "duration_s": 5, "phases": [{"at_s": 0}], "extra": 1}, "unknown key 'extra'"),
    ],
)
def test_bad_scenarios_name_the_file_and_key(raw, fragment):
    with pytest.raises(ScenarioError, match=r"bad\.yaml") as info:
        scenario_from_mapping(raw, "bad.yaml")
    assert fragment in str(info.value)


def test_unknown_scenario_name_lists_the_known_ones():
    with pytest.raises(ScenarioError, match=r"available: .*steady_good"):
        load_scenarios(names=["nope"])


# --------------------------------------------------------------------------- schedule


def test_schedule_is_seeded_poisson_and_mixed():
    counts = {"minilm": 200, "digits": 300}
    a = poisson_schedule(200.0, 20.0, streams=4, item_counts=counts, seed=3)
    assert a == poisson_schedule(200.0, 20.0, streams=4, item_counts=counts, seed=3)
    assert a != poisson_schedule(200.0, 20.0, streams=4, item_counts=counts, seed=4)
    assert abs(len(a) - 4000) < 4 * math.sqrt(4000)  # Poisson count within 4 sigma
    gaps = np.diff([x.t_s for x in a])
    assert gaps.min() >= 0 and abs(gaps.mean() - 0.05) < 0.005
    assert np.std(gaps) == pytest.approx(gaps.mean(), rel=0.1)  # exponential: sd == mean
    assert {x.stream for x in a} == {0, 1, 2, 3}
    share = sum(x.model == "minilm" for x in a) / len(a)
    assert 0.45 < share < 0.55
    assert all(0 <= x.item < counts[x.model] for x in a)
    assert [x.index for x in a] == list(range(len(a)))
    assert scenario_seed(7, "outage") == scenario_seed(7, "outage") != scenario_seed(7, "flapping")


# --------------------------------------------------------------------------- oracle


def test_expected_one_way_matches_the_samplers_mean():
    assert expected_one_way_ms(NetConditions(delay_ms=250)) == 250
    assert expected_one_way_ms(NetConditions(delay_ms=50, jitter_ms=10)) == pytest.approx(50, abs=0.2)
    # Pareto(1.5) - 1 capped at 50: mean = 2 * (1 - 51 ** -0.5) times the jitter scale.
    pareto = NetConditions(delay_ms=10, jitter_ms=8, jitter_dist="pareto")
    assert expected_one_way_ms(pareto) == pytest.approx(10 + 8 * 2 * (1 - 51**-0.5), rel=0.03)


def test_oracle_formula_bandwidth_and_blackhole():
    good = NetConditions(delay_ms=5)
    assert expected_cloud_ms(good, "minilm", TIMES) == pytest.approx(2 * 5 + 20)
    capped = NetConditions(delay_ms=5, bandwidth_kbps=128)
    transfer = 8 * (120 + 1674 + 28) / 128
    assert expected_cloud_ms(capped, "minilm", TIMES) == pytest.approx(10 + 20 + transfer)
    assert math.isinf(expected_cloud_ms(NetConditions(blackhole=True), "digits", TIMES))

    timeline = [Phase(0.0, good), Phase(1.0, NetConditions(delay_ms=250)), Phase(2.0, capped)]
    arrivals = [Arrival(0, 0.5, 0, "minilm", 0), Arrival(1, 1.5, 0, "digits", 0),
                Arrival(2, 2.5, 0, "minilm", 0), Arrival(3, 2.6, 0, "digits", 0)]
    choices = oracle_choices(arrivals, timeline, TIMES, deadline_ms=100)
    assert [c.route for c in choices] == ["cloud", "edge", "edge", "cloud"]
    assert choices[1].latency_ms == 4.0 and choices[0].latency_ms == pytest.approx(30)
    # Measured send times replace the planned ones.
    late = oracle_choices(arrivals[:1], timeline, TIMES, deadline_ms=100, sent_s=[1.01])
    assert late[0].route == "edge"
    k = classify(choices)
    assert k.bad and k.good and k.bad_share == 0.5


def test_oracle_uses_the_proxys_d_of_t_drain_and_reconnect():
    good, bad = NetConditions(delay_ms=5), NetConditions(delay_ms=250)
    dark = NetConditions(delay_ms=5, blackhole=True)
    timeline = [Phase(-2.0, bad), Phase(0.0, bad), Phase(6.0, good), Phase(8.0, dark), Phase(9.0, good)]
    arrivals = [Arrival(i, t, 0, "digits", 0) for i, t in enumerate([5.9, 6.1, 6.3, 8.5, 9.0, 9.05])]
    choices = oracle_choices(arrivals, timeline, TIMES, deadline_ms=100, seed=4)
    # 6.1: the link still drains the 250 ms step (150 ms up); 6.3: drained, 5 + 6 + 5 ms.
    assert [c.route for c in choices] == ["edge", "edge", "cloud", "edge", "cloud", "cloud"]
    assert choices[1].cloud_ms == pytest.approx(150 + 6 + 5 + 0)  # up 150, service 6, down 5 (drained)
    assert choices[2].cloud_ms == pytest.approx(16)
    assert math.isinf(choices[3].cloud_ms)
    # Just after the blackhole lifts, a fresh connection costs RECONNECT_RTTS round trips of 10 ms.
    assert choices[4].cloud_ms == pytest.approx(RECONNECT_RTTS * 10 + 16)
    assert choices[5].cloud_ms == pytest.approx(16)
    # A request whose answer would still be on the link when the blackhole starts is lost there.
    just_before = oracle_choices([Arrival(0, 7.99, 0, "digits", 0), Arrival(1, 7.98, 0, "digits", 0)],
                                 timeline, TIMES, deadline_ms=100, seed=4)
    assert just_before[0].route == "edge" and math.isinf(just_before[0].cloud_ms)
    assert just_before[1].route == "cloud" and just_before[1].cloud_ms == pytest.approx(16)


def test_oracle_reads_the_jitter_timeline_of_the_proxy():
    jitter = NetConditions(delay_ms=10, jitter_ms=4, jitter_dist="pareto", jitter_slot_ms=20)
    link = LinkTimeline(scenario_seed(7, "heavy_tail_jitter"), [])
    link.apply(0.0, jitter)
    times = [k * 0.01 for k in range(1000)]
    cloud = [cloud_ms_at(link, t, "minilm", TIMES) for t in times]
    assert cloud == [link.round_trip_ms(t, 20.0) for t in times]
    # Per request, not on average: some requests find the link stalled, most do not.
    missed = sum(c > 100 for c in cloud) / len(cloud)
    assert 0.01 < missed < 0.4
    arrivals = [Arrival(i, t, 0, "minilm", 0) for i, t in enumerate(times)]
    choices = oracle_choices(arrivals, link, TIMES, deadline_ms=100)
    assert sum(c.route == "edge" for c in choices) == sum(c > 100 for c in cloud)


# --------------------------------------------------------------------------- scoring


def _outcome(i, latency, by="cloud", status="ok", model="minilm", quality=1.0):
    return Outcome(i, model, i * 0.1, status=status, latency_ms=latency, served_by=by, quality=quality)


def test_summary_counts_errors_and_losses_as_slo_misses():
    outs = [_outcome(0, 10), _outcome(1, 150), _outcome(2, 20, by="edge", quality=0.99),
            _outcome(3, None, by="", status="lost"), _outcome(4, 5, by="", status="error"),
            _outcome(5, 50, model="digits", quality=0.0)]
    s = summarize("p", outs, slo_ms=100)
    assert (s.requests, s.answered, s.errors, s.lost) == (6, 4, 1, 1)
    assert s.slo_attainment == pytest.approx(3 / 6)
    assert s.full_share == pytest.approx(3 / 6)
    assert s.minilm_cosine == pytest.approx((1 + 1 + 0.99) / 3)
    assert s.digits_accuracy == 0.0
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([1, 2, 3, 4], 99) == 4
    assert math.isnan(percentile([], 50))


def test_winner_prefers_slo_then_full_model_and_excludes_losers():
    a = summarize("a", [_outcome(i, 10, by="edge") for i in range(10)], 100)
    b = summarize("b", [_outcome(i, 30) for i in range(10)], 100)
    c = summarize("c", [_outcome(i, 30) for i in range(9)] + [_outcome(9, None, status="lost")], 100)
    assert winner([a, b]) == "b"  # tie on SLO, b has the full model
    assert winner([a, c]) == "a"  # c lost a request
    slow = summarize("slow", [_outcome(i, 300) for i in range(10)], 100)
    assert winner([slow, a]) == "a"


def test_gates_compare_against_oracle_and_baselines():
    la = summarize("latency_aware", [_outcome(i, 30) for i in range(9)] + [_outcome(9, 8, by="edge", quality=0.99)], 100)
    cloud_only = summarize("cloud_only", [_outcome(i, 30 if i < 5 else 400) for i in range(10)], 100)
    edge_only = summarize("edge_only", [_outcome(i, 8, by="edge", quality=0.99) for i in range(10)], 100)
    oracle = summarize("oracle", [_outcome(i, 30) for i in range(10)], 100)
    from bench.routing_metrics import ScenarioClass

    gates = gates_for_scenario("s", {"latency_aware": la, "cloud_only": cloud_only, "edge_only": edge_only},
                               oracle, ScenarioClass(bad_share=0.5, good_share=0.5))
    held = {g.gate: g.held for g in gates}
    assert held["zero lost"] is True
    assert held["SLO within 1 point of oracle"] is True
    assert held[">= 90% of oracle's full-model share"] is True  # 90% vs 100%
    assert held["beats cloud_only on SLO (bad network)"] is True
    assert held["beats edge_only on quality (good network)"] is True
    only = gates_for_scenario("s", {"latency_aware": la}, oracle, ScenarioClass(0.5, 0.5))
    assert [g.held for g in only if "beats" in g.gate] == [None, None]


# --------------------------------------------------------------------------- fogline bench


def test_bench_cli_usage_and_unknown_names(capsys):
    assert bench_main([]) == 2
    assert "routing" in capsys.readouterr().out
    assert bench_main(["--help"]) == 0
    assert bench_main(["nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert bench_main(["routing", "--scenarios", "does_not_exist"]) == 2
    assert "unknown scenario" in capsys.readouterr().err


def test_switch_lags_measure_reaction_and_recovery():
    from bench.routing_metrics import switch_lags

    good, bad = NetConditions(delay_ms=5), NetConditions(delay_ms=250)
    timeline = [Phase(0.0, good), Phase(2.0, bad), Phase(4.0, good), Phase(5.0, NetConditions(bandwidth_kbps=64))]

    def feasible(phase):
        if phase.conditions.bandwidth_kbps:
            return None  # only some models: neither good nor bad
        return phase.conditions.delay_ms < 100

    adaptive = [Outcome(i, "minilm", t, status="ok", latency_ms=lat, served_by=by) for i, (t, lat, by) in enumerate([
        (1.0, 20, "cloud"), (2.1, 300, "cloud"), (2.5, 8, "edge"), (3.0, 8, "edge"),
        (4.2, 8, "edge"), (4.6, 20, "cloud"), (5.5, 8, "edge")])]
    stubborn = [Outcome(i, "minilm", t, status="ok", latency_ms=300, served_by="cloud") for i, t in enumerate([2.1, 3.9])]
    stubborn += [Outcome(9, "minilm", 3.95, status="lost")]
    switches = switch_lags(timeline, 6.0, {"a": adaptive, "s": stubborn, "e": []}, feasible, slo_ms=100)
    assert [(s.at_s, s.to_good) for s in switches] == [(2.0, False), (4.0, True)]
    assert switches[0].lag_s["a"] == pytest.approx(0.1)
    assert switches[0].lag_s["s"] == pytest.approx(1.95)  # the lost request counts as a miss
    assert switches[0].lag_s["e"] == 0.0
    assert switches[1].lag_s["a"] == pytest.approx(0.6)
    assert switches[1].lag_s["s"] is None
