"""``fogline cloud serve`` as a user runs it: a real subprocess, real models, real signals."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fogline import codec
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.models, pytest.mark.slow]

SENTENCE = "Full-precision models live in the cloud tier and batch requests that arrive together. " * 3


def fogline_command() -> list[str]:
    exe = Path(sys.executable).parent / "fogline"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fogline.cli"]


class Serve:
    """A ``fogline cloud serve`` subprocess; its stdout lines are collected by a reader thread."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [*fogline_command(), "cloud", "serve", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, fragment: str, timeout: float = 90) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no line with {fragment!r}; saw {self.seen}; stderr: {self.stderr()}")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def port_of(line: str) -> int:
    return int(line.split(" on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])


@pytest.fixture
def serve_args(model_repo):
    return ["--listen", "127.0.0.1:0", "--models", str(model_repo), "--device", "cpu", "--metrics-port", "off",
            "--torch-threads", "1"]  # fmt: skip


def minilm_request(rid: str, rows: int = 16) -> pb.ModelInferRequest:
    text = np.array([SENTENCE.encode()] * rows, dtype=object)
    return codec.request_to_proto(codec.InferRequest("minilm", {"text": text}, id=rid))


def test_sigterm_answers_every_request_in_flight_then_exits_zero(serve_args):
    server = Serve(*serve_args, "--max-batch-size", "16", "--grace-s", "60")
    try:
        port = port_of(server.wait_for("serving"))
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        release = threading.Event()
        sent = threading.Event()

        def requests():
            for i in range(8):
                yield minilm_request(f"s{i}")
            sent.set()
            release.wait(120)  # keep our side of the stream open: the server must end it

        stream = stub.ModelStreamInfer(requests(), timeout=120)
        unary = [stub.ModelInfer.future(minilm_request(f"u{i}"), timeout=120) for i in range(4)]
        assert sent.wait(30)
        time.sleep(0.5)  # let the server read them all; the first batches are computing now
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        replies, final, late = [], None, 0
        try:
            for reply in stream:
                replies.append(reply)
                late += time.monotonic() > signalled
        except grpc.RpcError as exc:
            final = exc.code()
        release.set()
        assert sorted(r.infer_response.id for r in replies) == [f"s{i}" for i in range(8)]
        assert all(not r.error_message for r in replies), [r.error_message for r in replies]
        assert late > 0, "no request was still in flight when SIGTERM came; make them heavier"
        assert final == grpc.StatusCode.UNAVAILABLE  # then the stream is closed so the client reconnects
        for future in unary:
            assert future.result().parameters["served_by"].string_param == "cloud"
        assert server.proc.wait(60) == 0, server.stderr()
        server.wait_for("stopped")
        assert any("SIGTERM, draining" in line for line in server.seen)
        channel.close()
    finally:
        server.kill()


def test_config_file_sets_serving_and_flags_override(serve_args, tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "version: 1\n"
        "cloud:\n"
        "  endpoint: 127.0.0.1:8001\n"
        "  serving: {listen: '127.0.0.1:1', max_batch_size: 4, max_queue_size: 7, grace_s: 2}\n"
        "defaults: {listen: '127.0.0.1:8500', models: [minilm, digits]}\n"
        "devices: {cam-001: {}}\n"
    )
    server = Serve("--config", str(fleet), *serve_args)
    try:
        line = server.wait_for("serving")
        assert "max batch 4" in line and port_of(line) != 1  # YAML batch size, --listen from the flag
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        server.kill()


def test_bad_flag_value_is_one_line_and_exit_2(model_repo):
    proc = subprocess.run(
        [*fogline_command(), "cloud", "serve", "--models", str(model_repo), "--max-batch-size", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "max_batch_size" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_empty_model_directory_is_one_line_and_exit_1(tmp_path):
    proc = subprocess.run(
        [*fogline_command(), "cloud", "serve", "--models", str(tmp_path), "--device", "cpu", "--listen",
         "127.0.0.1:0", "--metrics-port", "off"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "fogline models build" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_help_lists_the_flags():
    proc = subprocess.run(
        [*fogline_command(), "cloud", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for flag in ("--config", "--listen", "--models", "--device", "--max-batch-size", "--max-queue-delay-us"):
        assert flag in proc.stdout
