"""The edge agent never imports torch: an edge device installs fogline without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.models]

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import grpc
    import numpy as np
    import fogline.agent.cli, fogline.agent.server, fogline.agent.cloud_link, fogline.agent.dataplane, fogline.agent.router, fogline.agent.edge_pool
    from fogline.demo.loopback import device_config
    from fogline.agent.server import create_server
    from fogline import codec
    from fogline.inference import grpc_service_pb2_grpc as pb_grpc

    async def main():
        # A cloud endpoint where nothing listens: the link tries, fails and backs off meanwhile.
        server, port = create_server(device_config(), cloud="127.0.0.1:1", models_dir=sys.argv[1])
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            served = []
            for model, inputs in (("digits", {"image": np.ones((1, 8, 8), np.float32)}),
                                  ("minilm", {"text": np.array([b"no torch here"], dtype=object)})):
                reply = await stub.ModelInfer(codec.request_to_proto(codec.InferRequest(model, inputs)))
                served.append(codec.response_from_proto(reply).parameters["served_by"])
        await server.stop(1)
        torch = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print(json.dumps({"served": served, "torch": torch}))

    asyncio.run(main())
    """
)


def test_agent_runs_without_importing_torch(model_repo):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(model_repo)], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["served"] == ["edge", "edge"]
    assert result["torch"] == [], f"the agent imported {result['torch'][:5]}"
