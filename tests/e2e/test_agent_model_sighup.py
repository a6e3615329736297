"""Model versions through ``systemctl reload`` as an operator does it: ``fogline agent run``, a fleet file
re-pinned, SIGHUP. The device holds digits v1 only; pinning v2 makes the agent fetch it from its cloud,
check it and swap it in under an open stream; pinning v1 again rolls back. Every answer on the stream
names the version that computed it, and the stream is never broken."""

from __future__ import annotations

import os
import queue
import signal
import textwrap

import grpc
import pytest
from children import SERVING, Child
from model_versions import IMAGE, add_version

from fogline import codec
from fogline.demo.loopback import CloudProcess
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.models]

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def fleet_text(cloud_port: int, version: str) -> str:
    return textwrap.dedent(f"""\
        version: 1
        cloud: {{endpoint: "127.0.0.1:{cloud_port}"}}
        defaults:
          listen: "127.0.0.1:0"
          models: [{{name: digits, version: "{version}"}}]
          routing: {{policy: edge_only}}
        devices:
          cam-001: {{}}
        """)


def test_sighup_fetches_a_newly_pinned_version_swaps_it_under_a_stream_and_rolls_back(model_repo, tmp_path):
    cloud_repo, device_repo = tmp_path / "cloud", tmp_path / "device"
    for version in (1, 2):
        add_version(model_repo, cloud_repo, "digits", version)
    add_version(model_repo, device_repo, "digits", 1)
    fleet = tmp_path / "fleet.yaml"
    requests: queue.Queue = queue.Queue()

    def generate():
        while (item := requests.get(timeout=60)) is not None:
            yield item

    with CloudProcess(cloud_repo) as cloud:
        fleet.write_text(fleet_text(cloud.port, "1"))
        with Child("agent", "run", "--config", str(fleet), "--device", "cam-001", "--models", str(device_repo),
                   env=ENV) as agent:
            port = int(agent.out.wait_for(SERVING, 90).group(1))
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            replies = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(generate(), timeout=120)

            def version_of_next(i: int) -> str:
                requests.put(codec.request_to_proto(codec.InferRequest("digits", {"image": IMAGE}, id=str(i))))
                reply = next(replies)
                assert not reply.error_message, reply.error_message
                return codec.params_from_proto(reply.infer_response.parameters)["model_version"]

            try:
                seen = [version_of_next(i) for i in range(3)]
                fleet.write_text(fleet_text(cloud.port, "2"))
                agent.proc.send_signal(signal.SIGHUP)
                agent.out.wait_for(r"SIGHUP, model digits v1 -> v2", 60)
                seen += [version_of_next(i) for i in range(3, 6)]
                fleet.write_text(fleet_text(cloud.port, "1"))
                agent.proc.send_signal(signal.SIGHUP)
                agent.out.wait_for(r"SIGHUP, model digits v2 -> v1", 60)
                seen += [version_of_next(i) for i in range(6, 9)]
                requests.put(None)
                assert list(replies) == []  # the stream ends cleanly, never broken by the swaps
            finally:
                requests.put(None)
                channel.close()
            assert agent.stop() == 0
    assert seen == ["1"] * 3 + ["2"] * 3 + ["1"] * 3
    assert (device_repo / "digits" / "2" / "manifest.json").is_file()
