"""The pure parts of bench.scale: core layout, answer windows, time to a fair share."""

from __future__ import annotations

import numpy as np
import pytest

from bench.scale import Window, _fair_share, _first_answer, build_parser, callers_per_agent, plan_layout

pytestmark = pytest.mark.unit


def test_layout_pins_replicas_then_agents_then_clients_when_the_cores_are_there():
    layout = plan_layout(list(range(16)), 4, 2, 2)
    assert layout.replicas == ("0,1", "2,3", "4,5", "6,7")
    assert layout.agents == ("8", "9") and layout.clients == ("10", "11")
    assert layout.pinned


def test_layout_pins_nothing_on_a_small_host():
    layout = plan_layout([0, 1], 2, 1, 1)
    assert layout.replicas == (None, None) and layout.agents == (None,) and not layout.pinned


def test_callers_are_fixed_per_agent_or_grow_with_the_replicas():
    fixed = build_parser().parse_args(["--agents", "3", "--concurrency", "8"])
    assert callers_per_agent(fixed, 1) == callers_per_agent(fixed, 4) == [8, 8, 8]
    weak = build_parser().parse_args(["--agents", "6", "--callers-per-replica", "32"])
    assert callers_per_agent(weak, 1) == [6, 6, 5, 5, 5, 5]  # 32 over six agents
    assert sum(callers_per_agent(weak, 4)) == 128 and max(callers_per_agent(weak, 4)) - min(callers_per_agent(weak, 4)) <= 1


def test_window_counts_answers_by_tier_and_losses():
    records = np.array([[0.0, 0.010, 0], [0.0, 0.020, 1], [0.0, 0.030, 2], [0.0, 5.0, 0]])
    w = Window.of(records, 0.0, 1.0)
    assert (w.total, w.cloud, w.edge, w.lost) == (3, 1, 1, 1)
    assert w.rate == 2.0 and 10.0 <= w.p50_ms <= 20.0


def test_first_answer_and_fair_share_of_an_added_replica():
    # three replicas sampled every 0.5 s; the third is added at t=1.0 and ramps up
    samples = [(0.0, [0, 0, 0]), (0.5, [50, 50, 0]), (1.0, [100, 100, 0]), (1.5, [140, 140, 5]),
               (2.0, [170, 170, 30]), (2.5, [200, 200, 60]), (3.0, [230, 230, 90]), (3.5, [260, 260, 120])]
    assert _first_answer(samples, 1.0) == 0.5
    # over 1.0-2.0 it served 30 against 70 each; over 1.5-2.5, 55 against 60: its share at t=2.5
    assert _fair_share(samples, 1.0) == 1.5
