"""``fogline agent run`` inside the systemd unit's restrictions, rebuilt by ``agent_sandbox.sh``.

The unit once set ``ProcSubset=pid``: procfs then has no ``/proc/stat`` (psutil's CPU reading) and no
``/proc/cpuinfo`` (onnxruntime's CPU feature detection), and the agent exited 1 at start. These tests
start the real command line as an unprivileged user, with a read-only file system, the models in the
``DynamicUser=`` state directory (``/var/lib/private/fogline/models`` through the ``/var/lib/fogline``
symlink, found through ``FOGLINE_MODELS`` as the unit sets it), private ``/tmp`` and ``/dev``:

- with the unit's procfs as it ships now (``ProtectProc=invisible``): ready, answers, CPU signal read;
- with ``ProcSubset=pid`` added back: still ready and answering, the CPU signal switched off with one
  warning (and onnxruntime complaining about cpuinfo, which is why the unit does not set it).

Root is needed (mount namespaces); the kernel must know ``subset=pid`` (Linux 5.8+).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fogline import codec
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.models]

REPO = Path(__file__).resolve().parents[2]
SANDBOX = REPO / "tests" / "e2e" / "agent_sandbox.sh"
#: Where agent_sandbox.sh puts the fleet file and the models (the unit's directories).
FLEET_IN_SANDBOX = "/var/lib/.sandbox-etc/fogline/fleet.yaml"
MODELS_IN_SANDBOX = "/var/lib/fogline/models"
UNIT_PROC = "hidepid=invisible"  # ProtectProc=invisible, as deploy/systemd/fogline-agent.service has it
FLEET = textwrap.dedent(
    """
    version: 1
    cloud: {endpoint: "127.0.0.1:1"}   # nothing listens there: the edge answers
    defaults:
      listen: "127.0.0.1:0"
      models: [digits, minilm]
      routing: {policy: latency_aware, slo_ms: 200}
      load: {cpu_high_percent: 90}
    devices:
      cam-001: {}
    """
)


def _why_not() -> str | None:
    """Why the sandbox cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root: the sandbox mounts a procfs and tmpfs in a private mount namespace"
    for tool in ("unshare", "setpriv", "findmnt"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux)"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-n", "-t", "proc",
                            "-o", "subset=pid", "proc", "/proc"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"the kernel refuses a procfs with subset=pid (Linux 5.8+): {probe.stderr.strip()}"
    user = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                           "import grpc, onnxruntime"], capture_output=True, text=True, timeout=60,
                          cwd="/", env=_env())
    if user.returncode != 0:
        return f"the test interpreter cannot run as an unprivileged user: {user.stderr.strip()[-200:]}"
    return None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FOGLINE_MODELS", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HOME="/",
               PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", FOGLINE_LOG_FORMAT="text")
    return env


@pytest.fixture(scope="module")
def sandbox_ok():
    reason = _why_not()
    if reason:
        pytest.skip(reason)


class SandboxedAgent:
    """``fogline agent run`` in agent_sandbox.sh; collects its output from reader threads."""

    def __init__(self, proc_options: str, model_repo: Path, fleet: Path) -> None:
        env = _env()
        env["FOGLINE_MODELS"] = MODELS_IN_SANDBOX  # as the unit's Environment= line, no --models flag
        # A checkout (and its .venv) under /tmp, as a CI clone may be, would vanish under PrivateTmp.
        env["SANDBOX_KEEP"] = f"{REPO}:{sys.prefix}"
        cmd = ["unshare", "-m", "--propagation", "private", str(SANDBOX), proc_options, str(model_repo),
               str(fleet), "--", sys.executable, "-m", "fogline.cli", "agent", "run",
               "--config", FLEET_IN_SANDBOX, "--device", "cam-001"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._drain, args=(s, sink), daemon=True)
                         for s, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    @property
    def output(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def port(self, timeout_s: float = 120.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(r"serving .* on [^ ]+:(\d+)", "".join(self.out))
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the agent did not start in the sandbox (exit {self.proc.returncode}):\n"
                             f"{self.output[-3000:]}")

    def stop(self) -> int | None:
        # SIGTERM reaches the shell's exec'd command: agent_sandbox.sh execs setpriv, which execs python,
        # and unshare waits for it.
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        return self.proc.returncode


def _ask_the_edge(port: int) -> codec.InferResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        image = np.full((1, 8, 8), 8.0, np.float32)
        request = codec.InferRequest("digits", {"image": image}, id="sandbox", parameters={"route": "edge"})
        return codec.response_from_proto(stub.ModelInfer(codec.request_to_proto(request), timeout=30))


@pytest.fixture
def fleet(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    return path


@pytest.mark.parametrize(
    ("proc_options", "cpu_signal"),
    [
        pytest.param(UNIT_PROC, True, id="unit-as-shipped"),
        pytest.param(f"{UNIT_PROC},subset=pid", False, id="with-ProcSubset=pid"),
    ],
)
def test_agent_serves_inside_the_units_sandbox(sandbox_ok, model_repo, fleet, proc_options, cpu_signal):
    agent = SandboxedAgent(proc_options, model_repo, fleet)
    try:
        port = agent.port()
        reply = _ask_the_edge(port)
        assert reply.parameters["served_by"] == "edge" and reply.parameters["route_reason"] == "requested_edge"
        assert reply.outputs["probabilities"].shape == (1, 10)
        time.sleep(0.6)  # past the CPU monitor's first background reading
    finally:
        code = agent.stop()
    out = agent.output
    assert code == 0, out[-3000:]
    switched_off = re.findall(r"cpu load signal unavailable.*", out)
    if cpu_signal:
        assert not switched_off, switched_off
        assert "cpuinfo" not in out, "onnxruntime could not read /proc/cpuinfo under the unit's procfs"
    else:
        assert len(switched_off) == 1 and "/proc/stat" in switched_off[0], out[-3000:]
        assert "cpuinfo" in out  # onnxruntime's warning: why the unit must not set ProcSubset=pid
    assert "Traceback" not in out and "Read-only file system" not in out, out[-3000:]
