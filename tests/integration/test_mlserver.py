"""MLServer as fogline's cloud: a real MLServer process (its own virtual environment) serving the full
models through ``fogline.cloud.mlserver_runtime``, called by a fogline v2 client (``fogline.codec`` + the
generated stubs), answers match the full models run in-process."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fogline import codec
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.models]


@pytest.fixture(scope="module")
def mlserver(mlserver_process):
    """``(stub, process)`` of the session's MLServer (tests/integration/conftest.py)."""
    with grpc.insecure_channel(f"127.0.0.1:{mlserver_process.grpc_port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel), mlserver_process.proc


@pytest.fixture(scope="module")
def full_models(model_repo):
    import torch

    from fogline.models.full_runtime import FullModel
    from fogline.models.repository import ModelRepository

    torch.set_num_threads(1)
    repo = ModelRepository(model_repo)
    return {name: FullModel.load(repo.resolve(name)) for name in ("digits", "minilm")}


def _infer(stub, request: codec.InferRequest) -> codec.InferResponse:
    return codec.response_from_proto(stub.ModelInfer(codec.request_to_proto(request), timeout=60))


def test_digits_answers_match_the_full_model(mlserver, full_models):
    stub, _ = mlserver
    from sklearn.datasets import load_digits

    images = load_digits().images[:16].astype(np.float32)
    resp = _infer(stub, codec.InferRequest("digits", {"image": images}, id="req-7",
                                           parameters={"deadline_ms": 500, "route": "cloud"}))
    probs = resp.outputs["probabilities"]
    expected = full_models["digits"].predict({"image": images})["probabilities"]
    assert probs.shape == (16, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert (probs.argmax(1) == load_digits().target[:16]).mean() >= 0.9
    assert resp.id == "req-7" and resp.model_version == "1"
    assert resp.parameters["served_by"] == "cloud" and resp.parameters["compute_us"] >= 0


def test_minilm_embeddings_match_the_full_model(mlserver, full_models):
    stub, _ = mlserver
    texts = np.array([b"the network is slow today", "na\u00efve caf\u00e9 \u2615".encode(), b""], dtype=object)
    emb = _infer(stub, codec.InferRequest("minilm", {"text": texts})).outputs["embedding"]
    expected = full_models["minilm"].predict({"text": texts})["embedding"]
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert (np.sum(emb * expected, axis=1) > 0.9999).all()


def test_metadata_and_errors_use_v2_status_codes(mlserver):
    stub, _ = mlserver
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=10)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "FP32", [-1, 8, 8])]
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).name == "mlserver"
    with pytest.raises(grpc.RpcError) as bad:
        _infer(stub, codec.InferRequest("digits", {"image": np.zeros((2, 3), np.float32)}))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image" in bad.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        _infer(stub, codec.InferRequest("resnet", {"image": np.zeros((1, 8, 8), np.float32)}))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_mlserver_stream_is_not_tritons_multiplexed_stream(mlserver):
    """Why an agent must use unary ModelInfer against MLServer: its ModelStreamInfer answers with bare
    ModelInferResponse messages (Triton wraps them in ModelStreamInferResponse), for one model per
    stream, so a Triton-style client cannot decode them."""
    stub, _ = mlserver
    image = np.zeros((1, 8, 8), np.float32)
    requests = iter([codec.request_to_proto(codec.InferRequest("digits", {"image": image}, id="s1"))])
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ModelStreamInfer(requests, timeout=30))
    assert err.value.code() == grpc.StatusCode.INTERNAL
