"""Edge and cloud paired: the cloud is asked for the edge's model version; a NOT_FOUND answer keeps the
model on the edge (``cloud_version_missing``) for a while, without judging the link. Router and data
plane, with a scripted cloud and a fake clock (no sockets)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from router_fixtures import observation, request
from test_agent_dataplane import Halver, ScriptedCloud

from fogline import codec
from fogline.agent.dataplane import DataPlane
from fogline.agent.edge_pool import EdgePool, EdgeRunner
from fogline.agent.router import decide
from fogline.agent.router_types import CLOUD_VERSION_MISSING, LinkView, RoutingPolicy, Tier
from fogline.errors import Unavailable

pytestmark = pytest.mark.unit

MISSING = LinkView(usable=True, rtt_ms=10.0, version_missing=True)


@pytest.mark.parametrize("policy", ["latency_aware", "hedged", "cascade", "cloud_only"])
def test_a_missing_version_keeps_the_model_on_the_edge_under_every_policy(policy):
    decision = decide(RoutingPolicy(policy=policy), observation(MISSING), request())
    assert decision.tier is Tier.EDGE and decision.reason == CLOUD_VERSION_MISSING
    assert decision.fallback is (policy == "cloud_only")
    assert decision.memory.cloud_preferred  # the link is as good as it was


def test_requested_routes_and_edge_only_with_a_missing_version():
    asked = decide(RoutingPolicy(), observation(MISSING), request(route="cloud"))
    assert (asked.tier, asked.reason, asked.fallback) == (Tier.EDGE, CLOUD_VERSION_MISSING, True)
    assert decide(RoutingPolicy(), observation(MISSING), request(route="edge")).reason == "requested_edge"
    assert decide(RoutingPolicy(policy="edge_only"), observation(MISSING), request()).reason == "policy_edge_only"
    with pytest.raises(ValueError):
        decide(RoutingPolicy(), observation(MISSING), request(route="moon"))


def test_without_the_flag_the_cloud_is_picked():
    assert decide(RoutingPolicy(), observation(), request()).tier is Tier.CLOUD


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RecordingCloud(ScriptedCloud):
    """Records the ``model_version`` of every request sent."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.versions: list[str] = []

    def submit(self, request):
        self.versions.append(request.model_version)
        return super().submit(request)


def test_the_cloud_is_asked_for_the_edge_version_and_not_found_keeps_the_model_on_the_edge():
    clock = Clock()
    cloud = RecordingCloud(delay_s=0.0, error=Unavailable("cloud error: [NOT_FOUND] model 'half' version '1' "
                                                          "is not served here; served version: 2"))

    async def go():
        pool = ThreadPoolExecutor(1)
        runner = EdgeRunner(Halver(0.0), pool, workers=1, max_delay_ms=0.0)
        plane = DataPlane(EdgePool({"half": runner}, pool), cloud, RoutingPolicy(slo_ms=60_000), clock=clock)
        plane.memory = type(plane.memory)(cloud_preferred=True)
        await runner.start(warmup=False)

        async def one():
            req = codec.InferRequest("half", {"x": np.full((1, 2), 4.0, np.float32)})
            return (await plane.infer(req)).parameters

        try:
            first = await one()  # to the cloud, which lacks version 1: the edge answers
            second = await one()  # kept on the edge without asking the cloud
            clock.now += plane.version_retry_s + 1
            cloud.error = None
            third = await one()  # asked again after the retry time: the cloud has it now
            return first, second, third
        finally:
            await runner.stop()

    first, second, third = asyncio.run(asyncio.wait_for(go(), 20))
    assert cloud.versions == ["1", "1"]
    assert (first["served_by"], first["route_reason"], first["fallback"]) == ("edge", CLOUD_VERSION_MISSING, True)
    assert (second["served_by"], second["route_reason"], second["fallback"]) == ("edge", CLOUD_VERSION_MISSING,
                                                                                  False)
    assert third["served_by"] == "cloud"


def test_other_cloud_errors_are_not_a_missing_version():
    cloud = RecordingCloud(delay_s=0.0, error=Unavailable("cloud error: [INTERNAL] boom"))

    async def go():
        pool = ThreadPoolExecutor(1)
        runner = EdgeRunner(Halver(0.0), pool, workers=1, max_delay_ms=0.0)
        plane = DataPlane(EdgePool({"half": runner}, pool), cloud, RoutingPolicy(slo_ms=60_000))
        plane.memory = type(plane.memory)(cloud_preferred=True)
        await runner.start(warmup=False)
        try:
            req = codec.InferRequest("half", {"x": np.full((1, 2), 4.0, np.float32)})
            return (await plane.infer(req)).parameters, plane.cloud_missing
        finally:
            await runner.stop()

    params, missing = asyncio.run(asyncio.wait_for(go(), 20))
    assert params["route_reason"] == "cloud_error" and missing == {}
