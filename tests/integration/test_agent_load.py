"""An overloaded device offloads to a healthy cloud: real cloud process, real proxy, real agent.

The link is shaped so ``latency_aware`` alone keeps work on the edge (RTT ~30 ms, above the 20 ms
threshold, yet well inside the 10 s deadline). Then the device is made busy two ways: a burst that
queues up more than ``load.max_queue_depth`` minilm requests, and a CPU reading above
``load.cpu_high_percent`` fed to the agent's CPU monitor (the same path psutil readings take).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import numpy as np
import pytest

from fogline import codec
from fogline.demo.loopback import LoopbackRig, device_config
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.models]

IMAGE = np.random.default_rng(3).uniform(0, 16, (1, 8, 8)).astype(np.float32)
TEXTS = np.array([("the quick brown fox jumps over the lazy dog " * 12).encode()] * 4, dtype=object)


def config(max_queue_depth: int):
    # A 10 s deadline: the offloaded burst (a dozen requests of four long texts) must never miss it on a
    # loaded 2-core CI machine, where the cloud and this agent share the cores; the test reads routes.
    return device_config(slo_ms=10000, rtt_threshold_ms=20, rtt_recover_ms=10, extra_yaml=(
        f"  load: {{max_queue_depth: {max_queue_depth}, cpu_high_percent: 90}}"))


async def settled_rig(rig: LoopbackRig) -> None:
    assert await rig.wait_cloud_usable(10.0)
    rig.server.dataplane.cpu.set_source(lambda: 5.0)  # whatever the shared test machine does
    for _ in range(50):  # a few probes: the RTT is measured, and it is above the threshold
        view = rig.server.link.view("digits")
        if view.rtt_ms is not None and view.rtt_ms > 20:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no RTT measured: {rig.server.link.view('digits')}")


async def burst(stub, n: int) -> list[codec.InferResponse]:
    msgs = [codec.request_to_proto(codec.InferRequest("minilm", {"text": TEXTS}, id=str(i))) for i in range(n)]

    async def gen():
        for m in msgs:
            yield m

    replies = [r async for r in stub.ModelStreamInfer(gen())]
    assert not any(r.error_message for r in replies), [r.error_message for r in replies]
    return [codec.response_from_proto(r.infer_response) for r in replies]


def run(model_repo, cloud, body, max_queue_depth):
    async def scenario():
        async with LoopbackRig(model_repo, cloud.port, config=config(max_queue_depth), delay_ms=15) as rig:
            await settled_rig(rig)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{rig.agent_port}") as channel:
                return await body(rig, pb_grpc.GRPCInferenceServiceStub(channel))

    return asyncio.run(scenario())


def test_a_burst_deeper_than_the_queue_limit_spills_to_the_cloud(model_repo, cloud):
    async def body(rig, stub):
        return await burst(stub, 16)

    calm = run(model_repo, cloud, body, max_queue_depth=64)
    busy = run(model_repo, cloud, body, max_queue_depth=2)
    calm_routes = Counter((r.parameters["served_by"], r.parameters["route_reason"]) for r in calm)
    busy_routes = Counter((r.parameters["served_by"], r.parameters["route_reason"]) for r in busy)
    # Without a queue limit latency_aware keeps the whole burst local (the RTT is "high").
    assert calm_routes == {("edge", "rtt_high"): 16}, calm_routes
    # With one, the requests that find 2 already waiting go to the cloud; the first ones stay local.
    assert busy_routes[("cloud", "queue_deep")] >= 4, busy_routes
    assert busy_routes[("edge", "rtt_high")] >= 2, busy_routes
    assert all(not r.parameters["fallback"] for r in busy)
    assert all(r.outputs["embedding"].shape == (4, 384) for r in busy)


def test_a_busy_cpu_offloads_and_work_returns_when_it_calms_down(model_repo, cloud):
    async def body(rig, stub):
        async def one(i):
            msg = codec.request_to_proto(codec.InferRequest("digits", {"image": IMAGE}, id=str(i)))
            return codec.response_from_proto(await stub.ModelInfer(msg))

        before = [await one(i) for i in range(3)]
        rig.server.dataplane.cpu.set_source(lambda: 97.0)
        hot = [await one(i) for i in range(5)]
        rig.server.dataplane.cpu.set_source(lambda: 20.0)
        after = [await one(i) for i in range(3)]
        return before, hot, after

    before, hot, after = run(model_repo, cloud, body, max_queue_depth=64)
    assert [r.parameters["route_reason"] for r in before] == ["rtt_high"] * 3
    assert all(r.parameters["served_by"] == "cloud" and r.parameters["route_reason"] == "cpu_high"
               for r in hot), [r.parameters for r in hot]
    assert all(r.parameters["served_by"] == "edge" for r in after)
    # The cloud's full model and the edge's INT8 model agree on the digit.
    assert len({int(np.argmax(r.outputs["probabilities"])) for r in before + hot}) == 1


def test_apply_config_swaps_routing_and_load_and_names_restart_only_changes(model_repo):
    from fogline.agent.server import create_server

    async def scenario():
        server, _ = create_server(device_config(policy="edge_only"), cloud="", models_dir=model_repo,
                                  warmup=False)
        try:
            assert server.dataplane.config_generation == 1
            newer = device_config(("digits",), policy="cloud_only", slo_ms=250,
                                  extra_yaml="  load: {max_queue_depth: 5, cpu_high_percent: 70}")
            restart_only = server.apply_config(newer)
            policy = server.dataplane.policy
            registry = server.metrics.registry
            return restart_only, policy, server.dataplane.config_generation, registry.get_sample_value(
                "fogline_agent_config_revision")
        finally:
            await server.dataplane.edge.stop()

    restart_only, policy, generation, revision_metric = asyncio.run(scenario())
    assert restart_only == []  # the model list too is applied on reload (fogline.agent.model_reload)
    assert policy.policy.value == "cloud_only" and policy.slo_ms == 250
    assert policy.max_queue_depth == 5 and policy.cpu_high == pytest.approx(0.7)
    assert generation == 2 and revision_metric == 2
