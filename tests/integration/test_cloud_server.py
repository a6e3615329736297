"""The cloud server on loopback with the real full-precision models.

The server runs on its own event loop in a background thread of the test process; the tests talk to
it with fogline's generated stubs (plain synchronous gRPC) and, for wire compatibility, with an
unmodified ``tritonclient.grpc`` client in a subprocess (tritonclient and fogline's stubs both
register ``inference.*`` in protobuf's default pool, so they cannot share a process).
"""

from __future__ import annotations

import importlib.util
import json
import time

import grpc
import numpy as np
import pytest
from cloud_thread import CloudThread, metric, run_python
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fogline import codec
from fogline.cloud.server import load_models
from fogline.cloud.settings import ServingSettings
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.models, pytest.mark.slow]

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices answer locally when the network is slow.",
    "fogline routes each request to the edge or the cloud.",
    "A short one.",
    "Full-precision models live in the cloud tier and batch requests dynamically.",
]


@pytest.fixture(scope="module")
def models(model_repo):
    return {m.name: m for m in load_models(ServingSettings(device="cpu", torch_threads=1), model_repo)}


@pytest.fixture(scope="module")
def cloud(models):
    settings = ServingSettings(
        listen="127.0.0.1:0", device="cpu", metrics_port=0, max_batch_size=16, reflection=True
    )
    server = CloudThread(settings, list(models.values()))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tight(models):
    """A server with no batching, a queue of 2 and a 1 MiB message limit."""
    settings = ServingSettings(
        listen="127.0.0.1:0", device="cpu", metrics_port=None, max_batch_size=1, max_queue_size=2,
        max_message_bytes=1 << 20,
    )  # fmt: skip
    server = CloudThread(settings, list(models.values()))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(cloud):
    channel = grpc.insecure_channel(cloud.address)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(n, 8, 8)).astype(np.float32)


def texts(items) -> np.ndarray:
    return np.array([t.encode() for t in items], dtype=object)


def request(model: str, inputs: dict, rid: str = "", **params) -> pb.ModelInferRequest:
    return codec.request_to_proto(codec.InferRequest(model, inputs, id=rid, parameters=params))


def stream_all(stub, requests, timeout=60):
    """Send ``requests`` on one stream; return every response once the server ends the stream."""
    return list(stub.ModelStreamInfer(iter(requests), timeout=timeout))


# ---------------------------------------------------------------------------------------- metadata


def test_health_readiness_metadata_and_reflection(cloud, stub):
    channel = grpc.insecure_channel(cloud.address)
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="")).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="minilm")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="minilm"))
    assert (meta.inputs[0].name, meta.inputs[0].datatype, list(meta.inputs[0].shape)) == (
        "text",
        "BYTES",
        [-1],
    )
    assert (meta.outputs[0].name, list(meta.outputs[0].shape)) == ("embedding", [-1, 384])
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"))
    assert list(meta.inputs[0].shape) == [-1, 8, 8] and meta.outputs[0].name == "probabilities"
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(
        reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in reply.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    channel.close()


# ---------------------------------------------------------------------------------------- inference


def test_unary_outputs_equal_in_process_model_and_carry_cloud_parameters(stub, models):
    x = images(5, seed=1)
    reply = codec.response_from_proto(stub.ModelInfer(request("digits", {"image": x}, "r-7"), timeout=30))
    np.testing.assert_allclose(
        reply.outputs["probabilities"], models["digits"].predict({"image": x})["probabilities"], atol=1e-5
    )
    assert reply.id == "r-7" and reply.model_version == models["digits"].version
    assert reply.parameters["served_by"] == "cloud"
    assert reply.parameters["model_version"] == models["digits"].version
    assert isinstance(reply.parameters["compute_ms"], float) and reply.parameters["compute_ms"] > 0
    t = texts(TEXTS)
    reply = codec.response_from_proto(stub.ModelInfer(request("minilm", {"text": t}), timeout=30))
    np.testing.assert_allclose(
        reply.outputs["embedding"], models["minilm"].predict({"text": t})["embedding"], atol=1e-5
    )


def test_stream_answers_many_in_flight_each_with_its_id(stub, models):
    reqs = [request("minilm", {"text": texts([TEXTS[i % 5]] * (1 + i % 3))}, f"m{i}") for i in range(12)]
    reqs += [request("digits", {"image": images(1 + i % 4, seed=i)}, f"d{i}") for i in range(12)]
    replies = stream_all(stub, reqs)
    assert len(replies) == 24 and all(not r.error_message for r in replies)
    by_id = {r.infer_response.id: codec.response_from_proto(r.infer_response) for r in replies}
    assert sorted(by_id) == sorted(r.id for r in reqs)
    for i in range(12):
        want = models["minilm"].predict({"text": texts([TEXTS[i % 5]] * (1 + i % 3))})["embedding"]
        np.testing.assert_allclose(by_id[f"m{i}"].outputs["embedding"], want, atol=1e-5)
        want = models["digits"].predict({"image": images(1 + i % 4, seed=i)})["probabilities"]
        np.testing.assert_allclose(by_id[f"d{i}"].outputs["probabilities"], want, atol=1e-5)


def _bad_requests() -> dict[str, tuple[pb.ModelInferRequest, str]]:
    """Malformed requests -> a fragment the INVALID_ARGUMENT message must contain."""
    out: dict[str, tuple[pb.ModelInferRequest, str]] = {}
    out["wrong name"] = (request("digits", {"img": images(1)}), "it takes image (FP32 [N,8,8])")
    out["wrong datatype"] = (request("digits", {"image": images(1).astype(np.float64)}), "expected FP32")
    out["wrong shape"] = (request("digits", {"image": np.zeros((2, 8, 9), np.float32)}), "expected [N,8,8]")
    short = request("digits", {"image": images(2)})
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    out["byte count"] = (short, "needs 512 bytes, got 508")
    bad_bytes = request("minilm", {"text": texts(["ok"])})
    bad_bytes.raw_input_contents[0] = b"\xff\x00\x00\x00abc"
    out["broken BYTES"] = (bad_bytes, "claims 255 bytes")
    out["out of range"] = (request("digits", {"image": images(1) + 100}), "0..16")
    out["not utf-8"] = (request("minilm", {"text": np.array([b"\xff\xfe"], dtype=object)}), "UTF-8")
    unknown_out = request("digits", {"image": images(1)})
    unknown_out.outputs.add(name="logits")
    out["unknown output"] = (unknown_out, "unknown output 'logits'")
    out["bad deadline"] = (request("digits", {"image": images(1)}, deadline_ms=-5), "deadline_ms")
    return out


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_malformed_requests_get_invalid_argument_saying_what_was_expected(stub, case):
    msg, fragment = _bad_requests()[case]
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(msg, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert fragment in err.value.details()


def test_unknown_model_or_version_is_not_found(stub):
    for name, version in (("resnet", ""), ("digits", "99")):
        msg = request("digits", {"image": images(1)})
        msg.model_name, msg.model_version = name, version
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(msg, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "served" in err.value.details()


def test_stream_mixing_good_and_bad_requests_answers_each_and_stays_open(stub, models):
    bad = list(_bad_requests().values())
    reqs, expected = [], {}
    for i, (msg, fragment) in enumerate(bad):
        good = request("digits", {"image": images(2, seed=100 + i)}, f"good{i}")
        reqs.append(good)
        expected[f"good{i}"] = models["digits"].predict({"image": images(2, seed=100 + i)})["probabilities"]
        msg = pb.ModelInferRequest.FromString(msg.SerializeToString())
        msg.id = f"bad{i}"
        reqs.append(msg)
        expected[f"bad{i}"] = fragment
    unknown = request("nope", {"image": images(1)}, "unknown")
    reqs.append(unknown)
    replies = stream_all(stub, reqs)
    assert len(replies) == len(reqs)
    for reply in replies:
        rid = reply.infer_response.id
        if rid.startswith("good"):
            assert not reply.error_message
            got = codec.response_from_proto(reply.infer_response).outputs["probabilities"]
            np.testing.assert_allclose(got, expected[rid], atol=1e-5)
        elif rid == "unknown":
            assert reply.error_message.startswith("[NOT_FOUND] ")
        else:
            assert reply.error_message.startswith("[INVALID_ARGUMENT] "), reply.error_message
            assert expected[rid] in reply.error_message


def test_oversized_message_is_refused(tight):
    channel = grpc.insecure_channel(tight.address, options=[("grpc.max_send_message_length", 8 << 20)])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request("digits", {"image": images(5000)}), timeout=30)  # 1.28 MB > 1 MiB
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the server is still fine afterwards
    assert stub.ModelInfer(request("digits", {"image": images(1)}), timeout=30).outputs
    channel.close()


def test_queue_overflow_is_refused_with_resource_exhausted(tight):
    channel = grpc.insecure_channel(tight.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    slow = request("minilm", {"text": texts([" ".join(TEXTS) * 3] * 64)}, "slow")
    quick = [request("digits", {"image": images(1, seed=i)}, f"q{i}") for i in range(12)]
    replies = stream_all(stub, [slow, *quick])
    assert len(replies) == 13
    refused = [r for r in replies if r.error_message]
    assert refused and all(r.error_message.startswith("[RESOURCE_EXHAUSTED] ") for r in refused)
    assert "max_queue_size 2" in refused[0].error_message
    answered = [r for r in replies if not r.error_message]
    assert "slow" in {r.infer_response.id for r in answered} and len(answered) >= 3
    channel.close()


def test_expired_deadlines_are_dropped_before_compute(cloud, stub):
    before = metric(cloud.metrics_text(), "nv_inference_count_total", model="minilm")
    long_texts = texts([" ".join(TEXTS) * 3] * 64)
    slow = stub.ModelInfer.future(request("minilm", {"text": long_texts}), timeout=120)
    time.sleep(0.1)  # the 64-row minilm call is running now; what follows waits behind it
    # unary: the gRPC deadline passes while the request waits in the queue
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request("minilm", {"text": texts(["too late"] * 3)}), timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # stream: the request's own deadline_ms passes in the queue
    replies = stream_all(stub, [request("minilm", {"text": texts(["late"] * 5)}, "late", deadline_ms=1)])
    slow.result()
    assert replies[0].infer_response.id == "late"
    assert replies[0].error_message.startswith("[DEADLINE_EXCEEDED] ")
    assert "dropped before compute" in replies[0].error_message
    after = metric(cloud.metrics_text(), "nv_inference_count_total", model="minilm")
    assert after - before == 64, "only the 64-row request may have been computed"
    text = cloud.metrics_text()
    assert metric(text, "nv_inference_request_failure_total", model="minilm", reason="CANCELLED") >= 1
    assert metric(text, "nv_inference_request_failure_total", model="minilm", reason="DEADLINE_EXCEEDED") >= 1


def test_prometheus_metrics(cloud, stub):
    for _ in range(3):
        stub.ModelInfer(request("digits", {"image": images(2)}), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(request("digits", {"image": images(1) - 5}), timeout=30)
    text = cloud.metrics_text()
    assert metric(text, "nv_inference_request_success_total", model="digits") >= 3
    assert metric(text, "nv_inference_request_failure_total", model="digits", reason="INVALID_ARGUMENT") >= 1
    assert metric(text, "nv_inference_exec_count_total", model="digits") >= 3
    assert metric(text, "nv_inference_batch_size_count", model="digits") >= 3
    assert metric(text, "nv_inference_queue_duration_seconds_count", model="digits") >= 3
    assert metric(text, "nv_inference_compute_duration_seconds_sum", model="digits") > 0
    assert "nv_inference_inflight_requests" in text and "nv_inference_pending_request_count" in text


# ---------------------------------------------------------------------------------------- tritonclient

TRITON_SCRIPT = """
import json, queue, sys
import numpy as np
import tritonclient.grpc as g

port, texts, images = json.loads(sys.stdin.read())
texts = np.array([t.encode() for t in texts], dtype=object)
images = np.array(images, dtype=np.float32)
client = g.InferenceServerClient(f"127.0.0.1:{port}")
cases = {"minilm": ("text", "BYTES", texts, "embedding"), "digits": ("image", "FP32", images, "probabilities")}

def make(model):
    name, dtype, data, _ = cases[model]
    inp = g.InferInput(name, list(data.shape), dtype)
    inp.set_data_from_numpy(data)
    return [inp]

out = {"ready": client.is_server_ready(), "unary": {}, "stream": {}, "params": {}, "meta": {}}
for model, (_, _, _, output) in cases.items():
    result = client.infer(model, make(model), request_id=f"u-{model}")
    out["unary"][model] = result.as_numpy(output).tolist()
    out["params"][model] = {k: str(v) for k, v in result.get_response(as_json=True)["parameters"].items()}
    out["meta"][model] = client.get_model_metadata(model, as_json=True)

answers = queue.Queue()
client.start_stream(callback=lambda result, error: answers.put((result, error)))
for model in cases:
    for i in range(3):
        client.async_stream_infer(model, make(model), request_id=f"s-{model}-{i}")
for _ in range(6):
    result, error = answers.get(timeout=60)
    assert error is None, error
    rid = result.get_response().id
    model = rid.split("-")[1]
    out["stream"][rid] = result.as_numpy(cases[model][3]).tolist()
client.stop_stream()
print(json.dumps(out))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None, reason="tritonclient (dev extra) missing"
)
def test_unmodified_tritonclient_unary_and_streaming(cloud, models):
    x = images(4, seed=9)
    payload = json.dumps([cloud.port, TEXTS, x.tolist()])
    got = json.loads(run_python(TRITON_SCRIPT, stdin=payload, timeout_s=180))
    assert got["ready"]
    want = {
        "minilm": models["minilm"].predict({"text": texts(TEXTS)})["embedding"],
        "digits": models["digits"].predict({"image": x})["probabilities"],
    }
    for model, expected in want.items():
        np.testing.assert_allclose(np.array(got["unary"][model], dtype=np.float32), expected, atol=1e-5)
        for i in range(3):
            np.testing.assert_allclose(
                np.array(got["stream"][f"s-{model}-{i}"], dtype=np.float32), expected, atol=1e-5
            )
        assert "cloud" in got["params"][model]["served_by"]
        assert "compute_ms" in got["params"][model]
    meta = got["meta"]["minilm"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": ["-1", "384"]}]
    assert got["meta"]["digits"]["inputs"][0]["shape"] == ["-1", "8", "8"]
