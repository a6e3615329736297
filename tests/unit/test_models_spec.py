"""Input validation shared by the edge and full runtimes (fogline.models.spec), and the fidelity maths."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fogline.errors import InvalidInput
from fogline.modelbuild.fidelity import (
    GATES,
    effective_gates,
    embedding_fidelity,
    gate_failures,
    gate_misses,
    nearest_neighbours,
    parse_gate,
)
from fogline.modelbuild.verify import VerifyResult
from fogline.models.spec import DIGITS_INPUTS, MINILM_INPUTS, TensorSpec, validate_inputs

pytestmark = pytest.mark.unit


def _text(*items: bytes) -> np.ndarray:
    return np.array(list(items), dtype=object)


def test_tensor_spec_round_trips_and_matches_variable_dims() -> None:
    spec = TensorSpec("image", "FP32", (-1, 8, 8))
    assert TensorSpec.from_dict(spec.to_dict()) == spec
    assert spec.accepts_shape((3, 8, 8))
    assert not spec.accepts_shape((3, 8))
    assert not spec.accepts_shape((3, 8, 9))
    with pytest.raises(ValueError, match="unsupported datatype"):
        TensorSpec("x", "FLOAT", (1,))


def test_valid_batches_pass_through() -> None:
    images = np.zeros((2, 8, 8), dtype=np.float32)
    assert validate_inputs("digits", DIGITS_INPUTS, {"image": images})["image"] is images
    texts = _text(b"hello", "caf\u00e9".encode())
    assert validate_inputs("minilm", MINILM_INPUTS, {"text": texts})["text"] is texts


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image": np.zeros((2, 8, 8), dtype=np.float64)}, "dtype float64, expected FP32"),
        ({"image": np.zeros((2, 64), dtype=np.float32)}, r"shape \[2, 64\], expected \[N,8,8\]"),
        ({"image": np.zeros((0, 8, 8), dtype=np.float32)}, "empty batch"),
        ({"image": np.full((1, 8, 8), 17.0, dtype=np.float32)}, "0..16"),
        ({"image": np.full((1, 8, 8), np.nan, dtype=np.float32)}, "NaN"),
        ({}, "missing input tensor 'image'"),
        ({"image": np.zeros((1, 8, 8), np.float32), "extra": np.zeros(1)}, "unexpected input"),
        ({"image": [[0.0] * 8] * 8}, "must be a numpy array"),
    ],
)
def test_digits_refuses_bad_images(inputs: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_inputs("digits", DIGITS_INPUTS, inputs)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array(["a string, not bytes"]), r"dtype <U\d+, expected BYTES"),
        (_text(b"ok", "not bytes"), "element 1 of 'text' is str"),
        (_text(b"\xff\xfe broken"), "not valid UTF-8"),
        (_text(b"x" * (64 * 1024 + 1)), "the limit is 65536"),
        (np.array([[b"a"], [b"b"]], dtype=object), r"expected \[N\]"),
    ],
)
def test_minilm_refuses_bad_text(array: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_inputs("minilm", MINILM_INPUTS, {"text": array})


def test_batch_limit() -> None:
    with pytest.raises(InvalidInput, match="exceeds the limit"):
        validate_inputs("digits", DIGITS_INPUTS, {"image": np.zeros((1025, 8, 8), np.float32)})


def test_fidelity_of_identical_and_perturbed_embeddings() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(50, 16))
    same = embedding_fidelity(ref, ref.copy())
    assert same["cosine_mean"] == pytest.approx(1.0) and same["nn_agreement"] == 1.0
    noisy = embedding_fidelity(ref, ref + rng.normal(scale=2.0, size=ref.shape))
    assert noisy["cosine_mean"] < 0.9 and noisy["nn_agreement"] < 1.0
    failures = gate_failures("minilm", noisy)
    assert any("mean cosine" in f for f in failures)


def test_nearest_neighbours_never_picks_self() -> None:
    e = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert list(nearest_neighbours(e)) == [1, 0, 1]


def test_digits_gate_counts_points() -> None:
    ok = {"fp32_onnx_accuracy": 0.98, "int8_accuracy": 0.975}
    bad = {"fp32_onnx_accuracy": 0.98, "int8_accuracy": 0.965}
    assert gate_failures("digits", ok) == []
    assert "1.50 points below" in gate_failures("digits", bad)[0]


def test_gate_lines_name_the_figure_and_the_gate() -> None:
    misses = gate_misses("minilm", {"cosine_mean": 0.99, "nn_agreement": 0.9})
    assert misses == ["INT8 mean cosine 0.9900 is below the gate 0.995",
                      "INT8 nearest-neighbour agreement 0.900 is below the gate 0.93"]  # fmt: skip
    assert gate_misses("minilm", {"cosine_mean": 0.999, "nn_agreement": 0.95}) == []
    assert gate_misses("minilm", {"cosine_mean": 0.999, "nn_agreement": 0.95}, {"cosine_mean_min": 1.0})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("digits.accuracy_drop_points_max=2", "looser than the release gate 1"),
        ("minilm.cosine_mean_min=0.9", "looser than the release gate 0.995"),
        ("minilm.cosine_mean_min=nan", "looser"),
        ("resnet.top1_min=0.9", "no gates for model 'resnet'"),
        ("minilm.top1_min=0.9", "its gates: cosine_mean_min, nn_agreement_min"),
        ("minilm.cosine_mean_min=high", "expected a number"),
        ("minilm=0.9", "expected MODEL.GATE=VALUE"),
    ],
)
def test_a_gate_override_must_be_stricter_and_known(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_gate(text)


def test_stricter_gates_replace_the_release_values() -> None:
    stricter = [parse_gate("minilm.cosine_mean_min=0.999"), parse_gate("digits.accuracy_drop_points_max=0")]
    gates = effective_gates(stricter)
    assert gates["minilm"] == {"cosine_mean_min": 0.999, "nn_agreement_min": 0.93}
    assert gates["digits"] == {"accuracy_drop_points_max": 0.0}
    assert GATES["minilm"]["cosine_mean_min"] == 0.995  # the release gates are left alone


def test_verify_line_says_when_a_model_was_accepted_below_its_gate(tmp_path) -> None:
    result = VerifyResult("digits", "1", tmp_path, problems=["digits: INT8 accuracy"], accepted_below_gate=True)
    assert result.summary() == "digits 1: FAILED (built below its gate with --accept-fidelity): digits: INT8 accuracy"


def test_the_verify_line_follows_the_figures_not_the_models_name() -> None:
    from fogline.modelbuild.verify import describe_metrics

    reference = {"full_accuracy": 0.98, "fp32_onnx_accuracy": 0.98, "int8_accuracy": 0.97, "int8": {}}
    assert describe_metrics(reference).startswith("accuracy torch FP32 98.00%")
    assert "mean cosine 0.9983" in describe_metrics({"int8": {"cosine_mean": 0.9983, "nn_agreement": 0.95}})
    # a user's import, whatever it is called, prints the figures its import measured
    own = describe_metrics({"int8": {"top1_agreement": 0.99, "tries": "-"}})
    assert own == "imported; INT8 at import: top1_agreement 0.99"
    assert describe_metrics({}) == "fidelity not measured"
