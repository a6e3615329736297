"""Build ``digits``: train the CNN on scikit-learn's digits, then import it like any user's model.

Steps: fixed stratified split and deterministic training (``digits_net``); export the FP32 sources,
ONNX (what the edge INT8 is quantized from) and a ``torch.export`` program (what the cloud serves); import them
(``shipped.import_shipped``) with ``RECIPE`` as the first try, the first training images as calibration
rows and the held-out split (with labels) as evaluation rows; then measure accuracy on the held-out
split for torch FP32, ONNX FP32 and ONNX INT8 (the release gate's figures). Returns the manifest fields
(the caller adds the file table).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fogline.modelbuild.fidelity import accuracy
from fogline.modelbuild.onnx_export import export_onnx, save_program, torch_threads
from fogline.modelbuild.quantize import Recipe
from fogline.modelbuild.shipped import import_shipped
from fogline.models.digits_net import DigitsConfig, DigitsData, load_digits_split, train_digits
from fogline.models.edge_runtime import EdgeModel
from fogline.models.full_runtime import FullModel
from fogline.models.spec import DIGITS_INPUTS

CONFIG = DigitsConfig()

# The chosen recipe; bench/results/models.md records the exploration behind it.
RECIPE = Recipe(
    method="static_qdq",
    per_channel=True,
    op_types=("Conv", "Gemm", "MatMul", "Relu", "MaxPool"),
    calibration="minmax",
    activation_type="QUInt8",
    note="first build",
)

#: Training images used to calibrate activation ranges: this many batches of 32.
CALIBRATION_BATCHES = 8


def build_digits(out: Path, report: Callable[[str], None], recipe: Recipe = RECIPE) -> dict[str, Any]:
    """Write every digits file into ``out`` (an empty directory); return the manifest fields."""
    data = load_digits_split(CONFIG)
    report(f"training the CNN on {len(data.train_x)} images ({CONFIG.epochs} epochs, seed {CONFIG.seed})")
    model = train_digits(CONFIG, data).eval()
    example = (torch.from_numpy(data.test_x[:2]),)
    with tempfile.TemporaryDirectory(prefix="fogline-digits-") as scratch:
        src = Path(scratch)
        report("exporting the FP32 sources: ONNX (edge) and torch.export program (cloud)")
        with torch_threads(1):
            export_onnx(model, example, src / "digits.onnx", ("image",), ("probabilities",),
                        {"image": {0: "batch"}, "probabilities": {0: "batch"}})
            save_program(model, example, src / "digits.pt2", ({0: "batch"},))
        np.savez(src / "calibration.npz", image=np.concatenate([f["image"] for f in calibration_feeds(data)]))
        np.savez(src / "eval.npz", image=data.test_x, labels=data.test_y.astype(np.int64))
        report(f"importing ({recipe.method}, per_channel={recipe.per_channel}, {recipe.calibration} calibration)")
        manifest = import_shipped(
            out, name="digits", source=src / "digits.onnx", full=src / "digits.pt2", task="classification",
            calibration=src / "calibration.npz", eval=src / "eval.npz", recipe=recipe,
            value_ranges={"image": DIGITS_INPUTS[0].value_range}, manifest_extra={"source": _source_record(data)},
        )  # fmt: skip
    report("measuring accuracy on the held-out split")
    manifest["metrics"] = {**manifest["metrics"], **measure_digits(out, data)}
    return manifest


def calibration_feeds(data: DigitsData) -> list[dict[str, np.ndarray]]:
    """The first ``CALIBRATION_BATCHES`` batches of 32 training images (never test images)."""
    return [{"image": data.train_x[i * 32 : (i + 1) * 32]} for i in range(CALIBRATION_BATCHES)]


def _source_record(data: DigitsData) -> dict[str, Any]:
    return {
        "dataset": "sklearn.datasets.load_digits (1797 8x8 images, bundled with scikit-learn)",
        "split": f"stratified, test_fraction={CONFIG.test_fraction}, random_state={CONFIG.seed}",
        "train_images": len(data.train_x),
        "test_images": len(data.test_x),
        "training": CONFIG.to_dict(),
    }


def measure_digits(version_dir: Path, data: DigitsData | None = None) -> dict[str, Any]:
    """Held-out accuracy of torch FP32, ONNX FP32 and ONNX INT8, and the FP32 ONNX-vs-torch error."""
    data = data or load_digits_split(CONFIG)
    full = FullModel.load(version_dir)
    with torch_threads(1):
        torch_probs = full.predict({"image": data.test_x})["probabilities"]
    fp32 = EdgeModel.load(version_dir, artifact="reference_onnx").predict({"image": data.test_x})
    int8 = EdgeModel.load(version_dir).predict({"image": data.test_x})
    fp32_probs, int8_probs = fp32["probabilities"], int8["probabilities"]
    return {
        "test_images": len(data.test_y),
        "full_accuracy": round(accuracy(torch_probs, data.test_y), 6),
        "fp32_onnx_accuracy": round(accuracy(fp32_probs, data.test_y), 6),
        "int8_accuracy": round(accuracy(int8_probs, data.test_y), 6),
        "int8_agreement_with_fp32": round(float((int8_probs.argmax(1) == fp32_probs.argmax(1)).mean()), 6),
        "onnx_fp32_max_abs_diff": float(f"{np.abs(fp32_probs - torch_probs).max():.3g}"),
    }
