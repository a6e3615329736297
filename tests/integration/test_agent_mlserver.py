"""MLServer as the agent's cloud: "any v2 server" includes one whose stream is not Triton's.

MLServer's ModelStreamInfer answers with bare ModelInferResponse messages, so the agent's link must
notice and carry on with unary ModelInfer calls; the client never sees the difference.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from fogline import codec
from fogline.demo.loopback import LoopbackRig
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.models]


def test_agent_uses_mlserver_as_its_cloud(model_repo, mlserver_process):
    from fogline.models.full_runtime import FullModel
    from fogline.models.repository import ModelRepository

    image = np.random.default_rng(5).uniform(0, 16, (3, 8, 8)).astype(np.float32)
    expected = FullModel.load(ModelRepository(model_repo).resolve("digits")).predict({"image": image})

    async def scenario():
        async with LoopbackRig(model_repo, mlserver_process.grpc_port) as rig:
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
