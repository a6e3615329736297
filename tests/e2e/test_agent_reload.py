"""SIGHUP on a running ``fogline agent run``: new routing settings apply live, open streams carry on,
a broken file is refused (a log line says why) and the old settings stay."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
from pathlib import Path

import grpc
import numpy as np
import pytest
from children import SERVING, Child

from fogline import codec
from fogline.fleet import file_revision
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.models]

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           FOGLINE_LOG_FORMAT="json")
IMAGE = np.full((1, 8, 8), 8.0, np.float32)


def fleet_text(cloud_port: int, metrics_port: int, routing: str) -> str:
    return "\n".join([
        "version: 1",
        f'cloud: {{endpoint: "127.0.0.1:{cloud_port}"}}',
        "defaults:",
        '  listen: "127.0.0.1:0"',
        "  models: [digits]",
        f"  routing: {routing}",
        f"  metrics: {{port: {metrics_port}, host: 127.0.0.1}}",
        "devices:",
        "  cam-001: {}",
        "",
    ])


def test_sighup_applies_new_routing_live_and_refuses_a_broken_file(tmp_path, model_repo, cloud, free_port,
                                                                  scrape_metrics):
    metrics_port = free_port  # the agent's metrics endpoint takes a number (0 turns it off)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(fleet_text(cloud.port, metrics_port, "{policy: edge_only, slo_ms: 300}"))
    first_revision = file_revision(fleet)
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    agent = Child("agent", "run", "--config", str(fleet), "--device", "cam-001", "--models", str(model_repo),
                  env=dict(ENV, NOTIFY_SOCKET=str(notify_path)))
    proc, out, err = agent.proc, agent.out, agent.err
    requests: queue.Queue = queue.Queue()

    def generate():
        while (item := requests.get(timeout=60)) is not None:
            yield item

    try:
        serving = out.wait_for(SERVING, 90)
        port = int(serving.group(1))
        assert f"config revision {first_revision}" in serving.string
        assert "READY=1" in notify.recv(4096).decode()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        replies = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(generate(), timeout=120)

        def ask(i: int) -> dict:
            requests.put(codec.request_to_proto(codec.InferRequest("digits", {"image": IMAGE}, id=str(i))))
            reply = next(replies)
            assert not reply.error_message and reply.infer_response.id == str(i)
            return codec.params_from_proto(reply.infer_response.parameters)

        first = ask(0)
        assert first["route_reason"] == "policy_edge_only" and first["config_revision"] == first_revision
        m = scrape_metrics(metrics_port)
        assert m[("fogline_agent_config_revision", ())] == 1
        assert m[("fogline_agent_config_info", (("path", str(fleet)), ("revision", "1"),
                                               ("sha256", first_revision)))] == 1

        # A good file: cloud_only, on the same open stream.
        fleet.write_text(fleet_text(cloud.port, metrics_port, "{policy: cloud_only, slo_ms: 300}"))
        second_revision = file_revision(fleet)
        proc.send_signal(signal.SIGHUP)
        out.wait_for(rf"SIGHUP, config reloaded \(revision {second_revision}, policy cloud_only\)", 30)
        assert "RELOADING=1" in notify.recv(4096).decode()
        assert "READY=1" in notify.recv(4096).decode()
        params = [ask(i) for i in range(1, 4)]
        assert all(p["route_reason"] == "policy_cloud_only" and p["served_by"] == "cloud" for p in params), params
        assert all(p["config_revision"] == second_revision for p in params), params
        m = scrape_metrics(metrics_port)
        assert m[("fogline_agent_config_revision", ())] == 2
        assert m[("fogline_agent_config_reloads_total", (("result", "ok"),))] == 1

        # A broken file: refused, the log says why, cloud_only stays.
        fleet.write_text(fleet_text(cloud.port, metrics_port, "{policy: fastest, slo_ms: 300}"))
        proc.send_signal(signal.SIGHUP)
        out.wait_for(r"SIGHUP, config refused \(keeping revision " + second_revision, 30)
        refusal = json.loads(err.wait_for(r'.*"config reload refused.*', 10).group(0))
        assert refusal["level"] == "error" and "fastest" in refusal["msg"] and "routing.policy" in refusal["msg"]
        params = [ask(i) for i in range(4, 7)]
        assert all(p["route_reason"] == "policy_cloud_only" for p in params), params
        assert all(p["config_revision"] == second_revision for p in params), params
        m = scrape_metrics(metrics_port)
        assert m[("fogline_agent_config_revision", ())] == 2
        assert m[("fogline_agent_config_reloads_total", (("result", "error"),))] == 1
        assert m[("fogline_agent_config_info", (("path", str(fleet)), ("revision", "2"),
                                               ("sha256", second_revision)))] == 1

        requests.put(None)
        assert list(replies) == []  # the stream ends cleanly, never broken by the reloads
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        requests.put(None)
        notify.close()
        agent.kill()
