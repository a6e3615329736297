"""The agent's gRPC surface and policies, with a real cloud process behind the real proxy."""

from __future__ import annotations

import asyncio
import math

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fogline import codec
from fogline.demo.loopback import LoopbackRig, device_config
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.models]

IMAGE = np.random.default_rng(1).uniform(0, 16, (2, 8, 8)).astype(np.float32)


def digits(id_="", **params):
    return codec.request_to_proto(codec.InferRequest("digits", {"image": IMAGE}, id=id_, parameters=params))


async def infer(stub, msg):
    return codec.response_from_proto(await stub.ModelInfer(msg))


def with_rig(model_repo, cloud, body, **rig_kwargs):
    async def scenario():
        async with LoopbackRig(model_repo, cloud.port, **rig_kwargs) as rig:
            await rig.wait_cloud_usable(10.0)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{rig.agent_port}") as channel:
                return await body(rig, channel, pb_grpc.GRPCInferenceServiceStub(channel))

    return asyncio.run(scenario())


def test_metadata_health_reflection_and_errors(model_repo, cloud):
    async def body(rig, channel, stub):
        out = {}
        out["meta"] = await stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"))
        out["server"] = await stub.ServerMetadata(pb.ServerMetadataRequest())
        out["health"] = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
        refl = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        out["services"] = [s.name async for r in refl for s in r.list_services_response.service]
        out["ready_v2"] = (await stub.ModelReady(pb.ModelReadyRequest(name="digits", version="2"))).ready
        codes = {}
        for label, call in [
            ("unknown_model", stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))),
            ("bad_route", stub.ModelInfer(digits(route="moon"))),
            ("bad_deadline", stub.ModelInfer(digits(deadline_ms=-5))),
            ("bad_shape", stub.ModelInfer(codec.request_to_proto(codec.InferRequest(
                "digits", {"image": np.zeros((1, 8, 7), np.float32)})))),
            ("bad_version", stub.ModelInfer(codec.request_to_proto(codec.InferRequest(
                "digits", {"image": IMAGE}, model_version="9")))),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            codes[label] = (info.value.code(), info.value.details())
        out["codes"] = codes
        return out

    out = with_rig(model_repo, cloud, body)
    assert out["meta"].name == "digits" and list(out["meta"].versions) == ["1"]
    assert [t.name for t in out["meta"].inputs] == ["image"] and list(out["meta"].inputs[0].shape) == [-1, 8, 8]
    assert out["server"].name.startswith("fogline-agent")
    assert out["health"].status == health_pb2.HealthCheckResponse.SERVING
    assert "inference.GRPCInferenceService" in out["services"] and "grpc.health.v1.Health" in out["services"]
    assert out["ready_v2"] is False
    codes = out["codes"]
    assert codes["unknown_model"][0] == grpc.StatusCode.NOT_FOUND and "serves" in codes["unknown_model"][1]
    assert codes["bad_route"][0] == grpc.StatusCode.INVALID_ARGUMENT and "route" in codes["bad_route"][1]
    assert codes["bad_deadline"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert codes["bad_shape"][0] == grpc.StatusCode.INVALID_ARGUMENT and "image" in codes["bad_shape"][1]
    assert codes["bad_version"][0] == grpc.StatusCode.NOT_FOUND


def test_stream_answers_out_of_order_and_survives_bad_requests(model_repo, cloud):
    async def body(rig, channel, stub):
        long_texts = np.array([("word " * 200).encode()] * 16, dtype=object)
        msgs = [codec.request_to_proto(codec.InferRequest("minilm", {"text": long_texts}, id="big",
                                                          parameters={"route": "edge"}))]
        msgs += [digits(f"d{i}", route="edge") for i in range(5)]
        msgs.append(codec.request_to_proto(codec.InferRequest("digits", {"image": np.zeros((1, 3), np.float32)},
                                                              id="broken")))
        msgs += [digits(f"c{i}", route="cloud") for i in range(5)]

        async def gen():
            for m in msgs:
                yield m

        return [r async for r in stub.ModelStreamInfer(gen())]

    replies = with_rig(model_repo, cloud, body)
    ids = [r.infer_response.id for r in replies]
    assert sorted(ids) == sorted(["big", "broken"] + [f"d{i}" for i in range(5)] + [f"c{i}" for i in range(5)])
    assert ids.index("d0") < ids.index("big")  # small requests did not wait for the big one
    broken = next(r for r in replies if r.infer_response.id == "broken")
    assert broken.error_message.startswith("[INVALID_ARGUMENT] ") and "image" in broken.error_message
    for r in replies:
        if r.infer_response.id.startswith("c"):
            params = codec.params_from_proto(r.infer_response.parameters)
            assert params["served_by"] == "cloud", params


def test_a_lone_client_waiting_on_its_stream_gets_the_edge_model_run_on_the_event_loop(model_repo, cloud):
    def sentence(i):
        return codec.request_to_proto(codec.InferRequest(
            "minilm", {"text": np.array([b"a camera saw a bicycle"], dtype=object)}, id=str(i),
            parameters={"route": "edge"}))

    async def ask(call, i):
        await call.write(sentence(i))
        reply = await call.read()
        assert not reply.error_message, reply.error_message
        assert codec.params_from_proto(reply.infer_response.parameters)["served_by"] == "edge"

    async def body(rig, channel, stub):
        runner = rig.server.dataplane.edge.runners["minilm"]
        assert not runner.inline  # minilm is not cheap enough to run on the loop by itself
        # Whether a call is short enough for the loop depends on this machine's speed; what is under test
        # here is when the servicer says a client waits alone, so any call time qualifies.
        runner.on_loop_max_ms = math.inf
        counts = {}
        mark = runner.calls_on_loop
        call = stub.ModelStreamInfer()
        for i in range(4):  # one client, one request at a time
            await ask(call, i)
        counts["alone"] = runner.calls_on_loop - mark
        other = stub.ModelStreamInfer()  # a second client connects: nothing runs on the loop
        await ask(other, 100)
        mark = runner.calls_on_loop
        for i in range(3):
            await ask(call, 10 + i)
        counts["two_clients"] = runner.calls_on_loop - mark
        await other.done_writing()
        assert await other.read() is grpc.aio.EOF
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        fresh = stub.ModelStreamInfer()  # its first request: the client may be sending a burst
        mark = runner.calls_on_loop
        await ask(fresh, 200)
        counts["first_of_a_stream"] = runner.calls_on_loop - mark
        await fresh.done_writing()
        return counts

    counts = with_rig(model_repo, cloud, body, config=device_config(policy="edge_only"))
    # the first request of a stream never runs on the loop; once the client has shown it waits, it does
    assert counts == {"alone": 3, "two_clients": 0, "first_of_a_stream": 0}


@pytest.mark.parametrize(("policy", "tier"), [("edge_only", "edge"), ("cloud_only", "cloud")])
def test_fixed_policies(model_repo, cloud, policy, tier):
    async def body(rig, channel, stub):
        return [await infer(stub, digits(str(i))) for i in range(5)]

    replies = with_rig(model_repo, cloud, body, config=device_config(policy=policy))
    assert all(r.parameters["served_by"] == tier for r in replies)
    assert all(r.parameters["route_reason"] == f"policy_{policy}" for r in replies)


def test_cloud_only_falls_back_to_edge_while_blackholed(model_repo, cloud):
    async def body(rig, channel, stub):
        rig.proxy.set_conditions(blackhole=True)
        return [await infer(stub, digits(str(i), deadline_ms=150)) for i in range(8)]

    replies = with_rig(model_repo, cloud, body, config=device_config(policy="cloud_only"))
    assert all(r.parameters["served_by"] == "edge" and r.parameters["fallback"] for r in replies)
    # cloud_only has no deadline backup: the first request waits for the cloud until the link gives
    # up on the dead connection and fails the call; later ones see the link down and go to the edge.
    assert replies[0].parameters["route_reason"] == "cloud_error"


def test_deadline_parameter_tightens_the_wait_for_the_cloud(model_repo, cloud):
    # 80 ms round trip through the proxy: fine for a 1000 ms deadline, hopeless for 30 ms. The
    # thresholds sit far above it, so a stall of the shared CI machine cannot flip the hysteresis:
    # what the test reads is the deadline, not the RTT state.
    async def body(rig, channel, stub):
        await infer(stub, digits("warm"))
        rig.proxy.set_conditions(delay_ms=40)
        # Wait (bounded) until the link has measured the new round trip, instead of guessing a sleep.
        for _ in range(200):
            rtt = rig.server.link.view("digits").effective_rtt_ms
            if rtt is not None and 70.0 <= rtt < 400.0:
                break
            await asyncio.sleep(0.05)
        loose = [await infer(stub, digits(f"l{i}", deadline_ms=1000)) for i in range(3)]
        tight = [await infer(stub, digits(f"t{i}", deadline_ms=30)) for i in range(3)]
        # A gRPC timeout shorter than the SLO tightens the budget the same way.
        tight += [codec.response_from_proto(await stub.ModelInfer(digits(f"g{i}"), timeout=0.05))
                  for i in range(3)]
        return loose, tight

    loose, tight = with_rig(model_repo, cloud, body,
                            config=device_config(rtt_threshold_ms=600, rtt_recover_ms=400, slo_ms=1000))
    assert all(r.parameters["served_by"] == "cloud" for r in loose), [r.parameters for r in loose]
    assert all(r.parameters["served_by"] == "edge" and r.parameters["route_reason"] == "deadline"
               for r in tight), [r.parameters for r in tight]


def test_cascade_escalates_low_confidence_edge_answers(model_repo, cloud):
    async def body(rig, channel, stub):
        return [await infer(stub, digits(str(i), deadline_ms=1000)) for i in range(4)]

    config = device_config(policy="cascade")
    escalate_all = config.model_copy(update={"routing": config.routing.model_copy(
        update={"cascade_threshold": 1.0})})
    never = config.model_copy(update={"routing": config.routing.model_copy(update={"cascade_threshold": 0.0})})
    up = with_rig(model_repo, cloud, body, config=escalate_all)
    down = with_rig(model_repo, cloud, body, config=never)
    assert all(r.parameters["served_by"] == "cloud" and r.parameters["route_reason"] == "cascade_escalated"
               for r in up[1:]), [r.parameters for r in up]
    assert all(r.parameters["served_by"] == "edge" and r.parameters["route_reason"] == "cascade" for r in down[1:])


def test_prometheus_metrics_follow_the_traffic(model_repo, cloud):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def body(rig, channel, stub):
        for i in range(3):  # a generous deadline: a slow moment of a busy machine must not count as late
            await infer(stub, digits(str(i), deadline_ms=5000))
        await infer(stub, digits("e", route="edge"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ModelInfer(digits("bad", route="moon"))
        rig.server.refresh_gauges()
        url = f"http://127.0.0.1:{port}/metrics"
        return (await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())).decode()

    text = with_rig(model_repo, cloud, body,
                    config=device_config(extra_yaml=f"  metrics: {{port: {port}, host: 127.0.0.1}}"))
    assert 'fogline_agent_requests_total{model="digits",reason="rtt_ok",tier="cloud"} 3.0' in text
    assert 'fogline_agent_requests_total{model="digits",reason="requested_edge",tier="edge"} 1.0' in text
    assert 'fogline_agent_errors_total{code="INVALID_ARGUMENT",model="digits"} 1.0' in text
    assert 'fogline_agent_cloud_link_state{state="ready"} 1.0' in text
    assert 'fogline_agent_cloud_rtt_seconds{stat="smoothed"}' in text
    assert 'fogline_agent_build_info{device="loopback"' in text
