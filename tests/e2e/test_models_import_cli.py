"""``fogline models import`` as a user runs it: a scikit-learn MLP (skl2onnx) imported and verified, and
the refusals (unsupported operator, no static rank, mismatched calibration, corrupt file): each one
clear line on stderr, exit status 2, the repository left exactly as it was."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("skl2onnx") is None, reason="skl2onnx (dev extra) missing"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]


def fogline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fogline.cli", "models", *args], capture_output=True, text=True,
                          timeout=300)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    """``mlp.onnx`` (an sklearn MLPClassifier on the digits data, zipmap off) and ``calib.npz`` (X, labels)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    folder = tmp_path_factory.mktemp("mlp")
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(x[:1200], y[:1200])
    onx = to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17)
    (folder / "mlp.onnx").write_bytes(onx.SerializeToString())
    np.savez(folder / "calib.npz", X=x[1200:1400], labels=y[1200:1400])
    return folder


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mlp) -> Path:
    """A repository holding one import of the MLP (the refusals must leave it untouched)."""
    root = tmp_path_factory.mktemp("repo")
    done = fogline("import", "mlp", "--from", str(mlp / "mlp.onnx"), "--task", "classification",
                   "--calibration", str(mlp / "calib.npz"), "--models", str(root))
    assert done.returncode == 0, done.stderr
    assert "imported mlp version 1" in done.stdout
    flagged = json.loads((root / "mlp" / "1" / "manifest.json").read_text())["latency"]["int8_slower_than_fp32"]
    assert ("smaller but slower than FP32 ONNX" in done.stderr) == flagged, done.stderr
    return root


def test_mlp_import_writes_a_verified_version(repo) -> None:
    manifest = json.loads((repo / "mlp" / "1" / "manifest.json").read_text())
    assert manifest["task"] == "classification" and manifest["import"]["source"]["kind"] == "onnx"
    assert [s["name"] for s in manifest["inputs"]] == ["X"]
    assert manifest["inputs"][0]["shape"] == [-1, 64] and manifest["inputs"][0]["datatype"] == "FP32"
    assert {s["name"]: s["datatype"] for s in manifest["outputs"]} == {"label": "INT64", "probabilities": "FP32"}
    assert manifest["classification"] == {"output": "probabilities", "scores": "probabilities"}
    assert manifest["quantization"]["method"] == "dynamic" and manifest["gate"]["passed"]
    assert manifest["metrics"]["int8"]["top1_agreement"] >= 0.97
    assert manifest["sizes"]["int8_onnx_bytes"] < manifest["sizes"]["fp32_onnx_bytes"]
    assert set(manifest["latency_ms"]) == {"edge_int8_onnxruntime", "full_fp32_onnxruntime"}
    checked = fogline("verify", str(repo))
    assert checked.returncode == 0 and "mlp 1: ok" in checked.stdout, checked.stderr


def _custom_op_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example", name="mystery0")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))


def _rankless_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)  # no shape: no static rank
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("case", ["operator", "rank", "calibration", "corrupt"])
def test_refusals_exit_2_with_one_line_and_leave_the_repository_unchanged(case, repo, mlp, tmp_path) -> None:
    source, extra, expected = mlp / "mlp.onnx", [], ""
    if case == "operator":
        source, expected = tmp_path / "custom.onnx", "unsupported operator com.example::Mystery"
        _custom_op_model(source)
    elif case == "rank":
        source, expected = tmp_path / "rankless.onnx", "input 'x' has no static rank"
        _rankless_model(source)
    elif case == "calibration":
        bad = tmp_path / "bad.npz"
        np.savez(bad, X=np.zeros((8, 63), np.float32))
        extra, expected = ["--calibration", str(bad)], "array 'X' has shape [8, 63], the model input wants [N,64]"
    else:
        source, expected = tmp_path / "broken.onnx", "not a readable ONNX model"
        source.write_bytes((mlp / "mlp.onnx").read_bytes()[:300])
    before = snapshot(repo)
    done = fogline("import", "mine", "--from", str(source), "--models", str(repo), "--quiet", *extra)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert lines[0].startswith("fogline models import: ") and "Traceback" not in done.stderr
    assert snapshot(repo) == before
