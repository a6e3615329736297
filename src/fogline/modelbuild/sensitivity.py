"""Rank the nodes quantization touches by how much error each one adds, so the worst can stay FP32.

Both the FP32 graph and a quantized one are run on a few evaluation rows with the output of every
weight node (Conv, Gemm, MatMul...) exposed. A node's sensitivity is the relative error of its output
(INT8 against FP32) minus the largest relative error among its inputs: the error it adds rather
than the error it inherits. Nodes whose output the quantized graph no longer has come last.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fogline.modelbuild.quantize import quantizable_nodes
from fogline.modelbuild.task_fidelity import relative_error


def rank_nodes(fp32: Path, int8: Path, op_types: Sequence[str], feed: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the weight nodes of ``op_types`` in ``fp32``, most sensitive first."""
    import onnx

    names = quantizable_nodes(fp32, op_types)
    model = onnx.load(str(fp32))
    nodes = {node.name: node for node in model.graph.node if node.name in names}
    tensors = sorted({t for n in nodes.values() for t in (*n.output[:1], *n.input[:1]) if t})
    reference = _run_exposed(fp32, tensors, feed)
    candidate = _run_exposed(int8, tensors, feed)

    def added_error(name: str) -> float:
        node = nodes[name]
        out = node.output[0]
        if out not in reference or out not in candidate:
            return float("-inf")
        inherited = [relative_error(reference[t], candidate[t]) for t in node.input[:1]
                     if t in reference and t in candidate]
        return relative_error(reference[out], candidate[out]) - max(inherited, default=0.0)

    return sorted(names, key=added_error, reverse=True)


def _run_exposed(path: Path, tensors: Sequence[str], feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``path`` with ``tensors`` added as float outputs (those it has); graph rewrites left off."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    inputs = {i.name for i in model.graph.input}
    have = {o for n in model.graph.node for o in n.output} | inputs
    existing = {o.name for o in model.graph.output}
    wanted = [t for t in tensors if t in have and t not in existing and t not in inputs]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in wanted)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="fogline-sens-") as scratch:
        exposed = Path(scratch) / "exposed.onnx"
        onnx.save(model, str(exposed))
        session = ort.InferenceSession(str(exposed), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs() if o.name in wanted]
        values = session.run(names, {k: v for k, v in feed.items() if k in inputs})
    found = dict(zip(names, values, strict=True))
    for t in tensors:
        if t in inputs and t in feed:
            found[t] = np.asarray(feed[t])
    return found
