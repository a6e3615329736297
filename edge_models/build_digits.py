"""Build ``digits``: train the CNN on scikit-learn's digits, export FP32 ONNX, quantize to INT8.

Steps: fixed stratified split and deterministic training (``digits_net``); save the FP32 weights
(safetensors) and config; export to ONNX and check it against torch; quantize with ``RECIPE`` using
training images as calibration data; measure accuracy on the held-out split for torch FP32, ONNX FP32
and ONNX INT8. Returns the manifest fields (the caller adds the file table).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .build_minilm import write_stub_manifest
from .digits_net import DigitsConfig, DigitsData, load_digits_split, train_digits
from .edge_runtime import EdgeModel
from .fidelity import accuracy
from .full_runtime import FullModel
from .onnx_export import export_onnx, torch_threads
from .quantize import Recipe, quantize_onnx
from .spec import DIGITS_INPUTS, DIGITS_OUTPUTS

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

ARTIFACTS = {
    "edge": "model.int8.onnx",
    "reference_onnx": "model.fp32.onnx",
    "full_config": "full/config.json",
    "full_weights": "full/model.safetensors",
}

#: Training images used to calibrate activation ranges: this many batches of 32.
CALIBRATION_BATCHES = 8


def build_digits(out: Path, report: Callable[[str], None], recipe: Recipe = RECIPE) -> dict[str, Any]:
    """Write every digits file into ``out`` (an empty directory); return the manifest fields."""
    from safetensors.torch import save_file

    data = load_digits_split(CONFIG)
    report(f"training the CNN on {len(data.train_x)} images ({CONFIG.epochs} epochs, seed {CONFIG.seed})")
    model = train_digits(CONFIG, data)
    (out / "full").mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / ARTIFACTS["full_weights"]))
    (out / ARTIFACTS["full_config"]).write_text(json.dumps(CONFIG.to_dict(), indent=2, sort_keys=True) + "\n")

    manifest = base_manifest(recipe, data)
    write_stub_manifest(out, manifest)
    report("exporting FP32 ONNX")
    with torch_threads(1):
        export_onnx(
            model, (torch.from_numpy(data.test_x[:2]),), out / ARTIFACTS["reference_onnx"],
            ("image",), ("probabilities",), {"image": {0: "batch"}, "probabilities": {0: "batch"}},
        )  # fmt: skip
    report(f"quantizing ({recipe.method}, per_channel={recipe.per_channel}, {recipe.calibration} calibration)")
    quantize_onnx(out / ARTIFACTS["reference_onnx"], out / ARTIFACTS["edge"], recipe, calibration_feeds(data))
    report("measuring accuracy on the held-out split")
    manifest["metrics"] = measure_digits(out, data)
    return manifest


def calibration_feeds(data: DigitsData) -> list[dict[str, np.ndarray]]:
    """The first ``CALIBRATION_BATCHES`` batches of 32 training images (never test images)."""
    return [{"image": data.train_x[i * 32 : (i + 1) * 32]} for i in range(CALIBRATION_BATCHES)]


def base_manifest(recipe: Recipe, data: DigitsData) -> dict[str, Any]:
    return {
        "name": "digits",
        "version": "1",
        "task": "classification",
        "inputs": [s.to_dict() for s in DIGITS_INPUTS],
        "outputs": [s.to_dict() for s in DIGITS_OUTPUTS],
        "artifacts": dict(ARTIFACTS),
        "quantization": recipe.to_dict(),
        "source": {
            "dataset": "sklearn.datasets.load_digits (1797 8x8 images, bundled with scikit-learn)",
            "split": f"stratified, test_fraction={CONFIG.test_fraction}, random_state={CONFIG.seed}",
            "train_images": len(data.train_x),
            "test_images": len(data.test_x),
            "training": CONFIG.to_dict(),
        },
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
