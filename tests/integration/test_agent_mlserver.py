"""MLServer as the agent's cloud: "any v2 server" includes one whose stream is not Triton's.

MLServer's ModelStreamInfer answers with bare ModelInferResponse messages, so the agent's link must
notice and carry on with unary ModelInfer calls; the client never sees the difference.
"""

from __future__ import annotations

import asyncio
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

from agent.loopback import LoopbackRig

REPO = Path(__file__).resolve().parents[2]
MLSERVER = REPO / ".venv-mlserver" / "bin" / "mlserver"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.models,
    pytest.mark.skipif(not MLSERVER.exists(), reason=".venv-mlserver is absent: run scripts/setup_mlserver.sh"),
]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def mlserver_port(model_repo, tmp_path_factory):
    from cloud.mlserver_repo import write_repository

    folder = tmp_path_factory.mktemp("agent-mlserver")
    grpc_port, http_port, metrics_port = free_ports(3)
    write_repository(model_repo, folder, torch_threads=1, grpc_port=grpc_port, http_port=http_port,
                     metrics_port=metrics_port)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'proto'}", "OMP_NUM_THREADS": "1"}
    env.pop("VIRTUAL_ENV", None)
    log_path = folder / "mlserver.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(MLSERVER), "start", str(folder)], cwd=folder, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    if all(stub.ModelReady(pb.ModelReadyRequest(name=n), timeout=2).ready for n in ("digits", "minilm")):
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
        yield grpc_port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_agent_uses_mlserver_as_its_cloud(model_repo, mlserver_port):
    from edge_models.full_runtime import FullModel
    from edge_models.repository import ModelRepository

    image = np.random.default_rng(5).uniform(0, 16, (3, 8, 8)).astype(np.float32)
    expected = FullModel.load(ModelRepository(model_repo).resolve("digits")).predict({"image": image})

    async def scenario():
        async with LoopbackRig(model_repo, mlserver_port) as rig:
            assert await rig.wait_cloud_usable(15.0)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{rig.agent_port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                replies = []
                for i in range(12):
                    msg = codec.request_to_proto(codec.InferRequest(
                        "digits", {"image": image}, id=str(i), parameters={"route": "cloud", "deadline_ms": 5000}))
                    replies.append(codec.response_from_proto(await stub.ModelInfer(msg)))
                    await asyncio.sleep(0.05)
                return replies, rig.server.link.mode

    replies, mode = asyncio.run(scenario())
    assert mode == "unary"
    # Every request is answered; once the link has switched to unary calls, by MLServer's full model.
    assert all(r.outputs["probabilities"].shape == (3, 10) for r in replies)
    cloud = [r for r in replies if r.parameters["served_by"] == "cloud"]
    assert len(cloud) >= 10, [r.parameters for r in replies]
    for r in cloud:
        np.testing.assert_allclose(r.outputs["probabilities"], expected["probabilities"], atol=1e-4)
