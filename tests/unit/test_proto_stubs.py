"""The committed generated stubs match the .proto sources and live under the fogline namespace."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (dev extra) missing")
def test_generated_stubs_are_fresh(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert fresh, "protoc wrote nothing"
    stale = [
        str(rel) for rel in fresh if (tmp_path / rel).read_bytes() != (ROOT / "src" / rel).read_bytes()
    ]
    assert not stale, f"generated files are stale, run `make proto`: {stale}"


def test_stubs_import_as_fogline_inference_not_proto():
    from fogline.inference import grpc_service_pb2, grpc_service_pb2_grpc

    assert grpc_service_pb2.DESCRIPTOR.package == "inference"
    assert "GRPCInferenceService" in grpc_service_pb2.DESCRIPTOR.services_by_name
    assert hasattr(grpc_service_pb2_grpc, "GRPCInferenceServiceServicer")
    assert not (ROOT / "proto" / "__init__.py").exists(), "proto/ must not be a top-level package"
