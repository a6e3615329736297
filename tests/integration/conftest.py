"""Fixtures for the integration tests that run a real MLServer (a third-party v2 server) as the cloud.

MLServer lives in its own virtual environment, ``.venv-mlserver`` (its dependency pins are not
fogline's). ``make test`` does not build it: the first test that needs it does, here, once per
checkout (``scripts/setup_mlserver.sh``, with its progress printed live), and a stamp named after
the script and ``pyproject.toml`` skips the build afterwards (the Makefile's ``mlserver`` target
writes the same stamp). ``FOGLINE_MLSERVER=skip`` skips those tests instead, e.g. offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fogline.demo.loopback import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
MLSERVER_VENV = REPO_ROOT / ".venv-mlserver"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_mlserver.sh"
READY_TIMEOUT_S = 240.0


def mlserver_stamp() -> Path:
    """``.venv-mlserver/.installed-<first 12 hex of sha256(setup script + pyproject.toml)>``."""
    digest = hashlib.sha256(SETUP_SCRIPT.read_bytes() + (REPO_ROOT / "pyproject.toml").read_bytes())
    return MLSERVER_VENV / f".installed-{digest.hexdigest()[:12]}"


@pytest.fixture(scope="session")
def mlserver_bin(request) -> Path:
    """The ``mlserver`` command of ``.venv-mlserver``, built on first use."""
    if os.environ.get("FOGLINE_MLSERVER") == "skip":
        pytest.skip("FOGLINE_MLSERVER=skip: the MLServer tests are off")
    binary = MLSERVER_VENV / "bin" / "mlserver"
    stamp = mlserver_stamp()
    if not (binary.exists() and stamp.exists()):
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n>> building {MLSERVER_VENV.name} for the MLServer tests (first run only; "
                  f"{SETUP_SCRIPT.relative_to(REPO_ROOT)})", flush=True)
            started = time.monotonic()
            done = subprocess.run(["bash", str(SETUP_SCRIPT)], cwd=REPO_ROOT)
            print(f">> {MLSERVER_VENV.name}: setup exited {done.returncode} after "
                  f"{time.monotonic() - started:.0f} s", flush=True)
        if done.returncode != 0:
            pytest.fail(f"scripts/setup_mlserver.sh failed (exit {done.returncode}); its output is above. "
                        "Set FOGLINE_MLSERVER=skip to run the suite without the MLServer tests.")
        for old in MLSERVER_VENV.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return binary


@dataclass
class MLServerProcess:
    grpc_port: int
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def _start_mlserver(binary: Path, model_repo: Path, folder: Path, ports: list[int]) -> MLServerProcess:
    from fogline.cloud.mlserver_repo import write_repository

    grpc_port, http_port, metrics_port = ports
    write_repository(model_repo, folder, torch_threads=1, grpc_port=grpc_port, http_port=http_port,
                     metrics_port=metrics_port)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("VIRTUAL_ENV", None)
    log_path = folder / "mlserver.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(binary), "start", str(folder)], cwd=folder, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    return MLServerProcess(grpc_port, proc, log_path)


def _wait_ready(server: MLServerProcess) -> str | None:
    """None once both models are ready; the reason otherwise (the process exited, or the time ran out)."""
    from fogline.inference import grpc_service_pb2 as pb
    from fogline.inference import grpc_service_pb2_grpc as pb_grpc

    deadline = time.monotonic() + READY_TIMEOUT_S
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while True:
            if server.proc.poll() is not None:
                return f"mlserver exited with {server.proc.returncode}"
            try:
                if all(stub.ModelReady(pb.ModelReadyRequest(name=n), timeout=2).ready for n in ("minilm", "digits")):
                    return None
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                return f"mlserver not ready in {READY_TIMEOUT_S:.0f} s"
            time.sleep(0.5)


@pytest.fixture(scope="session")
def mlserver_process(mlserver_bin, model_repo, tmp_path_factory, free_ports):
    """One MLServer serving minilm and digits (fogline's full models) on loopback, for the session.

    MLServer takes its ports from its settings file, not from port 0, so they are picked first; if
    another process takes one in between, MLServer exits on the bind and starts again on new ports."""
    for attempt in range(3):
        folder = tmp_path_factory.mktemp("mlserver-repo")
        server = _start_mlserver(mlserver_bin, model_repo, folder, free_ports(3))
        problem = _wait_ready(server)
        if problem is None:
            break
        stop_process(server.proc, 30)
        if "address already in use" not in server.log_tail().lower() or attempt == 2:
            pytest.fail(f"{problem}:\n{server.log_tail()}")
    try:
        yield server
    finally:
        stop_process(server.proc, 30)
