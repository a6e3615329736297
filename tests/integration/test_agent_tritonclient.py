"""An unmodified ``tritonclient.grpc`` client against the agent (with a real cloud behind it).

tritonclient and fogline register the same protobuf messages, so the Triton client runs in a child
process; it prints JSON that the test checks against the edge and full models' own answers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import textwrap

import numpy as np
import pytest

from fogline.demo.loopback import LoopbackRig

pytestmark = [
    pytest.mark.integration,
    pytest.mark.models,
    pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient (dev extra) missing"),
]

CLIENT = textwrap.dedent(
    """
    import json, sys, queue
    import numpy as np
    import tritonclient.grpc as grpcclient

    url = sys.argv[1]
    client = grpcclient.InferenceServerClient(url)
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 16, (2, 8, 8)).astype(np.float32)
    texts = np.array([b"the cat sat on the mat", b"edge inference"], dtype=object)
    out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
           "model_ready": client.is_model_ready("digits"), "unary": {}, "stream": {}}
    meta = client.get_model_metadata("minilm", as_json=True)
    out["meta"] = {"inputs": meta["inputs"], "outputs": meta["outputs"]}

    def inputs_for(model):
        if model == "digits":
            inp = grpcclient.InferInput("image", list(images.shape), "FP32"); inp.set_data_from_numpy(images)
        else:
            inp = grpcclient.InferInput("text", list(texts.shape), "BYTES"); inp.set_data_from_numpy(texts)
        return [inp]

    output_of = {"digits": "probabilities", "minilm": "embedding"}
    for model in ("digits", "minilm"):
        for route in ("edge", "cloud"):
            result = client.infer(model, inputs_for(model), parameters={"route": route, "deadline_ms": 5000})
            params = result.get_response().parameters
            out["unary"][f"{model}/{route}"] = {
                "values": result.as_numpy(output_of[model]).tolist(),
                "served_by": params["served_by"].string_param,
                "fallback": params["fallback"].bool_param,
                "reason": params["route_reason"].string_param,
                "version": params["model_version"].string_param,
            }

    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = []
    for i in range(12):
        model = ("digits", "minilm")[i % 2]
        route = ("edge", "cloud", "auto")[i % 3]
        client.async_stream_infer(model, inputs_for(model), request_id=f"r{i}",
                                  parameters={"route": route, "deadline_ms": 5000})
        sent.append((f"r{i}", model, route))
    for _ in sent:
        result, error = answers.get(timeout=60)
        if error is not None:
            out["stream"]["error"] = str(error)
            continue
        rid = result.get_response().id
        model = dict((s[0], s[1]) for s in sent)[rid]
        params = result.get_response().parameters
        out["stream"][rid] = {"model": model, "served_by": params["served_by"].string_param,
                              "values": result.as_numpy(output_of[model]).tolist()}
    client.stop_stream()
    # A bad request gets a clear status, not a crash.
    bad = grpcclient.InferInput("image", [1, 8, 7], "FP32"); bad.set_data_from_numpy(np.zeros((1, 8, 7), np.float32))
    try:
        client.infer("digits", [bad])
    except grpcclient.InferenceServerException as exc:
        out["bad"] = exc.status()
    try:
        client.infer("nope", inputs_for("digits"))
    except grpcclient.InferenceServerException as exc:
        out["missing"] = exc.status()
    print(json.dumps(out))
    """
)


def reference(model_repo):
    """What the edge (INT8, onnxruntime) and full (FP32) models answer for the client's inputs."""
    from fogline.models.edge_runtime import EdgeModel
    from fogline.models.full_runtime import FullModel
    from fogline.models.repository import ModelRepository

    repo = ModelRepository(model_repo)
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 16, (2, 8, 8)).astype(np.float32)
    texts = np.array([b"the cat sat on the mat", b"edge inference"], dtype=object)
    feeds = {"digits": {"image": images}, "minilm": {"text": texts}}
    out = {}
    for name, key in (("digits", "probabilities"), ("minilm", "embedding")):
        out[f"{name}/edge"] = EdgeModel.load(repo.resolve(name)).predict(feeds[name])[key]
        out[f"{name}/cloud"] = FullModel.load(repo.resolve(name)).predict(feeds[name])[key]
    return out


def test_tritonclient_unary_and_streaming_get_correct_answers(model_repo, cloud):
    expected = reference(model_repo)

    async def scenario(port):
        async with LoopbackRig(model_repo, port) as rig:
            assert await rig.wait_cloud_usable(10.0)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLIENT, f"127.0.0.1:{rig.agent_port}",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, stderr.decode()[-3000:]
            return json.loads(stdout)

    out = asyncio.run(scenario(cloud.port))

    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["meta"]["inputs"][0]["name"] == "text" and out["meta"]["inputs"][0]["datatype"] == "BYTES"
    assert out["meta"]["outputs"][0]["shape"] == ["-1", "384"]
    for key, answer in out["unary"].items():
        route = key.split("/")[1]
        assert answer["served_by"] == route and not answer["fallback"], (key, answer)
        assert answer["reason"] == f"requested_{route}" and answer["version"] == "1"
        np.testing.assert_allclose(np.array(answer["values"], np.float32), expected[key], atol=1e-4, err_msg=key)
    # Edge and cloud really are different models, and both are right about the digits.
    assert not np.allclose(expected["digits/edge"], expected["digits/cloud"], atol=1e-6)
    assert "error" not in out["stream"] and len(out["stream"]) == 12
    for rid, answer in out["stream"].items():
        i = int(rid[1:])
        route = ("edge", "cloud", "auto")[i % 3]
        if route != "auto":
            assert answer["served_by"] == route, (rid, answer)
        row = expected[f"{answer['model']}/{answer['served_by']}"]
        np.testing.assert_allclose(np.array(answer["values"], np.float32), row, atol=2e-2, err_msg=rid)
    assert out["bad"] == "StatusCode.INVALID_ARGUMENT"
    assert out["missing"] == "StatusCode.NOT_FOUND"
