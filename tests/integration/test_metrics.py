"""The agent's metrics endpoint scraped over HTTP and parsed with prometheus-client's parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fogline.agent.metrics import AgentMetrics
from fogline.serving.metrics_endpoint import MetricsEndpoint

pytestmark = pytest.mark.integration


def _scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def _value(samples, name, **labels) -> float:
    matches = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


def test_scraped_metrics_reflect_what_the_agent_recorded():
    metrics = AgentMetrics()
    metrics.set_build("0.1.0", "cam-001")
    for _ in range(3):
        metrics.observe_request("digits", "cloud", "rtt_ok", 0.012)
    metrics.observe_request("digits", "edge", "cloud_failed", 0.004, fallback_from="cloud")
    metrics.observe_error("minilm", "INVALID_ARGUMENT")
    metrics.observe_latency("digits", "edge", 0.0008)
    metrics.observe_latency("digits", "cloud", 0.3)
    metrics.observe_hedge("digits", won=True)
    metrics.observe_hedge("digits", won=False)
    metrics.observe_hedge("digits", won=False)
    metrics.set_rtt(smoothed_s=0.0105, p95_s=0.02)
    metrics.set_link_state("degraded")
    metrics.set_queue_depth("digits", 4)
    metrics.set_config(7, sha256="ab12", path="/etc/fogline/fleet.yaml")
    metrics.observe_reload(ok=False)

    server = MetricsEndpoint(metrics, "127.0.0.1", 0)
    try:
        s = _scrape(server.url)
    finally:
        server.close()

    p = "fogline_agent_"
    assert _value(s, p + "requests_total", model="digits", tier="cloud", reason="rtt_ok") == 3
    assert _value(s, p + "requests_total", model="digits", tier="edge", reason="cloud_failed") == 1
    assert _value(s, p + "fallbacks_total", model="digits", from_tier="cloud", to_tier="edge") == 1
    assert _value(s, p + "errors_total", model="minilm", code="INVALID_ARGUMENT") == 1
    assert _value(s, p + "hedges_total", outcome="won") == 1
    assert _value(s, p + "hedges_total", outcome="lost") == 2
    assert _value(s, p + "edge_latency_seconds_bucket", model="digits", le="0.001") == 1
    assert _value(s, p + "cloud_latency_seconds_bucket", model="digits", le="0.25") == 0
    assert _value(s, p + "cloud_latency_seconds_bucket", model="digits", le="0.5") == 1
    assert _value(s, p + "request_latency_seconds_count", model="digits", tier="cloud") == 3
    assert _value(s, p + "cloud_rtt_seconds", stat="smoothed") == pytest.approx(0.0105)
    assert _value(s, p + "cloud_rtt_seconds", stat="p95") == pytest.approx(0.02)
    assert _value(s, p + "cloud_link_state", state="degraded") == 1
    assert _value(s, p + "cloud_link_state", state="ready") == 0
    assert _value(s, p + "queue_depth", model="digits") == 4
    assert _value(s, p + "config_revision") == 7
    assert _value(s, p + "config_info", revision="7", path="/etc/fogline/fleet.yaml") == 1
    assert _value(s, p + "config_reloads_total", result="error") == 1
    assert _value(s, p + "build_info", device="cam-001", version="0.1.0") == 1


def test_two_agents_in_one_process_do_not_collide_and_bad_labels_are_refused():
    a, b = AgentMetrics(), AgentMetrics()
    a.observe_request("digits", "edge", "policy")
    assert b.registry.get_sample_value(
        "fogline_agent_requests_total", {"model": "digits", "tier": "edge", "reason": "policy"}) is None
    with pytest.raises(ValueError, match="tier"):
        a.observe_request("digits", "fog", "policy")
    with pytest.raises(ValueError, match="link state"):
        a.set_link_state("sideways")
    with pytest.raises(ValueError):
        MetricsEndpoint(object())
