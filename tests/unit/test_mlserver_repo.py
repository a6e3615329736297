"""Writing an MLServer repository from a fogline model repository (no mlserver needed)."""

from __future__ import annotations

import json

import pytest

from fogline.cloud.mlserver_repo import RUNTIME, main, write_repository

pytestmark = [pytest.mark.unit, pytest.mark.models]


def test_repository_points_each_model_at_the_runtime(model_repo, tmp_path):
    written = write_repository(model_repo, tmp_path, grpc_port=9181, torch_threads=2)
    assert sorted(p.parent.name for p in written) == ["digits", "minilm"]
    digits = json.loads((tmp_path / "digits" / "model-settings.json").read_text())
    assert digits["implementation"] == RUNTIME and digits["name"] == "digits"
    server = json.loads((tmp_path / "settings.json").read_text())
    assert server["grpc_port"] == 9181 and server["parallel_workers"] == 0
    params = digits["parameters"]
    assert (model_repo / "digits" / params["version"]).resolve() == type(model_repo)(params["uri"])
    assert params["extra"] == {"torch_threads": 2, "device": "cpu"}
    assert digits["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    minilm = json.loads((tmp_path / "minilm" / "model-settings.json").read_text())
    assert minilm["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


def test_cli_reports_a_missing_model_in_one_line(model_repo, tmp_path, capsys):
    assert main(["--models", str(model_repo), "--out", str(tmp_path), "--only", "resnet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "resnet" in err and "\n" not in err
