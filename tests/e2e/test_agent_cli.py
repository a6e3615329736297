"""``fogline agent run`` as a user runs it: serve, answer, drain on SIGTERM, clear failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from children import Child, start_agent

from fogline import codec
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.models]

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1")

FLEET = textwrap.dedent(
    """
    version: 1
    cloud: {endpoint: "127.0.0.1:1"}   # nothing listens there: the agent must serve from the edge
    defaults:
      listen: "127.0.0.1:0"
      models: [digits, minilm]
      routing: {policy: latency_aware, slo_ms: 200}
    devices:
      cam-001: {}
    """
)


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fogline.cli", "agent", *args]


def assert_drained(agent: Child) -> None:
    """It exited 0 after saying it drained on SIGTERM and stopped."""
    assert agent.proc.wait(30) == 0
    out = agent.out.text()
    assert "SIGTERM, draining" in out and "stopped" in out


@pytest.fixture
def fleet(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    return path


def serve(fleet, model_repo, *extra) -> tuple[Child, int]:
    return start_agent("--config", str(fleet), "--device", "cam-001", "--models", str(model_repo), *extra, env=ENV)


def test_run_serves_then_drains_in_flight_stream_on_sigterm(fleet, model_repo):
    agent, port = serve(fleet, model_repo, "--grace-s", "5")
    with agent:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerReady(pb.ServerReadyRequest()).ready
            image = np.full((1, 8, 8), 8.0, np.float32)
            reply = codec.response_from_proto(stub.ModelInfer(codec.request_to_proto(
                codec.InferRequest("digits", {"image": image}, id="a"))))
            assert reply.parameters["served_by"] == "edge" and reply.parameters["route_reason"].startswith("link_")
            assert reply.outputs["probabilities"].shape == (1, 10)

            requests = [codec.request_to_proto(codec.InferRequest("minilm", {"text": np.array(
                [f"sentence number {i}".encode()] * 4, dtype=object)}, id=str(i))) for i in range(40)]

            def generate():
                yield from requests
                time.sleep(0.2)  # SIGTERM arrives while these are in flight and the stream is open
                agent.proc.send_signal(signal.SIGTERM)
                time.sleep(1.0)

            answers, final = [], None
            try:
                for answer in stub.ModelStreamInfer(generate(), timeout=30):
                    answers.append(answer)
            except grpc.RpcError as exc:
                final = exc.code()
        assert len(answers) == 40 and not any(a.error_message for a in answers)
        assert final == grpc.StatusCode.UNAVAILABLE  # every request read was answered, then: reconnect
        assert sorted(int(a.infer_response.id) for a in answers) == list(range(40))
        assert_drained(agent)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--device", "cam-999"], 2, "no device 'cam-999'"),
        (["--device", "cam-001", "--listen", "nonsense"], 2, "HOST:PORT"),
        (["--device", "cam-001", "--cloud", "host:99999"], 2, "--cloud"),
        (["--device", "cam-001", "--models", "/nonexistent/models"], 1, "digits"),
    ],
)
def test_bad_configuration_is_one_clear_line(fleet, args, code, message):
    out = subprocess.run(agent_cmd("run", "--config", str(fleet), *args), capture_output=True, text=True,
                         env=ENV, cwd=REPO, timeout=120)
    assert out.returncode == code, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_missing_config_file_exits_2(tmp_path):
    out = subprocess.run(agent_cmd("run", "--config", str(tmp_path / "nope.yaml"), "--device", "x"),
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60)
    assert out.returncode == 2 and "nope.yaml" in out.stderr


def test_systemd_notify_ready_watchdog_and_stopping(fleet, model_repo, tmp_path):
    import socket

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    env = dict(ENV, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="1000000")
    args = ("agent", "run", "--config", str(fleet), "--device", "cam-001", "--models", str(model_repo))
    with sock, Child(*args, env=env) as agent:
        seen: list[str] = []
        while not any("WATCHDOG=1" in m for m in seen):
            seen.append(sock.recv(4096).decode())
        assert "READY=1" in seen[0] and "serving" in seen[0]
        agent.proc.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in seen):
            seen.append(sock.recv(4096).decode())
        assert agent.proc.wait(30) == 0


def test_sigterm_answers_every_unary_call_in_flight(fleet, model_repo):
    agent, port = serve(fleet, model_repo, "--grace-s", "20")
    with agent:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            texts = np.array([("a long sentence to embed " * 40).encode()] * 16, dtype=object)
            calls = [stub.ModelInfer.future(codec.request_to_proto(codec.InferRequest(
                "minilm", {"text": texts}, id=str(i))), timeout=60) for i in range(12)]
            finished: list[float] = []
            for call in calls:
                call.add_done_callback(lambda _: finished.append(time.monotonic()))
            time.sleep(0.05)
            signalled = time.monotonic()
            agent.proc.send_signal(signal.SIGTERM)
            answers = [codec.response_from_proto(call.result()) for call in calls]
        assert sum(t > signalled for t in finished) >= 6  # most were still in flight when SIGTERM came
        assert sorted(int(a.id) for a in answers) == list(range(12))
        assert all(a.outputs["embedding"].shape == (16, 384) for a in answers)
        assert_drained(agent)
