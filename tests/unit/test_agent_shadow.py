"""Live agreement, the pure parts: which edge answers are shadowed, and how agreement is measured and judged.

``fogline.agent.shadow`` (sampling, link health and headroom) and ``fogline.agent.agreement`` (the task's
fidelity metric, the running window, crossings of the manifest's gate) take plain values, so these
tests need no clock, no sockets and no model files; the manifests are cut-down copies of the
reference builds' (``gate``, ``import.gate``, ``metrics.int8`` as ``fogline models build`` writes them).
"""

from __future__ import annotations

import numpy as np
import pytest

from fogline.agent.agreement import AgreementTracker, Crossing, fidelity_of, row_scores
from fogline.agent.router_types import LinkView, RoutingPolicy
from fogline.agent.shadow import CLOUD_BUSY, DROPPED, LINK_UNHEALTHY, Sampler, ShadowSettings, skip_reason
from fogline.fleet import FleetConfigError, parse_fleet

pytestmark = pytest.mark.unit

DIGITS_MANIFEST = {
    "task": "classification",
    "gate": {"limits": {"accuracy_drop_points_max": 1.0}, "passed": True},
    "import": {"gate": {"limits": {"accuracy_drop_points_max": 1.0, "top1_agreement_min": 0.97}}},
    "metrics": {"int8": {"top1_agreement": 1.0, "accuracy_int8": 0.988889}},
}
MINILM_MANIFEST = {
    "task": "embedding",
    "gate": {"limits": {"cosine_mean_min": 0.995, "nn_agreement_min": 0.93}},
    "import": {"gate": {"limits": {"cosine_mean_min": 0.99}}},
    "metrics": {"int8": {"cosine_mean": 0.99829, "cosine_min": 0.989282}},
}
GENERIC_MANIFEST = {"task": "generic", "gate": {"limits": {"relative_error_max": 0.05}},
                    "metrics": {"int8": {"relative_error": 0.012}}}

HEALTHY = LinkView(usable=True, rtt_ms=10.0)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("share", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_the_sampler_takes_the_share_evenly_and_the_same_every_run(share):
    picks = [Sampler() for _ in range(2)]
    runs = [[n for n in range(2000) if sampler.take("digits", share)] for sampler in picks]
    assert runs[0] == runs[1], "deterministic"
    # Every prefix holds the share within 3 requests: no bursts, no long gaps.
    taken = set(runs[0])
    count = 0
    for n in range(2000):
        count += n in taken
        assert abs(count - share * (n + 1)) <= 3


def test_the_sampler_counts_each_model_on_its_own_and_follows_a_changed_share():
    sampler = Sampler()
    interleaved = [sampler.take(model, 0.5) for _ in range(200) for model in ("a", "b")]
    assert interleaved[0::2] == interleaved[1::2]  # each model its own sequence, whatever the other does
    # A client alternating two kinds of request of one model gets both kinds shadowed alike.
    one = [sampler.take("c", 0.2) for _ in range(1000)]
    assert abs(sum(one[0::2]) - 100) <= 3 and abs(sum(one[1::2]) - 100) <= 3
    assert not any(sampler.take("a", 0.0) for _ in range(50))
    assert all(sampler.take("a", 1.0) for _ in range(50))


# --------------------------------------------------------------------------- link health and headroom


def reason(link=HEALTHY, *, inflight=0, max_inflight=4, paused=False, limit=150.0):
    return skip_reason(link, rtt_limit_ms=limit, inflight=inflight, max_inflight=max_inflight, paused=paused)


def test_a_healthy_link_with_headroom_takes_the_shadow():
    assert reason() is None
    assert reason(inflight=3) is None


@pytest.mark.parametrize("link", [
    LinkView(usable=False, state="down", rtt_ms=10.0),
    LinkView(usable=True, rtt_ms=None),  # nothing measured yet
    LinkView(usable=True, rtt_ms=10.0, version_missing=True),  # the cloud lacks the edge's version
    LinkView(usable=True, rtt_ms=200.0, rtt_recent_ms=180.0),  # slower than the router's threshold
])
def test_an_unhealthy_link_sends_no_shadow(link):
    assert reason(link) == LINK_UNHEALTHY


def test_a_cloud_without_headroom_gets_no_shadow_and_the_bound_drops_the_rest():
    assert reason(LinkView(usable=True, rtt_ms=10.0, outstanding_ms=400.0)) == CLOUD_BUSY  # calls queueing
    assert reason(paused=True) == CLOUD_BUSY  # a shadow was refused a moment ago
    assert reason(inflight=4, max_inflight=4) == DROPPED


def test_shadow_settings_come_from_the_fleet_file_and_default_off():
    assert not RoutingPolicy().shadow.enabled and RoutingPolicy().shadow == ShadowSettings()
    text = ("version: 1\ncloud: {endpoint: '127.0.0.1:8001'}\n"
            "defaults: {routing: {shadow: {share: 0.1, max_inflight: 2}}}\ndevices: {cam: {}}\n")
    device = parse_fleet(text, source="f.yaml").device("cam")
    policy = RoutingPolicy.from_config(device.routing, device.load)
    assert policy.shadow == ShadowSettings(share=0.1, max_inflight=2)
    for bad, words in [("{share: 1.5}", "share"), ("{window: 10, min_rows: 20}", "min_rows"),
                       ("{share: '10%'}", "share"), ("{rate: 0.1}", "rate")]:
        with pytest.raises(FleetConfigError, match=words):
            parse_fleet(text.replace("{share: 0.1, max_inflight: 2}", bad), source="f.yaml")


# --------------------------------------------------------------------------- the fidelity metric


def test_the_gate_and_offline_figure_come_from_the_manifest():
    digits = fidelity_of("classification", ["probabilities"], DIGITS_MANIFEST, "probabilities")
    assert (digits.metric, digits.outputs, digits.gate, digits.offline) == (
        "top1_agreement", ("probabilities",), 0.97, 1.0)  # the gate from import.gate: the build's lacks it
    minilm = fidelity_of("embedding", ["embedding"], MINILM_MANIFEST)
    assert (minilm.metric, minilm.gate, minilm.offline) == ("cosine_mean", 0.995, 0.99829)  # gate.limits first
    generic = fidelity_of("generic", ["y", "z"], GENERIC_MANIFEST)
    assert (generic.metric, generic.outputs, generic.gate, generic.higher_is_better) == (
        "relative_error", ("y", "z"), 0.05, False)
    bare = fidelity_of("regression", ["y"], {})  # any other task is compared as generic, never judged
    assert (bare.task, bare.gate, bare.offline) == ("generic", None, None) and bare.passes(99.0)


def test_classification_compares_the_top_class_of_the_scores_output():
    fidelity = fidelity_of("classification", ["logits", "extra"], DIGITS_MANIFEST, "logits")
    edge = {"logits": np.array([[0.1, 0.9], [0.6, 0.4], [0.2, 0.8]]), "extra": np.zeros((3, 1))}
    cloud = {"logits": np.array([[0.3, 0.7], [0.4, 0.6], [0.0, 1.0]])}
    assert row_scores(fidelity, edge, cloud).tolist() == [1.0, 0.0, 1.0]


def test_embedding_compares_rows_by_cosine():
    fidelity = fidelity_of("embedding", ["embedding"], MINILM_MANIFEST)
    edge = {"embedding": np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)}
    cloud = {"embedding": np.array([[2.0, 0.0], [1.0, 0.0]], np.float32)}
    assert row_scores(fidelity, edge, cloud) == pytest.approx([1.0, np.sqrt(0.5)])


def test_generic_compares_rows_by_relative_error_the_worst_output_counting():
    fidelity = fidelity_of("generic", ["y", "z"], GENERIC_MANIFEST)
    edge = {"y": np.array([[1.1, 0.0]]), "z": np.array([[2.0]])}
    cloud = {"y": np.array([[1.0, 0.0]]), "z": np.array([[2.0]])}
    assert row_scores(fidelity, edge, cloud) == pytest.approx([0.1])


def test_answers_that_cannot_be_compared_say_why():
    fidelity = fidelity_of("embedding", ["embedding"], MINILM_MANIFEST)
    with pytest.raises(ValueError, match="missing from the cloud"):
        row_scores(fidelity, {"embedding": np.ones((1, 4))}, {})
    with pytest.raises(ValueError, match="shape"):
        row_scores(fidelity, {"embedding": np.ones((1, 4))}, {"embedding": np.ones((2, 4))})


# --------------------------------------------------------------------------- running agreement and the gate


def test_the_running_figure_is_the_window_and_the_total_every_row():
    tracker = AgreementTracker(fidelity_of("classification", ["p"], DIGITS_MANIFEST), window=4, min_rows=2)
    for scores in ([1.0, 1.0], [0.0], [0.0, 0.0]):
        tracker.add(np.array(scores))
    report = tracker.report()
    assert report.value == pytest.approx(0.25)  # the last 4 rows: 1, 0, 0, 0
    assert report.total == pytest.approx(0.4) and report.rows == 5
    assert (report.metric, report.gate, report.offline) == ("top1_agreement", 0.97, 1.0)


def test_the_gate_is_judged_once_enough_rows_are_in_and_each_crossing_is_reported_once():
    tracker = AgreementTracker(fidelity_of("classification", ["p"], DIGITS_MANIFEST), window=10, min_rows=5)
    events = [tracker.add(np.array([0.0])) for _ in range(4)]
    assert events == [None] * 4 and not tracker.below  # 4 rows: too few to judge
    assert tracker.add(np.array([0.0])) is Crossing.BELOW
    assert [tracker.add(np.array([0.0])) for _ in range(5)] == [None] * 5  # still below: no new report
    events = [tracker.add(np.array([1.0])) for _ in range(10)]
    assert events[:-1] == [None] * 9 and events[-1] is Crossing.RECOVERED  # 10 of 10 agree: 1.0 >= 0.97
    assert not tracker.report().below_gate


def test_a_lower_is_better_metric_crosses_when_it_rises_above_its_gate():
    tracker = AgreementTracker(fidelity_of("generic", ["y"], GENERIC_MANIFEST), window=3, min_rows=1)
    assert tracker.add(np.array([0.01])) is None
    assert tracker.add(np.array([0.2, 0.2])) is Crossing.BELOW  # mean 0.137 > 0.05
    assert tracker.add(np.array([0.0, 0.0, 0.0])) is Crossing.RECOVERED


def test_a_reloaded_window_keeps_the_newest_rows():
    tracker = AgreementTracker(fidelity_of("classification", ["p"], DIGITS_MANIFEST), window=4, min_rows=2)
    tracker.add(np.array([0.0, 0.0, 1.0, 1.0]))
    tracker.resize(2, 1)
    assert tracker.value == 1.0 and tracker.rows == 4 and tracker.min_rows == 1
    tracker.resize(10, 5)
    tracker.add(np.array([0.0]))
    assert tracker.value == pytest.approx(2 / 3)
