"""The data plane's request flow with a scripted cloud: on time, late, failing, racing the edge.

The cloud here is a small object with the link's two methods (``view``, ``submit``) whose answers
arrive when the test says; the edge is a real ``EdgeRunner`` over a numpy model. The same flow runs
against real servers in tests/integration/test_agent_network.py.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fogline import codec
from fogline.errors import InvalidInput, ModelNotFound, Unavailable

from agent.cloud_link import CloudAnswer
from agent.dataplane import DataPlane
from agent.edge_pool import EdgePool, EdgeRunner
from agent.router import LinkView, RoutingPolicy
from edge_models.spec import TensorSpec

pytestmark = pytest.mark.unit


class Halver:
    """Edge model: y = x / 2, taking ``delay_s``."""

    name, version, task = "half", "1", "regression"
    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("y", "FP32", (-1, 2))]

    def __init__(self, delay_s=0.005):
        self.delay_s = delay_s

    def predict(self, inputs):
        time.sleep(self.delay_s)
        return {"y": inputs["x"] / 2}

    def confidence(self, outputs):
        return None


class ScriptedCloud:
    """Answers after ``delay_s`` (or fails with ``error``) and reports a fixed view."""

    def __init__(self, delay_s=0.0, error=None, rtt_ms=10.0, usable=True, output="y"):
        self.delay_s, self.error, self.output = delay_s, error, output
        self.link_view = LinkView(usable=usable, rtt_ms=rtt_ms)
        self.sent = 0

    def view(self, model):
        return self.link_view

    def submit(self, request):
        self.sent += 1
        future = asyncio.get_running_loop().create_future()

        def finish():
            if self.error is not None:
                future.set_exception(self.error)
            else:
                out = codec.InferResponse(request.model_name, {self.output: request.inputs["x"] * 10}, "9", request.id)
                future.set_result(CloudAnswer(out, self.delay_s * 1000))

        asyncio.get_running_loop().call_later(self.delay_s, finish)
        return future


def plane_with(cloud, *, edge_delay_s=0.005, slo_ms=100.0, policy="latency_aware"):
    pool = ThreadPoolExecutor(1)
    runner = EdgeRunner(Halver(edge_delay_s), pool, workers=1, initial_service_ms=edge_delay_s * 1000)
    plane = DataPlane(EdgePool({"half": runner}, pool), cloud, RoutingPolicy(policy=policy, slo_ms=slo_ms))
    plane.memory = type(plane.memory)(cloud_preferred=True)
    return plane, runner


def ask(plane, runner, **params):
    async def go():
        await runner.start(warmup=False)
        try:
            request = codec.InferRequest("half", {"x": np.full((1, 2), 4.0, np.float32)}, id="q", parameters=params)
            started = time.perf_counter()
            response = await plane.infer(request)
            return response, (time.perf_counter() - started) * 1000
        finally:
            await runner.stop()

    return asyncio.run(go())


def test_cloud_on_time_answers():
    plane, runner = plane_with(ScriptedCloud(delay_s=0.01))
    response, _ = ask(plane, runner)
    assert response.parameters == {"served_by": "cloud", "route_reason": "rtt_ok", "fallback": False,
                                   "model_version": "9"}
    assert response.outputs["y"].tolist() == [[40.0, 40.0]] and response.id == "q"


def test_late_cloud_is_replaced_by_edge_at_the_last_safe_moment():
    plane, runner = plane_with(ScriptedCloud(delay_s=1.0), edge_delay_s=0.01, slo_ms=100)
    response, elapsed = ask(plane, runner)
    assert response.parameters["served_by"] == "edge" and response.parameters["fallback"]
    assert response.parameters["route_reason"] == "cloud_late"
    assert response.outputs["y"].tolist() == [[2.0, 2.0]]
    # The edge starts at ~85 ms (100 - 10 ms service - 5 ms margin), not when the cloud answers (1 s).
    assert 75 <= elapsed <= 400


def test_failing_cloud_falls_back_at_once():
    plane, runner = plane_with(ScriptedCloud(delay_s=0.002, error=Unavailable("stream broke")), slo_ms=2000)
    response, elapsed = ask(plane, runner)
    assert response.parameters["route_reason"] == "cloud_error" and response.parameters["fallback"]
    assert elapsed < 500  # not at the deadline timer (~1985 ms)


def test_cloud_arriving_while_the_edge_runs_still_wins():
    # Edge starts at ~100-60-5 = 35 ms and needs 60 ms; the cloud answers at 50 ms: cloud wins.
    plane, runner = plane_with(ScriptedCloud(delay_s=0.05), edge_delay_s=0.06, slo_ms=100)
    response, _ = ask(plane, runner)
    assert response.parameters["served_by"] == "cloud" and not response.parameters["fallback"]


def test_requested_cloud_waits_past_the_slo():
    plane, runner = plane_with(ScriptedCloud(delay_s=0.2), slo_ms=50)
    response, elapsed = ask(plane, runner, route="cloud")
    assert response.parameters["served_by"] == "cloud" and elapsed >= 190


def test_edge_route_never_touches_the_cloud():
    cloud = ScriptedCloud()
    plane, runner = plane_with(cloud)
    response, _ = ask(plane, runner, route="edge")
    assert response.parameters["served_by"] == "edge" and cloud.sent == 0


def test_bad_requests_fail_before_routing():
    cloud = ScriptedCloud()
    plane, runner = plane_with(cloud)
    with pytest.raises(InvalidInput, match="deadline_ms"):
        ask(plane, runner, deadline_ms=0)
    with pytest.raises(InvalidInput, match="route"):
        ask(plane, runner, route="sideways")

    async def unknown():
        await plane.infer(codec.InferRequest("nope", {"x": np.zeros((1, 2), np.float32)}))

    with pytest.raises(ModelNotFound, match="half"):
        asyncio.run(unknown())
    assert cloud.sent == 0 and plane.stats.errors == 3


def test_stats_count_tiers_reasons_and_fallbacks():
    plane, runner = plane_with(ScriptedCloud(delay_s=0.002, error=Unavailable("x")))
    ask(plane, runner)
    assert plane.stats.served_by == {"edge": 1} and plane.stats.fallbacks == 1
    assert plane.stats.reasons == {"cloud_error": 1}


def test_cloud_answer_missing_an_output_is_replaced_by_the_edge():
    plane, runner = plane_with(ScriptedCloud(delay_s=0.005, output="z"))
    response, _ = ask(plane, runner)
    assert response.parameters["served_by"] == "edge" and response.parameters["route_reason"] == "cloud_error"
    assert list(response.outputs) == ["y"]


@pytest.mark.parametrize(("cloud_s", "edge_s", "winner", "outcome"),
                         [(0.2, 0.005, "edge", "won"), (0.02, 0.08, "cloud", "lost")])
def test_hedge_outcomes_are_counted(cloud_s, edge_s, winner, outcome):
    from agent.metrics import AgentMetrics

    cloud = ScriptedCloud(delay_s=cloud_s)
    plane, runner = plane_with(cloud, edge_delay_s=edge_s, slo_ms=1000, policy="hedged")
    plane.policy = RoutingPolicy(policy="hedged", slo_ms=1000, hedge_delay_ms=5)
    plane.metrics = AgentMetrics()
    response, _ = ask(plane, runner)
    assert response.parameters["served_by"] == winner
    value = plane.metrics.registry.get_sample_value("fogline_agent_hedges_total",
                                                    {"model": "half", "outcome": outcome})
    assert value == 1 and cloud.sent == 1  # the hedge fired: the edge started while the cloud worked
    if winner == "edge":
        assert runner.calls == 1


def test_cpu_load_reaches_the_router():
    cloud = ScriptedCloud(rtt_ms=40.0)
    plane, runner = plane_with(cloud)
    plane.policy = RoutingPolicy(slo_ms=100, rtt_threshold_ms=30, rtt_recover_ms=20, cpu_high=0.9)
    plane.memory = type(plane.memory)(cloud_preferred=False)

    async def go():
        await runner.start(warmup=False)
        try:
            answers = []
            for percent in (95.0, 10.0):
                plane.cpu.set_source(lambda p=percent: p)
                answers.append(await plane.infer(codec.InferRequest("half", {"x": np.ones((1, 2), np.float32)})))
            return answers
        finally:
            await runner.stop()

    hot, calm = asyncio.run(go())
    assert (hot.parameters["served_by"], hot.parameters["route_reason"]) == ("cloud", "cpu_high")
    assert (calm.parameters["served_by"], calm.parameters["route_reason"]) == ("edge", "rtt_high")
