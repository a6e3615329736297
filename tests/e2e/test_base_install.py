"""`pip install .` (base, no extras) gives an edge agent without torch, as on a real device."""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import grpc
import numpy as np
import pytest
from children import SERVING, Lines

from fogline import codec
from fogline.demo.loopback import stop_process
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_base_install_has_no_torch_and_runs_the_agent(tmp_path, model_repo):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # Build from a copy of the tracked (and new, not ignored) files: no build/ left in the working tree.
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--progress-bar", "off", str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, env=env)
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "torch" not in names, "the base install pulled torch"
    assert {"onnxruntime", "grpcio", "protobuf", "tokenizers", "pydantic"} <= names
    check = subprocess.run(
        [
            str(py),
            "-c",
            "import sys, fogline.agent.server, fogline.agent.cli, fogline.fleet, fogline.codec, fogline.inference.grpc_service_pb2_grpc, fogline.models.edge_runtime;"
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stderr
    cli = subprocess.run([str(env_dir / "bin" / "fogline"), "--help"], capture_output=True, text=True, env=env)
    assert cli.returncode == 0 and "agent" in cli.stdout
    # A command that needs an extra says which one instead of a traceback.
    cloud = subprocess.run(
        [str(env_dir / "bin" / "fogline"), "cloud", "serve", "--help"], capture_output=True, text=True, env=env
    )
    assert cloud.returncode != 0 or "usage" in cloud.stdout
    assert "Traceback" not in cloud.stderr
    # And the daemon itself runs from that install: it serves an edge request and drains on SIGTERM.
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text('version: 1\ncloud: {endpoint: "127.0.0.1:1"}\n'
                     'defaults: {listen: "127.0.0.1:0", models: [digits], routing: {policy: edge_only}}\n'
                     "devices: {cam-001: {}}\n")
    errors = tmp_path / "agent.err"
    with errors.open("w") as sink:
        agent = subprocess.Popen(
            [str(env_dir / "bin" / "fogline"), "agent", "run", "--config", str(fleet), "--device", "cam-001",
             "--models", str(model_repo)],
            stdout=subprocess.PIPE, stderr=sink, text=True, env=env, cwd=tmp_path)
    lines = Lines(agent.stdout)
    try:
        port = int(lines.wait_for(SERVING, 120).group(1))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            image = np.zeros((1, 8, 8), dtype=np.float32)
            reply = codec.response_from_proto(stub.ModelInfer(
                codec.request_to_proto(codec.InferRequest("digits", {"image": image})), timeout=60))
        assert reply.parameters["served_by"] == "edge" and reply.outputs["probabilities"].shape == (1, 10)
    finally:
        code = stop_process(agent, 30)
    assert code == 0, errors.read_text()[-3000:]
