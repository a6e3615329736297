"""The data plane's request flow with a scripted cloud: on time, late, failing, racing the edge.

The cloud here is a small object with the link's two methods (``view``, ``submit``) whose answers
arrive when the test says: at once, never, after a fixed time, or when the edge model has started
(``answer_when_edge_runs``); the edge model can hold its call until the cloud has answered. So the
races these tests are about (cloud late, cloud arriving while the edge runs, hedges) have one outcome
on any machine; only lower bounds on elapsed time are asserted (timers never fire early).
The same flow runs against real servers in tests/integration/test_agent_network.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fogline import codec
from fogline.agent.cloud_link import CloudLink
from fogline.agent.dataplane import DataPlane
from fogline.agent.edge_pool import EdgePool, EdgeRunner
from fogline.agent.link_port import CloudAnswer, CloudLinkPort
from fogline.agent.router_types import LinkView, RoutingPolicy
from fogline.errors import InvalidInput, ModelNotFound, Unavailable
from fogline.models.spec import TensorSpec

pytestmark = pytest.mark.unit


class Halver:
    """Edge model: y = x / 2, taking ``delay_s``; ``on_start`` (if set) is called on its thread as a
    call begins, and the call then waits for ``gate``."""

    name, version, task = "half", "1", "regression"
    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("y", "FP32", (-1, 2))]

    def __init__(self, delay_s=0.005):
        self.delay_s = delay_s
        self.on_start = None
        self.gate = threading.Event()
        self.gate.set()

    def predict(self, inputs):
        if self.on_start is not None:
            self.on_start()
        assert self.gate.wait(15), "the edge model's gate was never opened"
        time.sleep(self.delay_s)
        return {"y": inputs["x"] / 2}

    def confidence(self, outputs):
        return None


NEVER = None  # a cloud that never answers (the test's time limit ends a wait for it)


class ScriptedCloud:
    """Answers after ``delay_s`` seconds (0: at once, on the next turn of the loop; ``NEVER``: not at
    all; or only when ``answer_now`` is called), or fails with ``error``; reports a fixed view."""

    def __init__(self, delay_s=0.0, error=None, rtt_ms=10.0, usable=True, output="y"):
        self.delay_s, self.error, self.output = delay_s, error, output
        self.link_view = LinkView(usable=usable, rtt_ms=rtt_ms)
        self.sent = 0
        self.answered = threading.Event()
        self._pending: list = []

    def view(self, model):
        return self.link_view

    def submit(self, request):
        self.sent += 1
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((request, future))
        if self.delay_s is not NEVER:
            loop.call_later(self.delay_s, self.answer_now)
        return future

    def answer_now(self):
        """Answer every request sent so far (on the event loop's thread)."""
        while self._pending:
            request, future = self._pending.pop(0)
            if future.done():
                continue
            if self.error is not None:
                future.set_exception(self.error)
            else:
                out = codec.InferResponse(request.model_name, {self.output: request.inputs["x"] * 10}, "9", request.id)
                future.set_result(CloudAnswer(out, (self.delay_s or 0.0) * 1000))
        self.answered.set()


def answer_when_edge_runs(cloud, model):
    """The cloud answers the moment the edge model starts, and the edge call finishes only after that:
    the cloud's answer arrives while the edge runs, on any machine."""
    loop = asyncio.get_running_loop()
    model.gate.clear()

    def started():
        loop.call_soon_threadsafe(cloud.answer_now)
        assert cloud.answered.wait(15)
        model.gate.set()

    model.on_start = started


def plane_with(cloud, *, edge_delay_s=0.005, slo_ms=100.0, policy="latency_aware"):
    pool = ThreadPoolExecutor(1)
    runner = EdgeRunner(Halver(edge_delay_s), pool, workers=1, initial_service_ms=edge_delay_s * 1000, max_delay_ms=0.0)
    plane = DataPlane(EdgePool({"half": runner}, pool), cloud, RoutingPolicy(policy=policy, slo_ms=slo_ms))
    plane.memory = type(plane.memory)(cloud_preferred=True)
    return plane, runner


def ask(plane, runner, *, before=None, **params):
    """One request through the plane; ``before(plane, runner)`` runs first, on the event loop."""

    async def go():
        if before is not None:
            before(plane, runner)
        await runner.start(warmup=False)
        try:
            request = codec.InferRequest("half", {"x": np.full((1, 2), 4.0, np.float32)}, id="q", parameters=params)
            started = time.perf_counter()
            response = await plane.infer(request)
            return response, (time.perf_counter() - started) * 1000
        finally:
            await runner.stop()

    return asyncio.run(asyncio.wait_for(go(), 20))


def test_the_scripted_cloud_and_the_real_link_both_are_cloud_link_ports():
    assert isinstance(ScriptedCloud(), CloudLinkPort)
    assert issubclass(CloudLink, CloudLinkPort)
    assert not isinstance(object(), CloudLinkPort)


def test_cloud_on_time_answers():
    plane, runner = plane_with(ScriptedCloud(delay_s=0.0))
    response, _ = ask(plane, runner)
    assert response.parameters == {"served_by": "cloud", "route_reason": "rtt_ok", "fallback": False,
                                   "model_version": "9"}
    assert response.outputs["y"].tolist() == [[40.0, 40.0]] and response.id == "q"


def test_late_cloud_is_replaced_by_edge_at_the_last_safe_moment():
    plane, runner = plane_with(ScriptedCloud(delay_s=NEVER), edge_delay_s=0.01, slo_ms=100)
    response, elapsed = ask(plane, runner)
    assert response.parameters["served_by"] == "edge" and response.parameters["fallback"]
    assert response.parameters["route_reason"] == "cloud_late"
    assert response.outputs["y"].tolist() == [[2.0, 2.0]]
    # The edge starts at ~85 ms (100 - 10 ms service - 5 ms margin), not before; the cloud never answers,
    # so the answer itself shows the edge did not wait for it.
    assert elapsed >= 75


def test_failing_cloud_falls_back_at_once():
    # An SLO of a minute: waiting for the deadline timer instead would trip the 20 s time limit.
    plane, runner = plane_with(ScriptedCloud(delay_s=0.0, error=Unavailable("stream broke")), slo_ms=60_000)
    response, _ = ask(plane, runner)
    assert response.parameters["route_reason"] == "cloud_error" and response.parameters["fallback"]


def test_cloud_arriving_while_the_edge_runs_still_wins():
    # The edge starts at ~100-60-5 = 35 ms (the cloud is late); the cloud answers while it runs: cloud wins.
    cloud = ScriptedCloud(delay_s=NEVER)
    plane, runner = plane_with(cloud, edge_delay_s=0.06, slo_ms=100)
    response, _ = ask(plane, runner, before=lambda plane, runner: answer_when_edge_runs(cloud, runner.model))
    assert response.parameters["served_by"] == "cloud" and not response.parameters["fallback"]
    assert cloud.answered.is_set()


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
    plane, runner = plane_with(ScriptedCloud(delay_s=0.0, error=Unavailable("x")))
    ask(plane, runner)
    assert plane.stats.served_by == {"edge": 1} and plane.stats.fallbacks == 1
    assert plane.stats.reasons == {"cloud_error": 1}


def test_cloud_answer_missing_an_output_is_replaced_by_the_edge():
    plane, runner = plane_with(ScriptedCloud(delay_s=0.0, output="z"))
    response, _ = ask(plane, runner)
    assert response.parameters["served_by"] == "edge" and response.parameters["route_reason"] == "cloud_error"
    assert list(response.outputs) == ["y"]


@pytest.mark.parametrize(("winner", "outcome"), [("edge", "won"), ("cloud", "lost")])
def test_hedge_outcomes_are_counted(winner, outcome):
    from fogline.agent.metrics import AgentMetrics

    # The edge wins against a cloud that never answers; the cloud wins by answering while the edge runs.
    cloud = ScriptedCloud(delay_s=NEVER)
    plane, runner = plane_with(cloud, edge_delay_s=0.005, slo_ms=1000, policy="hedged")
    plane.policy = RoutingPolicy(policy="hedged", slo_ms=1000, hedge_delay_ms=5)
    plane.metrics = AgentMetrics()
    before = (lambda plane, runner: answer_when_edge_runs(cloud, runner.model)) if winner == "cloud" else None
    response, _ = ask(plane, runner, before=before)
    assert response.parameters["served_by"] == winner
    assert response.parameters["route_reason"] == {"edge": "cloud_late", "cloud": "rtt_ok+hedge"}[winner]
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
