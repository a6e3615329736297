"""Hedging and cascade against a real cloud process behind the real network proxy, with the work each
tier did counted (edge runner calls, agent metrics scraped from its endpoint and parsed with
prometheus-client's own parser)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from fogline import codec
from fogline.agent.router_types import RoutingPolicy
from fogline.demo.loopback import LoopbackRig, device_config
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.models]

IMAGE = np.random.default_rng(5).uniform(0, 16, (1, 8, 8)).astype(np.float32)


def routed(policy: str, metrics_port: int = 0, **routing):
    config = device_config(policy=policy, slo_ms=1000, rtt_threshold_ms=400, rtt_recover_ms=300,
                           extra_yaml=f"  metrics: {{port: {metrics_port}, host: 127.0.0.1}}")
    return config.model_copy(update={"routing": config.routing.model_copy(update=routing)})


def run(model_repo, cloud, config, delay_ms, body):
    async def scenario():
        async with LoopbackRig(model_repo, cloud.port, config=config, delay_ms=delay_ms) as rig:
            assert await rig.wait_cloud_usable(10.0)
            rig.server.dataplane.cpu.set_source(lambda: 5.0)  # the shared test machine's CPU is not the point
            for _ in range(50):
                if rig.server.link.view("digits").rtt_ms is not None:
                    break
                await asyncio.sleep(0.1)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{rig.agent_port}") as channel:
                return await body(rig, pb_grpc.GRPCInferenceServiceStub(channel))

    return asyncio.run(scenario())


async def infer(stub, image=IMAGE, id_="", **params):
    msg = codec.request_to_proto(codec.InferRequest("digits", {"image": image}, id=id_, parameters=params))
    return codec.response_from_proto(await stub.ModelInfer(msg))


def test_hedge_wins_on_a_slow_cloud_and_the_metrics_show_it(model_repo, cloud, free_port, scrape_metrics):
    port = free_port  # the agent's metrics endpoint takes a number (0 turns it off)

    async def body(rig, stub):
        runner = rig.server.dataplane.edge.runners["digits"]
        calls = runner.calls
        replies = [await infer(stub, id_=str(i)) for i in range(6)]
        asked = await infer(stub, id_="c", route="cloud")  # waits for the cloud: a cloud latency sample
        assert asked.parameters["served_by"] == "cloud"
        rig.server.refresh_gauges()
        return replies, runner.calls - calls, await asyncio.to_thread(scrape_metrics, port)

    # 2 x 40 ms of network delay: the cloud is preferred (80 ms < 300 ms) but slower than the 10 ms hedge.
    replies, edge_runs, m = run(model_repo, cloud, routed("hedged", port, hedge_delay_ms=10.0), 40, body)
    assert all(r.parameters["served_by"] == "edge" and r.parameters["route_reason"] == "cloud_late"
               and r.parameters["fallback"] for r in replies), [r.parameters for r in replies]
    assert edge_runs == 6
    assert m[("fogline_agent_hedges_total", (("model", "digits"), ("outcome", "won")))] == 6
    assert m[("fogline_agent_hedges_total", (("model", "digits"), ("outcome", "lost")))] == 0
    assert m[("fogline_agent_requests_total",
              (("model", "digits"), ("reason", "cloud_late"), ("tier", "edge")))] == 6
    assert m[("fogline_agent_fallbacks_total",
              (("from_tier", "cloud"), ("model", "digits"), ("to_tier", "edge")))] == 6
    assert m[("fogline_agent_edge_latency_seconds_count", (("model", "digits"),))] >= 6
    assert m[("fogline_agent_edge_latency_seconds_bucket", (("le", "+Inf"), ("model", "digits")))] >= 6
    assert m[("fogline_agent_request_latency_seconds_count", (("model", "digits"), ("tier", "edge")))] == 6
    # Each answer came after the 10 ms hedge delay and well before the ~80 ms cloud round trip.
    assert m[("fogline_agent_request_latency_seconds_bucket",
              (("le", "0.005"), ("model", "digits"), ("tier", "edge")))] == 0
    assert m[("fogline_agent_request_latency_seconds_bucket",
              (("le", "0.05"), ("model", "digits"), ("tier", "edge")))] == 6
    rtt = m[("fogline_agent_cloud_rtt_seconds", (("stat", "smoothed"),))]
    assert 0.06 < rtt < 0.5, rtt
    assert m[("fogline_agent_cloud_link_state", (("state", "ready"),))] == 1
    assert m[("fogline_agent_cloud_link_state", (("state", "down"),))] == 0
    assert m[("fogline_agent_config_revision", ())] == 1
    assert m[("fogline_agent_cpu_load_ratio", ())] == pytest.approx(0.05)
    assert m[("fogline_agent_cloud_latency_seconds_count", (("model", "digits"),))] == 1
    assert m[("fogline_agent_cloud_latency_seconds_sum", (("model", "digits"),))] > 0.06
    assert any(("device", "loopback") in labels for name, labels in m if name == "fogline_agent_build_info")


def test_hedge_does_not_double_work_on_a_fast_cloud(model_repo, cloud):
    async def body(rig, stub):
        runner = rig.server.dataplane.edge.runners["digits"]
        calls = runner.calls
        replies = [await infer(stub, id_=str(i)) for i in range(10)]
        await asyncio.sleep(0.3)  # a hedge started late would show up in the count by now
        registry = rig.server.metrics.registry
        hedges = [registry.get_sample_value("fogline_agent_hedges_total", {"model": "digits", "outcome": o})
                  for o in ("won", "lost")]
        return replies, runner.calls - calls, hedges

    replies, edge_runs, hedges = run(model_repo, cloud, routed("hedged", hedge_delay_ms=150.0), 1, body)
    assert all(r.parameters["served_by"] == "cloud" and r.parameters["route_reason"] == "rtt_ok+hedge"
               for r in replies), [r.parameters for r in replies]
    assert edge_runs == 0  # the edge never ran: no doubled work
    assert hedges == [0.0, 0.0]


def test_cascade_escalates_exactly_the_low_confidence_digits(model_repo, cloud):
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(11)
    images = [img.astype(np.float32)[None] for img in load_digits().images[:20]]
    images += [rng.uniform(0, 16, (1, 8, 8)).astype(np.float32) for _ in range(10)]  # ambiguous scribbles

    async def body(rig, stub):
        runner = rig.server.dataplane.edge.runners["digits"]
        # The edge model's own confidence, straight from the runtime (not through the agent).
        confidence = [float(runner.model.confidence(runner.model.predict({"image": img}))[0]) for img in images]
        ordered = sorted(confidence)
        # A threshold between two clearly separated confidences, with digits on both sides of it.
        k = max(range(5, len(ordered) - 5), key=lambda i: ordered[i + 1] - ordered[i])
        threshold = (ordered[k] + ordered[k + 1]) / 2
        rig.server.dataplane.apply_policy(RoutingPolicy(
            policy="cascade", slo_ms=2000, rtt_threshold_ms=400, rtt_recover_ms=300, cascade_threshold=threshold))
        await infer(stub, images[0], deadline_ms=2000)  # the router learns its cloud preference
        replies = [await infer(stub, img, str(i), deadline_ms=2000) for i, img in enumerate(images)]
        escalations = rig.server.metrics.registry.get_sample_value("fogline_agent_escalations_total",
                                                                   {"model": "digits"})
        return confidence, threshold, replies, escalations

    confidence, threshold, replies, escalations = run(model_repo, cloud, routed("cascade"), 5, body)
    low = [c < threshold for c in confidence]
    assert 5 <= sum(low) <= 25
    for conf, is_low, reply in zip(confidence, low, replies, strict=True):
        expected = ("cloud", "cascade_escalated") if is_low else ("edge", "cascade")
        assert (reply.parameters["served_by"], reply.parameters["route_reason"]) == expected, (conf, threshold)
        if not is_low:  # an edge answer stands as the edge computed it
            assert float(reply.outputs["probabilities"].max()) == pytest.approx(conf, abs=1e-6)
    assert escalations >= sum(low)
