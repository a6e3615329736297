"""A model repository for ``bench.models``: the reference models plus four imports, made as a user would.

    python -m bench.byom_repo --out DIR [--size 224]

Into ``DIR/sources`` it writes four models and their calibration files, then imports each into
``DIR/models`` with the ``fogline models import`` command (printed before it runs), after
``fogline models build --out DIR/models`` when the reference models are not there yet:

| name | source | task |
| --- | --- | --- |
| ``mnv3`` | torchvision ``mobilenet_v3_small(num_classes=10)``, ``torch.export`` program (``.pt2``) | classification |
| ``resnet`` | torchvision ``resnet18(num_classes=10)``, TorchScript (``.pt``) | classification |
| ``mlp`` | scikit-learn ``MLPClassifier`` (64-32-10) on the digits data, ONNX via ``skl2onnx`` | classification |
| ``textbag`` | a small token-bag encoder (embedding 30522x64, MLP to 32) over the all-MiniLM tokenizer, ``.pt2`` | embedding |

The torchvision networks have weights from ``torch.manual_seed(0)`` and take SIZE x SIZE images
(``tests/byom_sources.py`` makes them, in a child process: see there why). torchvision comes from the
environment or, where its wheel cannot load (the PyPI build wants CUDA torch), from
``pip install --no-deps --target .cache/torchvision-0.28.0 torchvision==0.28.0``, which the import
tests also make and use (model builders only, no C++ operators); their calibration rows are
32 seeded standard-normal images. Random weights give near-tied logits, so their top-1 gate is set to
0.9 (``--gate top1_agreement_min=0.9``), as in the import tests. The MLP is calibrated and judged on
200 held-out digits with labels, the text model on fogline's calibration sentences.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
TORCHVISION_MAKER = REPO_ROOT / "tests" / "byom_sources.py"
#: Where the import tests put torchvision when the environment lacks it (``pip install --no-deps --target``).
TORCHVISION_DIR = REPO_ROOT / ".cache" / "torchvision-0.28.0"
#: (name, torchvision architecture, source form)
VISION = (("mnv3", "mobilenet_v3_small", "pt2"), ("resnet", "resnet18", "pt"))
VISION_GATE = "top1_agreement_min=0.9"


def run(command: list[str], env: dict[str, str] | None = None) -> None:
    """Print ``command`` as a shell line, run it, stop on failure."""
    print("$ " + shlex.join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, env=env)


def fogline() -> list[str]:
    """The ``fogline`` command of this environment."""
    script = Path(sys.executable).with_name("fogline")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fogline.cli"]


def vision_sources(out: Path, size: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if TORCHVISION_DIR.is_dir():
        env.setdefault("FOGLINE_TORCHVISION_DIR", str(TORCHVISION_DIR))
    for name, arch, form in VISION:
        run([sys.executable, str(TORCHVISION_MAKER), arch, form, str(out / name), "--size", str(size)], env)


def mlp_source(out: Path) -> None:
    """``mlp/model.onnx`` (zipmap off) and ``mlp/calib.npz`` (``X``, ``labels``: 200 held-out digits)."""
    import warnings

    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    folder = out / "mlp"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: 200 epochs are plenty for this check
        clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(x[:1200], y[:1200])
    onx = to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17)
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    np.savez(folder / "calib.npz", X=x[1200:1400], labels=y[1200:1400])


def text_source(out: Path) -> None:
    """``textbag/model.pt2`` (inputs ``input_ids``, ``attention_mask``) and ``calib.npz`` (``text``)."""
    import torch

    from fogline.modelbuild.fidelity import load_sentences

    class TokenBag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.words = torch.nn.Embedding(30522, 64)
            self.hidden = torch.nn.Linear(64, 128)
            self.out = torch.nn.Linear(128, 32)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            pooled = (self.words(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.out(torch.tanh(self.hidden(pooled)))

    folder = out / "textbag"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module = TokenBag().eval()
    example = (torch.ones((2, 7), dtype=torch.int64), torch.ones((2, 7), dtype=torch.int64))
    batch, tokens = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("tokens", min=2, max=256)
    program = torch.export.export(module, example, dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}))
    torch.export.save(program, str(folder / "model.pt2"))
    np.savez(folder / "calib.npz", text=np.array(load_sentences("calibration.txt")))


def import_all(sources: Path, models: Path) -> None:
    from fogline.modelbuild.build_minilm import package_model_dir

    base = [*fogline(), "models", "import"]
    for name, _, form in VISION:
        run([*base, name, "--from", str(sources / name / f"model.{form}"), "--task", "classification",
             "--calibration", str(sources / name / "calib.npz"), "--gate", VISION_GATE, "--models", str(models)])
    run([*base, "mlp", "--from", str(sources / "mlp" / "model.onnx"), "--task", "classification",
         "--calibration", str(sources / "mlp" / "calib.npz"), "--models", str(models)])
    run([*base, "textbag", "--from", str(sources / "textbag" / "model.pt2"), "--task", "embedding",
         "--calibration", str(sources / "textbag" / "calib.npz"), "--tokenizer", str(package_model_dir()),
         "--models", str(models)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.byom_repo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder: sources/ and models/ go under it")
    parser.add_argument("--size", type=int, default=224, help="image side of the torchvision models (default 224)")
    args = parser.parse_args(argv)
    from fogline.modelbuild.build import MODEL_NAMES, is_current

    sources, models = args.out / "sources", args.out / "models"
    if not all(is_current(models, name) for name in MODEL_NAMES):
        run([*fogline(), "models", "build", "--out", str(models)])
    vision_sources(sources, args.size)
    mlp_source(sources)
    text_source(sources)
    import_all(sources, models)
    print(f"repository: {models}; benchmark it with: python -m bench.models --models {models}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
