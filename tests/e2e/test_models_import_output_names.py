"""``fogline models import --output-names`` as a user runs it: a two-output torch module (a torch.export
program and a TorchScript file) imported with its outputs named; both tiers' runtimes answer under
those names, the cloud's equal to the module's. A wrong count, or names for an ONNX file, is one line
and exit status 2 with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fogline.models.edge_runtime import EdgeModel
from fogline.models.full_runtime import FullModel

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


class TwoHeads(torch.nn.Module):
    """A shared layer, then class scores and an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(8, 32)
        self.scores = torch.nn.Linear(32, 4)
        self.embed = torch.nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.body(x))
        return self.scores(hidden), self.embed(hidden)


def fogline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fogline.cli", "models", "import", *args, "--quiet"],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, TwoHeads]:
    folder = tmp_path_factory.mktemp("two-heads")
    torch.manual_seed(0)
    module = TwoHeads().eval()
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    np.savez(folder / "calib.npz", x=x)
    example = (torch.from_numpy(x[:2]),)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(module, example, dynamic_shapes=({0: batch},)), str(folder / "model.pt2"))
    torch.jit.save(torch.jit.trace(module, example), str(folder / "model.pt"))
    torch.onnx.export(module, example, str(folder / "model.onnx"), dynamo=False, input_names=["x"],
                      output_names=["a", "b"], dynamic_axes={"x": {0: "batch"}}, opset_version=17)
    return folder, module


@pytest.mark.parametrize("form", ["pt2", "pt"])
def test_outputs_take_the_given_names_on_both_tiers(form, sources, tmp_path) -> None:
    folder, module = sources
    done = fogline("two", "--from", str(folder / f"model.{form}"), "--calibration", str(folder / "calib.npz"),
                   "--output-names", "scores,embedding", "--models", str(tmp_path))
    assert done.returncode == 0, done.stderr
    version = tmp_path / "two" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert [(s["name"], s["shape"]) for s in manifest["outputs"]] == [("scores", [-1, 4]), ("embedding", [-1, 6])]
    x = np.load(folder / "calib.npz")["x"][:5]
    with torch.inference_mode():
        want = [t.numpy() for t in module(torch.from_numpy(x))]
    cloud = FullModel.load(version).predict({"x": x})
    edge = EdgeModel.load(version).predict({"x": x})
    assert list(cloud) == list(edge) == ["scores", "embedding"]
    for name, expected in zip(("scores", "embedding"), want, strict=True):
        np.testing.assert_allclose(cloud[name], expected, rtol=1e-4, atol=1e-5)
        assert edge[name].shape == expected.shape


@pytest.mark.parametrize(("source", "names", "message"), [
    ("model.pt2", "scores", "--output-names scores: {src} returns 2 outputs from forward(), 1 name given"),
    ("model.pt", "scores,x", "--output-names scores,x: 'x' is an input of the model"),
    ("model.onnx", "scores,embedding", "--output-names: {src} is an ONNX file, whose graph already names its outputs"),
])
def test_bad_output_names_are_one_line_and_exit_2(source, names, message, sources, tmp_path) -> None:
    folder, _ = sources
    src = folder / source
    done = fogline("two", "--from", str(src), "--calibration", str(folder / "calib.npz"), "--output-names", names,
                   "--models", str(tmp_path))
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fogline models import: " + message.format(src=src)), done.stderr
    assert not any(tmp_path.iterdir())
