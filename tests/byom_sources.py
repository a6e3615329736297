"""Make the source models of the bring-your-own-model tests, in a child process (``python byom_sources.py``).

    python tests/byom_sources.py ARCH FORM OUT_DIR [--size 64]

ARCH is a torchvision architecture (``mobilenet_v3_small``, ``resnet18``) built with weights from a
fixed seed (``torch.manual_seed(0)``), FORM ``pt2`` (torch.export, dynamic batch), ``pt`` (TorchScript)
or ``onnx`` (torch.onnx). OUT_DIR receives ``model.FORM``, ``calib.npz`` (input ``x``: 32 seeded
standard-normal images, 3xSIZExSIZE) and ``expected.npz`` (``x``: 4 more images; ``y``: what the source
module answers for them).

It runs in its own process because the torchvision wheel on PyPI is built against CUDA torch: on the
CPU torch build its C++ operators (nms, roi_align...) do not load, and importing the package fails. The
model builders are plain Python, so when the normal import fails this loads ``torchvision.models``
without the package's ``__init__`` (from the environment, or from ``FOGLINE_TORCHVISION_DIR``, a
``pip install --no-deps --target`` folder), never touching the test process, where the failing
package would also break ``transformers``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch


def torchvision_models() -> types.ModuleType:
    """``torchvision.models``, even where the torchvision C++ extension cannot load."""
    extra = os.environ.get("FOGLINE_TORCHVISION_DIR")
    if extra:
        sys.path.insert(0, extra)
    try:
        import torchvision.models

        return torchvision.models
    except (RuntimeError, OSError):
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise SystemExit("torchvision is not installed (pip install torchvision)")
    package = types.ModuleType("torchvision")
    package.__path__ = [str(Path(spec.origin).parent)]
    package.__file__ = spec.origin
    package.__spec__ = spec
    sys.modules["torchvision"] = package
    import torchvision.models

    return torchvision.models


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("arch")
    parser.add_argument("form", choices=("pt2", "pt", "onnx"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = getattr(torchvision_models(), args.arch)(num_classes=10).eval()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((36, 3, args.size, args.size)).astype(np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "calib.npz", x=calib[:32])
    with torch.inference_mode():
        expected = module(torch.from_numpy(calib[32:])).numpy()
    np.savez(args.out / "expected.npz", x=calib[32:], y=expected)
    example = (torch.from_numpy(calib[:2]),)
    path = args.out / f"model.{args.form}"
    if args.form == "pt2":
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.export.save(torch.export.export(module, example, dynamic_shapes=({0: batch},)), str(path))
    elif args.form == "pt":
        torch.jit.save(torch.jit.trace(module, example), str(path))
    else:
        torch.onnx.export(module, example, str(path), dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    print(path)


if __name__ == "__main__":
    main()
