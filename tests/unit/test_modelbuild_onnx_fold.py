"""Constant Identity nodes folded out before quantization (the effect on the INT8 graph is checked on a
real resnet18 import: tests/integration/test_models_import_serving.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fogline.modelbuild.onnx_fold import fold_constant_identities

pytestmark = pytest.mark.unit

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, TensorProto = onnx.helper, onnx.TensorProto


def conv_model(with_identity: bool) -> onnx.ModelProto:
    """Two 3x3 convolutions with ReLU whose biases come through ``Identity(initializer)`` (as torch's
    TorchScript exporter writes a folded batch-norm bias), and a constant graph output via Identity."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    current = "x"
    for i in range(2):
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal((4, 4 if i else 1, 3, 3)).astype(np.float32),
                                                  f"w{i}"))
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), f"b{i}"))
        bias = f"b{i}"
        if with_identity:
            nodes.append(helper.make_node("Identity", [f"b{i}"], [f"b{i}_id"], name=f"id{i}"))
            bias = f"b{i}_id"
        nodes.append(helper.make_node("Conv", [current, f"w{i}", bias], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        current = f"r{i}"
    inits.append(onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32), "const"))
    nodes.append(helper.make_node("Identity", ["const"], ["const_out"], name="const_id"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [None, 4, 8, 8]),
                               helper.make_tensor_value_info("const_out", TensorProto.FLOAT, [3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_fold_rewires_consumers_to_the_initializer_and_keeps_graph_outputs(tmp_path):
    model = conv_model(with_identity=True)
    onnx.save(model, str(tmp_path / "before.onnx"))
    assert fold_constant_identities(model) == 2
    assert [n.name for n in model.graph.node if n.op_type == "Identity"] == ["const_id"]  # a graph output stays
    assert [n.input[2] for n in model.graph.node if n.op_type == "Conv"] == ["b0", "b1"]
    assert fold_constant_identities(model) == 0
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "after.onnx"))
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    for before, after in zip(run(tmp_path / "before.onnx", x), run(tmp_path / "after.onnx", x), strict=True):
        np.testing.assert_array_equal(before, after)

