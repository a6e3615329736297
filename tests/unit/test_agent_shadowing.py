"""Live agreement in the data plane: shadows leave after the client's answer, never delay or change it.

The edge model halves its input; the cloud here holds every request until the test answers it, as
the edge's ``x / 2`` (agreeing) or ``x`` (disagreeing). Holding the cloud's answers is what shows that
the client's answer never waited for its shadow, on any machine: the client already has it while
the shadow is still out. The same flow against real servers is in
tests/integration/test_agent_shadow.py.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fogline import codec
from fogline.agent.dataplane import DataPlane
from fogline.agent.edge_pool import EdgePool, EdgeRunner
from fogline.agent.link_port import CloudAnswer
from fogline.agent.metrics import AgentMetrics
from fogline.agent.router_types import LinkView, RoutingPolicy
from fogline.agent.shadow import ShadowSettings
from fogline.agent.shadowing import PAUSE_S
from fogline.errors import Overloaded, Unavailable
from fogline.models.spec import TensorSpec

pytestmark = pytest.mark.unit


class Halver:
    """Edge model ``y = x / 2`` whose manifest gates the relative error at 0.05 (a ``generic`` import)."""

    name, version, task = "half", "3", "generic"
    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("y", "FP32", (-1, 2))]
    manifest = {"gate": {"limits": {"relative_error_max": 0.05}}, "metrics": {"int8": {"relative_error": 0.01}}}

    def predict(self, inputs):
        return {"y": inputs["x"] / 2}

    def confidence(self, outputs):
        return None


class HeldCloud:
    """A link that keeps every request until ``answer(...)``; its view is healthy unless told otherwise."""

    def __init__(self):
        self.link_view = LinkView(usable=True, rtt_ms=10.0)
        self.held: list[tuple[codec.InferRequest, asyncio.Future]] = []
        self.received: list[codec.InferRequest] = []

    def view(self, model):
        return self.link_view

    def submit(self, request):
        future = asyncio.get_running_loop().create_future()
        self.received.append(request)
        self.held.append((request, future))
        return future

    def answer(self, *, agree=True, error=None):
        """Answer every request held (``x / 2`` when agreeing, ``x`` when not, or fail with ``error``)."""
        while self.held:
            request, future = self.held.pop(0)
            if error is not None:
                future.set_exception(error)
                continue
            x = request.inputs["x"]
            response = codec.InferResponse(request.model_name, {"y": x / 2 if agree else x}, request.model_version,
                                           parameters={"served_by": "cloud", "model_version": request.model_version})
            future.set_result(CloudAnswer(response, 1.0))


def plane_with(cloud, *, share=1.0, max_inflight=4, window=20, min_rows=5, policy="edge_only", clock=None):
    pool = ThreadPoolExecutor(1)
    runner = EdgeRunner(Halver(), pool, workers=1, initial_service_ms=1.0, max_delay_ms=0.0)
    shadow = ShadowSettings(share=share, max_inflight=max_inflight, window=window, min_rows=min_rows)
    kwargs = {"clock": clock} if clock is not None else {}
    plane = DataPlane(EdgePool({"half": runner}, pool), cloud, RoutingPolicy(policy=policy, shadow=shadow),
                      metrics=AgentMetrics(), **kwargs)
    return plane, runner


def request(value=4.0, **params):
    return codec.InferRequest("half", {"x": np.full((1, 2), value, np.float32)}, id="q", parameters=params)


def run(plane, runner, body):
    async def go():
        await runner.start(warmup=False)
        try:
            return await body()
        finally:
            await runner.stop()

    return asyncio.run(asyncio.wait_for(go(), 20))


def sample(plane, name, **labels):
    return plane.metrics.registry.get_sample_value(name, labels)


def test_the_client_has_its_edge_answer_while_the_shadow_is_still_out():
    cloud = HeldCloud()
    plane, runner = plane_with(cloud)

    async def body():
        answers = [await plane.infer(request(float(i))) for i in range(1, 4)]
        out = len(cloud.held)  # every answer is back; the shadows are all still held by the cloud
        cloud.answer(agree=True)
        await asyncio.sleep(0)  # the done callbacks run on the loop's next turn
        return answers, out

    answers, out = run(plane, runner, body)
    assert out == 3
    for i, answer in enumerate(answers, start=1):
        assert answer.parameters["served_by"] == "edge" and answer.outputs["y"].tolist() == [[i / 2, i / 2]]
    shadow = cloud.received[0]
    assert shadow.parameters["shadow"] is True and shadow.model_version == "3"  # marked; paired with the edge
    assert plane.stats.served_by == {"edge": 3} and plane.stats.requests == 3  # shadows are not client traffic
    assert sample(plane, "fogline_agent_requests_total", model="half", tier="cloud", reason="rtt_ok") is None
    assert sample(plane, "fogline_agent_shadow_requests_total", model="half", version="3", outcome="compared") == 3
    assert sample(plane, "fogline_agent_shadow_agreement", model="half", version="3", metric="relative_error") == 0.0
    report = plane.shadow.snapshot(plane.policy)["models"]["half"]["3"]
    assert report["rows"] == 3 and report["gate"] == 0.05 and report["offline"] == 0.01
    assert plane.shadow.inflight == 0


def test_the_bound_drops_shadows_and_an_unhealthy_link_skips_them():
    cloud = HeldCloud()
    plane, runner = plane_with(cloud, max_inflight=2)

    async def body():
        for _ in range(5):
            await plane.infer(request())
        cloud.link_view = LinkView(usable=False, state="down", rtt_ms=10.0)
        await plane.infer(request())

    run(plane, runner, body)
    outcomes = plane.shadow.snapshot(plane.policy)["models"]["half"]["3"]["outcomes"]
    assert len(cloud.held) == 2 and outcomes == {"dropped": 3, "link_unhealthy": 1}


def test_a_refused_shadow_pauses_the_models_shadows(fake_clock):
    cloud = HeldCloud()
    plane, runner = plane_with(cloud, clock=fake_clock)

    async def body():
        await plane.infer(request())
        cloud.answer(error=Unavailable("[RESOURCE_EXHAUSTED] device over its in-flight limit"))
        await asyncio.sleep(0)
        await plane.infer(request())  # paused: not sent
        fake_clock.advance(PAUSE_S + 0.1)
        await plane.infer(request())

    run(plane, runner, body)
    outcomes = plane.shadow.snapshot(plane.policy)["models"]["half"]["3"]["outcomes"]
    assert outcomes == {"failed": 1, "cloud_busy": 1} and len(cloud.held) == 1


def test_a_shadow_answered_not_found_marks_the_version_missing_for_clients_and_shadows(fake_clock):
    cloud = HeldCloud()
    plane, runner = plane_with(cloud, clock=fake_clock)

    async def body():
        await plane.infer(request())  # edge_only: the edge answers, a shadow goes
        cloud.answer(error=Unavailable("[NOT_FOUND] model 'half' has no version '3'"))
        await asyncio.sleep(0)
        fake_clock.advance(PAUSE_S + 0.1)  # the pause is over; the missing version still holds
        await plane.infer(request())  # no shadow: the cloud lacks the version
        plane.policy = RoutingPolicy(policy="latency_aware", shadow=plane.policy.shadow)
        return await plane.infer(request())  # a client request would go to the cloud (rtt 10 ms) but for that

    answer = run(plane, runner, body)
    assert plane.cloud_missing["half"][0] == "3"
    assert answer.parameters["served_by"] == "edge" and answer.parameters["route_reason"] == "cloud_version_missing"
    outcomes = plane.shadow.snapshot(plane.policy)["models"]["half"]["3"]["outcomes"]
    assert outcomes == {"failed": 1, "link_unhealthy": 2} and cloud.held == []


def test_a_swapped_out_version_loses_its_agreement_gauges_and_late_shadows_are_harmless():
    cloud = HeldCloud()
    plane, runner = plane_with(cloud)

    async def body():
        await plane.infer(request())
        cloud.answer(agree=True)
        await asyncio.sleep(0)
        before = sample(plane, "fogline_agent_shadow_agreement", model="half", version="3", metric="relative_error")
        await plane.infer(request())  # its shadow is still out when the version goes
        plane.shadow.forget("half", "3")
        cloud.answer(agree=True)
        await asyncio.sleep(0)
        return before

    before = run(plane, runner, body)
    assert before == 0.0
    assert sample(plane, "fogline_agent_shadow_agreement", model="half", version="3", metric="relative_error") is None
    assert sample(plane, "fogline_agent_shadow_below_gate", model="half", version="3") is None
    assert ("half", "3") not in plane.shadow.trackers
    outcomes = plane.shadow.snapshot(plane.policy)["models"]["half"]["3"]["outcomes"]
    assert outcomes == {"compared": 1, "incomparable": 1}


def test_only_plain_edge_answers_are_shadowed():
    cloud = HeldCloud()
    plane, runner = plane_with(cloud, policy="latency_aware")
    plane.memory = type(plane.memory)(cloud_preferred=True)

    async def body():
        served = asyncio.ensure_future(plane.infer(request()))  # the cloud answers it: no shadow
        while not cloud.held:
            await asyncio.sleep(0)
        cloud.answer()
        cloud_answer = await served
        failing = asyncio.ensure_future(plane.infer(request()))  # a fallback to the edge: no shadow either
        while not cloud.held:
            await asyncio.sleep(0)
        cloud.answer(error=Unavailable("stream broke"))
        return cloud_answer, await failing

    by_cloud, fallback = run(plane, runner, body)
    assert by_cloud.parameters["served_by"] == "cloud" and fallback.parameters["fallback"] is True
    assert len(cloud.received) == 2 and not any(r.parameters.get("shadow") for r in cloud.received)
    assert plane.shadow.outcomes == {}


def test_falling_below_the_gate_and_recovering_log_one_line_each(caplog):
    cloud = HeldCloud()
    plane, runner = plane_with(cloud, window=10, min_rows=5)

    async def body():
        for agree, count in ((False, 8), (True, 10)):
            for _ in range(count):
                await plane.infer(request())
                cloud.answer(agree=agree)
                await asyncio.sleep(0)

    with caplog.at_level(logging.INFO, logger="fogline.agent.shadowing"):
        run(plane, runner, body)
    lines = [r for r in caplog.records if r.name == "fogline.agent.shadowing"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO]
    assert "half v3 relative_error 0.5000 over the last 5 rows misses the manifest's gate (<= 0.05" in lines[0].message
    assert "meets the manifest's gate again" in lines[1].message
    assert sample(plane, "fogline_agent_shadow_below_gate", model="half", version="3") == 0


def test_a_cloud_overloaded_error_counts_as_failed_not_as_disagreement():
    cloud = HeldCloud()
    plane, runner = plane_with(cloud)

    async def body():
        await plane.infer(request())
        cloud.answer(error=Overloaded("busy"))
        await asyncio.sleep(0)

    run(plane, runner, body)
    assert plane.shadow.trackers[("half", "3")].rows == 0
    assert sample(plane, "fogline_agent_shadow_requests_total", model="half", version="3", outcome="failed") == 1
