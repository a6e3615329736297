"""Which INT8 recipes an import tries, in order.

``choose_method`` picks the method: ``dynamic`` for a graph dominated by MatMul/Gemm (transformers,
MLPs), ``static_qdq`` with the calibration rows for a convolutional one (``auto``: static when the
graph has at least as many Conv as MatMul + Gemm nodes). ``ladder`` lists the tries: the base recipe
with per-tensor weights, then the known remedies in order, each tried only when the one before it
missed the gate: per-channel weights; then per-channel with the most sensitive nodes kept in FP32
(``fogline.modelbuild.sensitivity`` ranks them), a few first, then a quarter of them. A dynamic recipe
quantizes Gather as well when the graph looks rows up in a sizable float table (an embedding, as in
minilm's own recipe): ``embedding_tables`` finds them; the gate and its remedies still judge the result.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fogline.modelbuild.import_errors import ImportRefused
from fogline.modelbuild.quantize import Recipe

METHODS = ("auto", "dynamic", "static")
MATMUL_OPS = ("MatMul", "Gemm")
#: A Gather's float data initializer with at least this many values is an embedding table (256 KiB in FP32).
EMBEDDING_MIN_VALUES = 65536
#: ONNX element types onnxruntime quantizes as weights (FLOAT, FLOAT16).
FLOAT_TYPES = (1, 10)
CONV_OPS = ("Conv", "ConvTranspose")
#: Op types a static QDQ recipe quantizes (weights and the activations around them). Conv/ConvTranspose/
#: Gemm/MatMul alone measured no faster on resnet18 / mobilenet_v3_small (bench/results/models.md).
STATIC_OPS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool")
#: Fractions of the quantized weight nodes kept FP32 by the last two remedies.
EXCLUDE_FRACTIONS = (0.1, 0.25)


def op_counts(model: Any) -> Counter[str]:
    """How many nodes of each op type the (top-level) graph has."""
    return Counter(node.op_type for node in model.graph.node)


def embedding_tables(model: Any) -> list[str]:
    """Names of the float initializers of ``EMBEDDING_MIN_VALUES`` or more that a top-level Gather reads rows
    of (its data input), in graph order."""
    sizable = {init.name for init in model.graph.initializer
               if init.data_type in FLOAT_TYPES and math.prod(init.dims) >= EMBEDDING_MIN_VALUES}
    found: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input and node.input[0] in sizable and node.input[0] not in found:
            found.append(node.input[0])
    return found


def choose_method(requested: str, counts: Counter[str], has_calibration: bool) -> tuple[str, str]:
    """``(method, reason)`` with method ``dynamic`` or ``static_qdq``; ``ImportRefused`` when static is
    asked for (or chosen) with no calibration file, or the graph has nothing to quantize."""
    matmul = sum(counts[o] for o in MATMUL_OPS)
    conv = sum(counts[o] for o in CONV_OPS)
    if matmul + conv == 0:
        raise ImportRefused("the model has no Conv, MatMul or Gemm node: INT8 quantization would change nothing")
    census = f"{conv} Conv, {matmul} MatMul/Gemm"
    if requested == "dynamic":
        method, reason = "dynamic", f"asked for ({census})"
    elif requested == "static":
        method, reason = "static_qdq", f"asked for ({census})"
    elif conv >= matmul:
        method, reason = "static_qdq", f"auto: convolutional ({census})"
    else:
        method, reason = "dynamic", f"auto: MatMul/Gemm-dominated ({census})"
    if method == "static_qdq" and not has_calibration:
        raise ImportRefused(f"static quantization ({reason}) needs calibration rows: pass --calibration F.npz "
                            "(or --quantization dynamic)")
    return method, reason


def base_recipe(method: str, embeddings: Sequence[str] = ()) -> Recipe:
    """The first try: per-tensor weights; a dynamic one quantizes Gather too when ``embeddings`` (see
    ``embedding_tables``) is not empty."""
    if method == "dynamic":
        ops = (*MATMUL_OPS, "Gather") if embeddings else MATMUL_OPS
        return Recipe(method="dynamic", per_channel=False, op_types=ops, note="import: base")
    return Recipe(method="static_qdq", per_channel=False, op_types=STATIC_OPS, calibration="minmax",
                  activation_type="QUInt8", note="import: base")


def per_channel(recipe: Recipe) -> Recipe:
    """Remedy 1: per-channel weights."""
    return Recipe(**{**recipe.__dict__, "per_channel": True, "note": "import: per-channel weights"})


def keep_fp32(recipe: Recipe, ranked: Sequence[str], fraction: float) -> Recipe:
    """Remedy 2 and 3: ``recipe`` with the ``fraction`` most sensitive of ``ranked`` nodes kept FP32."""
    count = max(1, math.ceil(fraction * len(ranked)))
    kept = recipe.with_excluded(ranked[:count])
    return Recipe(**{**kept.__dict__, "note": f"import: per-channel, {count} most sensitive node(s) FP32"})
