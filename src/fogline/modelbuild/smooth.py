"""Activation smoothing (SmoothQuant-style) of an FP32 ONNX graph, before INT8 quantization.

Dynamic INT8 quantization gives each activation tensor one scale. In BERT-family encoders a few
hidden channels carry values far larger than the rest, so that one scale wastes most of the 8 bits
on them and rounds everything else coarsely. Smoothing moves that range from the activations into
the weights, where per-channel quantization absorbs it: for ``Y = X @ W`` and a per-input-channel
factor ``s``, ``Y = (X / s) @ (s * W)`` exactly. ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``,
with ``max|X_j|`` measured on calibration batches. ``X / s`` is one small ``Mul`` node inserted before
the MatMuls that read ``X`` (Q, K and V share one). The result is still FP32 and computes the same
function up to rounding; onnxruntime's quantizer then quantizes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _weighted_matmuls(model) -> dict[str, list]:
    """Input tensor name -> MatMul nodes that multiply it by a constant 2-D weight."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list] = {}
    for node in model.graph.node:
        weighted = node.op_type == "MatMul" and node.input[1] in inits
        if weighted and numpy_helper.to_array(inits[node.input[1]]).ndim == 2:
            groups.setdefault(node.input[0], []).append(node)
    return groups


def activation_ranges(
    model_path: Path, names: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |value| of each named tensor over all ``feeds``."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    ranges: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = session.run(list(names), {n: feed[n] for n in inputs})
        for name, value in zip(names, values, strict=True):
            amax = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = np.maximum(ranges.get(name, amax), amax)
    return ranges


def smooth_onnx(
    src: Path,
    dst: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    alpha: float = 0.5,
    exclude_inputs: Sequence[str] = (),
    alpha_overrides: Mapping[str, float | None] | None = None,
) -> list[str]:
    """Write a smoothed copy of ``src`` to ``dst``; returns the activation tensors that were smoothed.

    ``alpha_overrides`` maps a substring of a MatMul node name to the alpha used for its input
    (for example ``{"/output/dense/": 0.8}``); other inputs use ``alpha``. An override of ``None``
    leaves that input unsmoothed.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    groups = {k: v for k, v in _weighted_matmuls(model).items() if k not in set(exclude_inputs)}
    ranges = activation_ranges(src, sorted(groups), feeds)
    inits = {i.name: i for i in model.graph.initializer}
    first_use = {id(node): i for i, node in enumerate(model.graph.node)}
    insert: list[tuple[int, object]] = []
    done: list[str] = []
    for name in sorted(groups):
        nodes = groups[name]
        a: float | None = alpha
        for pattern, value in (alpha_overrides or {}).items():
            if any(pattern in n.name for n in nodes):
                a = value
        if a is None:
            continue
        done.append(name)
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        w_amax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = (ranges[name] ** a) / np.maximum(w_amax, 1e-8) ** (1.0 - a)
        scale = np.clip(scale, 1e-4, 1e4).astype(np.float32)
        scale = np.where(ranges[name] > 0, scale, 1.0).astype(np.float32)
        for node, weight in zip(nodes, weights, strict=True):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array((weight * scale[:, None]).astype(np.float32),
                                                                  node.input[1]))  # fmt: skip
        inv_name = f"{name}_smooth_inv"
        out_name = f"{name}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inv_name))
        mul = onnx.helper.make_node("Mul", [name, inv_name], [out_name], name=f"{name}/SmoothMul")
        for node in nodes:
            node.input[0] = out_name
        insert.append((min(first_use[id(n)] for n in nodes), mul))
    for position, mul in sorted(insert, key=lambda item: -item[0]):
        model.graph.node.insert(position, mul)
    onnx.save(model, str(dst))
    return done
