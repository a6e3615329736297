"""Imported models served on both tiers: torchvision ``mobilenet_v3_small`` (torch.export ``.pt2``) and
``resnet18`` (TorchScript ``.pt``), seeded weights, 64x64 inputs, imported with ``import_model``; an
unmodified ``tritonclient.grpc`` client asks an agent (edge route) and, through it, the cloud
(``fogline cloud serve``, cloud route). Cloud answers equal the source modules' within 1e-4 relative;
edge answers reproduce the fidelity the manifest records, which passes its gate."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from imported_serving import call_through_agent

from fogline.modelbuild import task_fidelity
from fogline.modelbuild.importer import ImportOptions, import_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient (dev extra) missing"),
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TORCHVISION = "torchvision==0.28.0"
#: Where the tests install torchvision (no dependencies) when the environment has none; see byom_sources.py.
TORCHVISION_DIR = REPO_ROOT / ".cache" / "torchvision-0.28.0"
#: (repository name, torchvision architecture, source form)
MODELS = (("mnv3", "mobilenet_v3_small", "pt2"), ("resnet", "resnet18", "pt"))
#: Random weights give near-tied logits, so a few argmax flips on 32 rows are expected of INT8.
GATE = ("top1_agreement_min=0.9",)

CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as grpcclient

    url, jobs = sys.argv[1], json.loads(sys.argv[2])
    client = grpcclient.InferenceServerClient(url)
    out = {}
    for model, route, path in jobs:
        x = np.load(path)["x"]
        inp = grpcclient.InferInput("x", list(x.shape), "FP32"); inp.set_data_from_numpy(x)
        result = client.infer(model, [inp], parameters={"route": route, "deadline_ms": 20000})
        served = result.get_response().parameters["served_by"].string_param
        out[f"{model}/{route}"] = {"served_by": served, "y": result.as_numpy("output").tolist()}
    print(json.dumps(out))
    """
)


def _torchvision_env() -> dict[str, str]:
    """The child's environment: torchvision from the environment, else a --target install made once."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if importlib.util.find_spec("torchvision") is None:
        if not any(TORCHVISION_DIR.glob("torchvision-*.dist-info")):
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                            str(TORCHVISION_DIR), TORCHVISION], check=True, timeout=600)
        env["FOGLINE_TORCHVISION_DIR"] = str(TORCHVISION_DIR)
    return env


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, Path]:
    """The source folders (made in parallel child processes) and a repository with both imports."""
    sources = tmp_path_factory.mktemp("sources")
    env = _torchvision_env()
    makers = [subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "byom_sources.py"), arch, form,
                                str(sources / name)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for name, arch, form in MODELS]
    for maker in makers:
        _, err = maker.communicate(timeout=300)
        assert maker.returncode == 0, err[-2000:]
    repo = tmp_path_factory.mktemp("repo")
    for name, _, form in MODELS:
        import_model(ImportOptions(name=name, source=sources / name / f"model.{form}", models_dir=repo,
                                   task="classification", calibration=sources / name / "calib.npz", gates=GATE,
                                   progress=False))
    return sources, repo


def test_imports_record_signature_recipe_and_a_passed_gate(imported) -> None:
    _, repo = imported
    for name, _, form in MODELS:
        manifest = json.loads((repo / name / "1" / "manifest.json").read_text())
        assert manifest["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
        assert manifest["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
        assert manifest["classification"] == {"output": "output", "scores": "logits"}
        assert manifest["quantization"]["method"] == "static_qdq" and manifest["gate"]["passed"]
        assert manifest["import"]["source"]["kind"] == {"pt2": "torch_export", "pt": "torchscript"}[form]
        assert manifest["sizes"]["int8_onnx_bytes"] < manifest["sizes"]["fp32_onnx_bytes"] / 2
        assert manifest["metrics"]["full_vs_source_relative_error"] <= 1e-4


def test_every_int8_convolution_runs_quantized(imported, tmp_path) -> None:
    """onnxruntime fuses each quantized convolution into QLinearConv: none is left running in FP32
    behind (de)quantize nodes (resnet18's TorchScript export wrote its biases through Identity nodes,
    which kept 15 of 20 convolutions in FP32 and made INT8 slower than FP32; fogline.modelbuild.onnx_fold)."""
    import onnx
    import onnxruntime as ort

    _, repo = imported
    for name, _, _ in MODELS:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(str(repo / name / "1" / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
        ops = [node.op_type for node in onnx.load(str(tmp_path / f"{name}.onnx")).graph.node]
        assert "Conv" not in ops and ops.count("QLinearConv") >= 20, (name, sorted(set(ops)))


def test_cloud_and_edge_answers_through_tritonclient(imported) -> None:
    sources, repo = imported
    names = tuple(name for name, _, _ in MODELS)
    jobs = [[name, route, str(sources / name / ("expected.npz" if route == "cloud" else "calib.npz"))]
            for name in names for route in ("cloud", "edge")]

    out = call_through_agent(repo, names, CLIENT, json.dumps(jobs))

    import onnxruntime as ort

    for name in names:
        cloud_answer, edge_answer = out[f"{name}/cloud"], out[f"{name}/edge"]
        assert cloud_answer["served_by"] == "cloud" and edge_answer["served_by"] == "edge"
        expected = np.load(sources / name / "expected.npz")["y"]
        got = np.asarray(cloud_answer["y"], np.float32)
        assert task_fidelity.relative_error(expected, got) <= 1e-4, name
        manifest = json.loads((repo / name / "1" / "manifest.json").read_text())
        calib = np.load(sources / name / "calib.npz")["x"]
        fp32 = ort.InferenceSession(str(repo / name / "1" / "model.fp32.onnx")).run(["output"], {"x": calib})[0]
        metrics = task_fidelity.measure("classification", {"output": fp32},
                                        {"output": np.asarray(edge_answer["y"], np.float32)}, "output", None)
        assert metrics == pytest.approx(manifest["metrics"]["int8"], abs=1e-6)
        assert not task_fidelity.misses(metrics, manifest["gate"]["limits"])
