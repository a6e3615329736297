"""An edge device with an empty model repository: ``fogline agent run`` fetches the version its fleet
entry names from its cloud (with its token), checks it, and serves it; ``fogline models pull`` does the
same by hand, and without a token the cloud gives nothing away."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest
from children import start_agent

from fogline import codec
from fogline.demo.loopback import CloudProcess
from fogline.inference import grpc_service_pb2_grpc as pb_grpc
from fogline.models.repository import ModelRepository, read_manifest
from fogline.security import add_token

pytestmark = [pytest.mark.e2e, pytest.mark.models]

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def fogline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fogline.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=120)


def test_an_agent_with_an_empty_repository_fetches_minilm_from_its_cloud_and_serves_it(tmp_path, model_repo):
    tokens, token_file, models = tmp_path / "tokens", tmp_path / "cam-001.token", tmp_path / "models"
    token_file.write_text(add_token(tokens, "cam-001") + "\n")
    models.mkdir()
    with CloudProcess(model_repo, extra=["--tokens-file", str(tokens)]) as cloud:
        fleet = tmp_path / "fleet.yaml"
        fleet.write_text(textwrap.dedent(f"""\
            version: 1
            cloud:
              endpoint: "127.0.0.1:{cloud.port}"
              credentials: {{token_file: "{token_file}"}}
            defaults:
              listen: "127.0.0.1:0"
              models_dir: "{models}"
              models: [{{name: minilm, version: "1"}}]
              routing: {{policy: edge_only}}
            devices:
              cam-001: {{}}
            """))
        # No token: refused, and the repository stays empty.
        refused = fogline("models", "pull", "minilm:1", "--from", f"127.0.0.1:{cloud.port}", "--models", str(models))
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr, refused.stderr
        assert list(models.iterdir()) == []

        agent, port = start_agent("--config", str(fleet), "--device", "cam-001", env=ENV, timeout_s=180)
        with agent:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = codec.response_from_proto(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    codec.request_to_proto(codec.InferRequest(
                        "minilm", {"text": np.array([b"fetched at start"], dtype=object)})), timeout=60))
            assert agent.stop() == 0
        out = "\n".join(agent.out.lines)
        assert "fetching minilm v1 model.int8.onnx" in out and "serving minilm v1" in out

        # By hand, with the device's fleet entry for the cloud and the token: the cloud's newest digits.
        pulled = fogline("models", "pull", "digits", "--config", str(fleet), "--device", "cam-001", "--quiet")
        assert pulled.returncode == 0, pulled.stderr
        assert "digits v1 fetched into" in pulled.stdout

    assert reply.parameters["served_by"] == "edge" and reply.parameters["model_version"] == "1"
    assert reply.outputs["embedding"].shape == (1, 384)
    assert ModelRepository(models).names() == ["digits", "minilm"]
    manifest = read_manifest(models / "minilm" / "1")
    held = sorted(p.relative_to(models / "minilm" / "1").as_posix() for p in (models / "minilm" / "1").rglob("*"))
    assert held == sorted(["manifest.json", manifest["artifacts"]["edge"], manifest["artifacts"]["tokenizer"]])
    assert sorted(p.name for p in models.iterdir()) == ["digits", "minilm"]  # no parts, no staging left
    # The device's copy checks out as one (the full model was never meant to be there).
    edge_check, full_check = fogline("models", "verify", str(models), "--edge"), fogline(
        "models", "verify", str(models), "--hashes-only")
    assert edge_check.returncode == 0 and "minilm 1: ok (2 files hash-verified" in edge_check.stdout, edge_check
    assert full_check.returncode == 1 and "missing" in full_check.stderr


def test_a_model_no_cloud_can_provide_stops_the_agent_with_one_line(tmp_path, model_repo, cloud):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(textwrap.dedent(f"""\
        version: 1
        cloud: {{endpoint: "127.0.0.1:{cloud.port}"}}
        defaults: {{listen: "127.0.0.1:0", models: [{{name: digits, version: "7"}}], routing: {{policy: edge_only}}}}
        devices: {{cam-001: {{}}}}
        """))
    run = fogline("agent", "run", "--config", str(fleet), "--device", "cam-001", "--models", str(tmp_path / "empty"))
    assert run.returncode == 1
    assert "fetch of digits v7 failed" in run.stderr and "NOT_FOUND" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "empty" / "digits" / "7").exists()
