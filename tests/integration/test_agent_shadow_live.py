"""Live agreement against the real cloud: shadowed edge answers reach it, agreement shows, answers stay.

An agent with ``policy: edge_only`` and ``routing.shadow.share: 1.0`` (every edge answer shadowed)
runs in front of the session's ``fogline cloud serve`` through the loopback proxy. The clients send
real traffic, held-out style: scikit-learn's digit images and the sentences the minilm build keeps
for its fidelity check. Every answer must be the edge's, equal to what the same edge model gives
in-process (the shadow never changes the client's answer), the cloud must have received the shadows
(the link's sent count; the agent's tier counts must not see them), and the agreement, in the
metrics and in the status call, must be high: at the manifests' gates or better.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from fogline import codec
from fogline.agent import status
from fogline.demo.loopback import LoopbackRig
from fogline.fleet import parse_fleet
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.models]

FLEET = """\
version: 1
cloud: {endpoint: "127.0.0.1:1"}
defaults:
  listen: "127.0.0.1:0"
  models: [digits, minilm]
  routing:
    policy: edge_only
    rtt_threshold_ms: 5000   # a busy test machine's slow cloud still counts as healthy and with headroom
    rtt_recover_ms: 4000
    shadow: {share: 1.0, max_inflight: 8, window: 100, min_rows: 10}
devices:
  shadowing: {}
"""
COUNT = 40


def traffic() -> list[codec.InferRequest]:
    from sklearn.datasets import load_digits

    from fogline.modelbuild.fidelity import load_sentences

    images = load_digits().images[-COUNT:].astype(np.float32)  # 0..16, as the model takes them
    sentences = load_sentences()[:COUNT]
    out = []
    for i in range(COUNT):
        out.append(codec.InferRequest("digits", {"image": images[i: i + 1]}, id=f"d{i}"))
        text = np.empty(1, dtype=object)
        text[0] = sentences[i].encode("utf-8")
        out.append(codec.InferRequest("minilm", {"text": text}, id=f"m{i}"))
    return out


def test_shadowed_requests_reach_the_cloud_and_agreement_is_high(model_repo, cloud, async_until):
    requests = traffic()
    config = parse_fleet(FLEET, source="<shadow>").device("shadowing")

    async def scenario():
        async with LoopbackRig(model_repo, cloud.port, config=config, delay_ms=1.0) as rig:
            assert await rig.wait_cloud_usable(10.0)
            plane = rig.server.dataplane
            async with grpc.aio.insecure_channel(f"127.0.0.1:{rig.agent_port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                answers = []
                for r in requests:
                    answers.append(codec.response_from_proto(await stub.ModelInfer(codec.request_to_proto(r))))
                    # The cloud's full models are slower than the edge's: at share 1.0, back-to-back requests
                    # would fill max_inflight and drop shadows. One at a time, every one is compared.
                    await async_until(lambda: plane.shadow.inflight == 0, what="the shadow to come back")

            def compared(model: str) -> float:
                return rig.server.metrics.registry.get_sample_value(
                    "fogline_agent_shadow_requests_total", {"model": model, "version": "1", "outcome": "compared"}) or 0

            assert compared("digits") == compared("minilm") == COUNT, plane.shadow.outcomes
            doc = await asyncio.to_thread(status.fetch, f"127.0.0.1:{rig.agent_port}")
            in_process = [plane.edge.runners[r.model_name].model.predict(r.inputs) for r in requests]
            gauges = {model: rig.server.metrics.registry.get_sample_value(
                "fogline_agent_shadow_agreement", {"model": model, "version": "1", "metric": metric})
                for model, metric in (("digits", "top1_agreement"), ("minilm", "cosine_mean"))}
            return answers, in_process, doc, gauges, rig.server.link.stats.sent, dict(plane.stats.served_by)

    answers, in_process, doc, gauges, sent, served_by = asyncio.run(scenario())
    for answer, local in zip(answers, in_process, strict=True):
        assert answer.parameters["served_by"] == "edge"
        for name, value in local.items():
            np.testing.assert_allclose(answer.outputs[name], value, rtol=0, atol=1e-6)
    assert served_by == {"edge": 2 * COUNT}, "shadows are not client traffic"
    shadow = doc["shadow"]
    assert shadow["share"] == 1.0
    assert {model: shadow["models"][model]["1"]["outcomes"] for model in ("digits", "minilm")} == {
        "digits": {"compared": COUNT}, "minilm": {"compared": COUNT}}
    assert sent == 2 * COUNT  # every shadow reached the cloud (edge_only: nothing else goes there)
    digits, minilm = shadow["models"]["digits"]["1"], shadow["models"]["minilm"]["1"]
    assert digits["metric"] == "top1_agreement" and digits["gate"] == 0.97 and digits["value"] >= 0.97
    assert minilm["metric"] == "cosine_mean" and minilm["gate"] == 0.995 and minilm["value"] >= 0.995
    assert not digits["below_gate"] and not minilm["below_gate"]
    assert gauges == {"digits": pytest.approx(digits["value"], abs=1e-6),
                      "minilm": pytest.approx(minilm["value"], abs=1e-6)}
    assert "shadow    100% of edge answers; digits v1 top1_agreement" in status.render(doc)
