"""Local load in the routing decision: a deep edge queue or a busy CPU sends work to a healthy cloud."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest
from router_fixtures import observation, request

from fogline.agent.load import CpuMonitor
from fogline.agent.router import decide, overload_reason
from fogline.agent.router_types import EdgeView, LinkView, RoutingPolicy, Tier
from fogline.fleet.model import LoadConfig, RoutingConfig

pytestmark = pytest.mark.unit

#: A link whose RTT (40 ms) is above the threshold: latency_aware alone keeps the work on the edge.
SLOW_LINK = LinkView(usable=True, rtt_ms=40.0)
POLICY = RoutingPolicy(policy="latency_aware", slo_ms=200, rtt_threshold_ms=30, rtt_recover_ms=20,
                       max_queue_depth=4, cpu_high=0.9)


observe = partial(observation, link=SLOW_LINK, service=5.0, preferred=False)
req = partial(request, deadline=200.0)


def test_idle_device_stays_local_when_the_rtt_is_high():
    d = decide(POLICY, observe(queue=1, cpu=0.3), req())
    assert d.tier is Tier.EDGE and d.reason == "rtt_high"


def test_deep_queue_offloads_to_a_healthy_cloud():
    d = decide(POLICY, observe(queue=4, cpu=0.3), req())
    assert d.tier is Tier.CLOUD and d.reason == "queue_deep"
    # The edge can still make it (4 ahead x 5 ms, this run budgeted twice): its backup starts at the
    # last safe moment before the 15 ms backup margin.
    assert d.edge_start_by_ms == pytest.approx(200 - 15 - 25 - 5 - 5)


def test_high_cpu_offloads_to_a_healthy_cloud():
    d = decide(POLICY, observe(queue=0, cpu=0.95), req())
    assert d.tier is Tier.CLOUD and d.reason == "cpu_high"
    assert decide(POLICY, observe(queue=0, cpu=0.89), req()).tier is Tier.EDGE


def test_unmeasured_cpu_or_no_limits_never_offload():
    assert decide(POLICY, observe(cpu=None), req()).tier is Tier.EDGE
    plain = RoutingPolicy(policy="latency_aware", slo_ms=200, rtt_threshold_ms=30, rtt_recover_ms=20,
                          max_queue_depth=None, cpu_high=None)
    assert decide(plain, observe(queue=50, cpu=1.0, service=1.0), req()).tier is Tier.EDGE
    assert overload_reason(plain, EdgeView(queue_depth=10**6, cpu_load=1.0)) is None


def test_overload_does_not_send_work_to_a_cloud_that_misses_the_deadline_or_is_down():
    # 40 ms RTT + 5 ms margin does not fit 30 ms: the busy edge is still the better bet.
    d = decide(POLICY, observe(queue=4, cpu=0.99, service=1.0), req(deadline=30))
    assert d.tier is Tier.EDGE
    down = observe(queue=9, cpu=0.99, link=LinkView(usable=False, state="down"))
    assert decide(POLICY, down, req()).tier is Tier.EDGE


def test_edge_that_cannot_make_the_deadline_gets_no_immediate_backup_when_offloading():
    # 20 ahead x 12 ms: the edge would answer after ~250 ms; the cloud (45 ms) makes the 200 ms deadline.
    d = decide(POLICY, observe(queue=20, service=12.0), req())
    assert d.tier is Tier.CLOUD and d.reason == "queue_deep"
    assert d.edge_start_by_ms == 200.0  # not 0: a backup now would only deepen the queue


def test_never_queued_behind_work_that_misses_the_deadline():
    # Under the queue limit but 3 ahead x 30 ms = 120 ms > 100 ms deadline: the cloud makes it.
    d = decide(POLICY, observe(queue=3, service=30.0), req(deadline=100))
    assert d.tier is Tier.CLOUD and d.reason in {"edge_busy", "queue_deep"}


def test_edge_only_never_offloads_and_cloud_preference_is_reported_as_such():
    edge_only = RoutingPolicy(policy="edge_only", max_queue_depth=1, cpu_high=0.5)
    assert decide(edge_only, observe(queue=9, cpu=1.0), req()).tier is Tier.EDGE
    fast = LinkView(usable=True, rtt_ms=5.0)
    d = decide(POLICY, observe(queue=9, cpu=1.0, link=fast, preferred=True), req())
    assert d.tier is Tier.CLOUD and d.reason == "rtt_ok"


def test_hedged_and_cascade_skip_the_busy_edge():
    hedged = RoutingPolicy(policy="hedged", slo_ms=200, rtt_threshold_ms=30, rtt_recover_ms=20,
                           hedge_delay_ms=5, max_queue_depth=4)
    d = decide(hedged, observe(queue=4), req())
    assert d.tier is Tier.CLOUD and d.reason == "queue_deep" and d.edge_start_by_ms > 5
    cascade = RoutingPolicy(policy="cascade", slo_ms=200, rtt_threshold_ms=30, rtt_recover_ms=20,
                            cascade_threshold=0.8, cpu_high=0.9)
    d = decide(cascade, observe(cpu=0.97), req())
    assert d.tier is Tier.CLOUD and d.reason == "cpu_high" and d.escalate_below is None


def test_load_settings_from_config_and_validation():
    routing = RoutingConfig(policy="latency_aware", slo_ms=100, rtt_threshold_ms=150, rtt_recover_ms=100)
    p = RoutingPolicy.from_config(routing, LoadConfig(max_queue_depth=8, cpu_high_percent=75.0))
    assert p.max_queue_depth == 8 and p.cpu_high == pytest.approx(0.75)
    assert RoutingPolicy.from_config(routing, LoadConfig()).cpu_high == pytest.approx(0.9)  # the fleet default
    with pytest.raises(ValueError, match="cpu_high"):
        RoutingPolicy(cpu_high=75)
    with pytest.raises(ValueError, match="max_queue_depth"):
        RoutingPolicy(max_queue_depth=0)


def test_server_reads_the_fleet_load_block():
    from fogline.agent.server import policy_from_config
    from fogline.demo.loopback import device_config

    config = device_config(extra_yaml="  load: {max_queue_depth: 3, cpu_high_percent: 80}")
    policy = policy_from_config(config)
    assert policy.max_queue_depth == 3 and policy.cpu_high == pytest.approx(0.8)


def test_cpu_monitor_smooths_samples_in_the_background(async_until):
    readings = iter([100.0, 0.0, 0.0, 0.0] + [0.0] * 10_000)
    monitor = CpuMonitor(lambda: next(readings), interval_s=0.01, alpha=0.5)
    assert monitor.load is None
    assert monitor.sample() == 1.0
    assert monitor.sample() == 0.5  # one quiet sample halves it, it does not erase it

    async def run():
        monitor.start()
        # Seven quiet samples bring it under 1 %, however long the machine takes to run them.
        await async_until(lambda: monitor.load is not None and monitor.load < 0.01)
        await monitor.stop()

    asyncio.run(run())
    assert monitor.load is not None and monitor.load < 0.01
    monitor.set_source(lambda: 250.0)  # clamped
    assert monitor.load == 1.0
    with pytest.raises(ValueError):
        CpuMonitor(interval_s=0)


def test_cpu_monitor_reads_psutil_by_default():
    monitor = CpuMonitor()
    monitor.sample()
    assert 0.0 <= monitor.load <= 1.0


def _no_proc_stat() -> float:
    raise FileNotFoundError(2, "No such file or directory", "/proc/stat")  # as psutil under ProcSubset=pid


def test_a_failing_cpu_reading_switches_the_signal_off_with_one_warning(caplog, async_until):
    monitor = CpuMonitor(_no_proc_stat, interval_s=0.01)

    async def run():
        monitor.start()
        # the first failure ends the sampling (the task ends), so no later interval can warn again
        task_ended = await async_until(lambda: monitor._task is not None and monitor._task.done())
        await monitor.stop()
        return task_ended

    with caplog.at_level("WARNING", logger="fogline.agent.load"):
        assert asyncio.run(run())
    assert monitor.available is False and monitor.load is None
    warnings = [r for r in caplog.records if r.name == "fogline.agent.load"]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "/proc/stat" in warnings[0].getMessage() and "cpu_high_percent" in warnings[0].getMessage()
    # the router then reads the load as unknown: the CPU rule never offloads, the queue rule still does
    edge = EdgeView(queue_depth=0, cpu_load=monitor.load)
    assert overload_reason(POLICY, edge) is None
    assert overload_reason(POLICY, EdgeView(queue_depth=4, cpu_load=monitor.load)) == "queue_deep"


def test_a_cpu_source_that_cannot_be_opened_does_not_stop_the_start(monkeypatch, caplog):
    def unopenable():
        _no_proc_stat()

    monkeypatch.setattr("fogline.agent.load._psutil_source", unopenable)
    monitor = CpuMonitor(interval_s=0.01)

    async def run():
        monitor.start()  # must not raise: the agent starts without the signal
        monitor.start()  # nor warn twice
        await asyncio.sleep(0.03)
        await monitor.stop()

    with caplog.at_level("WARNING", logger="fogline.agent.load"):
        asyncio.run(run())
    assert monitor.available is False and monitor.load is None and monitor._task is None
    assert len([r for r in caplog.records if r.name == "fogline.agent.load"]) == 1
    monitor.set_source(lambda: 40.0)  # an injected source brings it back (tests do this)
    assert monitor.available is True and monitor.load == pytest.approx(0.4)


def test_the_load_signal_gauge_says_whether_the_router_gets_the_cpu_signal():
    from fogline.agent.metrics import AgentMetrics

    metrics = AgentMetrics()

    def value():
        return metrics.registry.get_sample_value("fogline_agent_load_signal_available", {"signal": "cpu"})

    metrics.set_load_signal("cpu", True)
    assert value() == 1.0
    metrics.set_load_signal("cpu", False)
    assert value() == 0.0
