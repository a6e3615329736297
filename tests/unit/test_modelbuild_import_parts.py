"""The pure parts of ``fogline models import``: signature reading and name clashes, calibration checks,
the quantization choice, the task gates, and classifier confidence from logits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fogline.modelbuild import calibration, quant_plan, signature, task_fidelity
from fogline.modelbuild.import_errors import ImportRefused
from fogline.models.repository import LoadedModel
from fogline.models.spec import TensorSpec, validate_inputs

pytestmark = pytest.mark.unit

SPECS = [TensorSpec("x", "FP32", (-1, 3))]


def _graph(input_name: str = "x", output_name: str = "y", elem: int = 1):
    from onnx import helper

    weight = helper.make_tensor("w", 1, [3, 3], np.eye(3, dtype=np.float32).ravel().tolist())
    node = helper.make_node("MatMul", [input_name, "w"], [output_name], name="mm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(input_name, elem, ["N", 3])],
                              [helper.make_tensor_value_info(output_name, 1, ["N", 3])], initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_signature_reads_names_datatypes_and_dynamic_axes() -> None:
    inputs, outputs = signature.read_signature(_graph(), Path("m.onnx"))
    assert inputs == [TensorSpec("x", "FP32", (-1, 3))] and outputs == [TensorSpec("y", "FP32", (-1, 3))]
    signature.check_graph(_graph(), Path("m.onnx"))


@pytest.mark.parametrize(("model", "message"), [
    (lambda: _graph("labels"), "clashes with a name the import reserves"),
    (lambda: _graph(elem=10), "datatype FLOAT16"),
])
def test_signature_refusals(model, message) -> None:
    with pytest.raises(ImportRefused, match=message):
        signature.read_signature(model(), Path("m.onnx"))


def test_shared_input_output_name_is_a_clash() -> None:
    with pytest.raises(ImportRefused, match="tensor name 'x' clashes"):
        signature.check_names(SPECS, [TensorSpec("x", "FP32", (-1, 3))], Path("m.onnx"))


def test_old_opset_is_refused() -> None:
    model = _graph()
    model.opset_import[0].version = 9
    with pytest.raises(ImportRefused, match="unsupported opset 9"):
        signature.check_graph(model, Path("m.onnx"))


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.zeros((4, 3), np.float64)}, "is float64, the model input is FP32"),
    ({"x": np.zeros((4, 2), np.float32)}, r"shape \[4, 2\], the model input wants \[N,3\]"),
    ({"z": np.zeros((4, 3), np.float32)}, r"match no model input"),
    ({}, "no array for the model input 'x'"),
    ({"x": np.zeros((4, 3), np.float32), "labels": np.zeros(3, np.int64)}, "must be 4 integer class ids"),
])
def test_calibration_mismatches_are_one_line(arrays, message) -> None:
    with pytest.raises(ImportRefused, match=message):
        calibration.match(Path("c.npz"), arrays, SPECS)


def test_calibration_batches_and_synthetic_rows() -> None:
    data = calibration.match(Path("c.npz"), {"x": np.ones((70, 3), np.float32)}, SPECS)
    assert [b["x"].shape[0] for b in data.batches(32)] == [32, 32, 6] and data.labels is None
    made = calibration.synthetic(SPECS, rows=5)
    assert made is not None and made.arrays["x"].shape == (5, 3)
    assert calibration.synthetic([TensorSpec("t", "INT64", (-1, 3))]) is None


def test_auto_quantization_counts_op_types() -> None:
    assert quant_plan.choose_method("auto", Counter(Conv=10, Gemm=1), True)[0] == "static_qdq"
    assert quant_plan.choose_method("auto", Counter(MatMul=30, Conv=1), False)[0] == "dynamic"
    with pytest.raises(ImportRefused, match="needs calibration rows"):
        quant_plan.choose_method("auto", Counter(Conv=3), False)
    recipe = quant_plan.keep_fp32(quant_plan.per_channel(quant_plan.base_recipe("static_qdq")), list("abcdefghij"), 0.25)
    assert recipe.per_channel and recipe.nodes_to_exclude == ("a", "b", "c")


def test_dynamic_recipe_quantizes_gather_over_a_sizable_embedding_table() -> None:
    from onnx import helper

    def lookup(rows: int, elem: int = 1):
        table = helper.make_tensor("table", elem, [rows, 64], [0] * (rows * 64))
        node = helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", 7, ["N"])],
                                  [helper.make_tensor_value_info("y", elem, ["N", 64])], initializer=[table])
        return helper.make_model(graph)

    assert quant_plan.embedding_tables(lookup(1024)) == ["table"]
    assert quant_plan.embedding_tables(lookup(16)) == []  # a small lookup (segments, positions) is no reason
    assert quant_plan.embedding_tables(lookup(1024, elem=6)) == []  # INT32 table: nothing to quantize
    assert quant_plan.embedding_tables(_graph()) == []
    assert quant_plan.base_recipe("dynamic", ["table"]).op_types == ("MatMul", "Gemm", "Gather")
    assert quant_plan.base_recipe("dynamic").op_types == ("MatMul", "Gemm")
    assert quant_plan.per_channel(quant_plan.base_recipe("dynamic", ["table"])).to_dict()["op_types"][-1] == "Gather"


def test_int8_slower_than_fp32_onnx_at_batch_1_is_flagged_and_warned() -> None:
    from fogline.modelbuild import timing

    torch_served = {"edge_int8_onnxruntime": {"batch_1": 35.2, "batch_8": 303.0},
                    "fp32_onnxruntime": {"batch_1": 27.4, "batch_8": 206.9},
                    "full_fp32_torch": {"batch_1": 52.1, "batch_8": 318.6}}
    slower = timing.int8_vs_fp32(torch_served)
    assert slower == {"compared_at": "batch_1", "int8_ms": 35.2, "fp32_onnx_ms": 27.4, "int8_slower_than_fp32": True}
    line = timing.slower_warning("resnet", slower, "static_qdq")
    assert line is not None and "\n" not in line and line.startswith("warning: resnet: ")
    assert "smaller but slower" in line and "--quantization dynamic" in line and "35.2 vs 27.4 ms" in line
    # An ONNX source: the full form is the FP32 ONNX; faster, or slower only within the noise margins: no warning.
    onnx_only = {"edge_int8_onnxruntime": {"batch_1": 1.0}, "full_fp32_onnxruntime": {"batch_1": 2.0}}
    assert timing.int8_vs_fp32(onnx_only)["int8_slower_than_fp32"] is False
    within = {"edge_int8_onnxruntime": {"batch_1": 1.04}, "full_fp32_onnxruntime": {"batch_1": 1.0}}
    assert timing.slower_warning("m", timing.int8_vs_fp32(within), "dynamic") is None
    tiny = {"edge_int8_onnxruntime": {"batch_1": 0.112}, "full_fp32_onnxruntime": {"batch_1": 0.096}}
    assert timing.int8_vs_fp32(tiny)["int8_slower_than_fp32"] is False  # 16 us: noise at this size
    assert timing.int8_vs_fp32({"edge_int8_onnxruntime": {"batch_1": 1.0}}) is None
    assert timing.slower_warning("m", None, "dynamic") is None


def test_task_gates_and_overrides() -> None:
    ref = {"s": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])}
    cand = {"s": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])}
    metrics = task_fidelity.measure("classification", ref, cand, "s", np.array([0, 1, 0, 1]))
    assert metrics["top1_agreement"] == 0.75 and metrics["accuracy_drop_points"] == 25.0
    limits = task_fidelity.gates_for("classification")
    assert task_fidelity.misses(metrics, limits) == ["top1_agreement 0.75 < 0.97", "accuracy_drop_points 25 > 1"]
    assert task_fidelity.gates_for("generic", ["relative_error_max=0.1"]) == {"relative_error_max": 0.1}
    with pytest.raises(ImportRefused, match="NAME one of relative_error_max"):
        task_fidelity.gates_for("generic", ["cosine_mean_min=0.9"])
    assert task_fidelity.measure("generic", ref, ref, None, None) == {"relative_error": 0.0}


def test_confidence_of_a_logits_classifier_and_no_image_range_for_imports() -> None:
    manifest = {"name": "net", "version": "1", "task": "classification", "import": {},
                "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 2]}],
                "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                            {"name": "logits", "datatype": "FP32", "shape": [-1, 2]}],
                "classification": {"output": "logits", "scores": "logits"}}
    model = LoadedModel(Path("."), manifest)
    confidence = model.confidence({"label": np.zeros(1), "logits": np.array([[0.0, np.log(3.0)]])})
    assert confidence == pytest.approx([0.75])
    # An imported input named "image" is not held to the digits range 0..16.
    validate_inputs("net", model.inputs, {"image": np.full((1, 2), 300.0, np.float32)})
