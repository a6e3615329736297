"""MLServer as fogline's cloud: a real MLServer process (its own virtual environment) serving the full
models through ``cloud.mlserver_runtime``, called by a fogline v2 client (``fogline.codec`` + the
generated stubs), answers match the full models run in-process."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from fogline import codec
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

from cloud.mlserver_repo import write_repository

REPO_ROOT = Path(__file__).resolve().parents[2]
MLSERVER = REPO_ROOT / ".venv-mlserver" / "bin" / "mlserver"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.models,
    pytest.mark.skipif(not MLSERVER.exists(), reason=".venv-mlserver is absent: run scripts/setup_mlserver.sh "
                       "to create MLServer's own virtual environment"),
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def mlserver(model_repo, tmp_path_factory):
    """``(stub, process)`` of an MLServer serving minilm and digits on loopback."""
    folder = tmp_path_factory.mktemp("mlserver-repo")
    grpc_port, http_port, metrics_port = _free_ports(3)
    write_repository(model_repo, folder, torch_threads=1, grpc_port=grpc_port, http_port=http_port,
                     metrics_port=metrics_port)
    log_path = folder / "mlserver.log"
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'proto'}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("VIRTUAL_ENV", None)
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(MLSERVER), "start", str(folder)], cwd=folder, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlserver exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if all(stub.ModelReady(pb.ModelReadyRequest(name=n), timeout=2).ready for n in ("minilm", "digits")):
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlserver not ready in 240 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield stub, proc
    finally:
        channel.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def full_models(model_repo):
    import torch

    from edge_models.full_runtime import FullModel
    from edge_models.repository import ModelRepository

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
