"""The checks a model version passes before a hot swap (``fogline.serving.model_checks``), on fake models."""

from __future__ import annotations

import numpy as np
import pytest

from fogline.models.spec import TensorSpec
from fogline.serving.model_checks import VersionRefused, check_model, check_outputs, sample_inputs

pytestmark = pytest.mark.unit

IMAGE = TensorSpec("image", "FP32", (-1, 8, 8), (0.0, 16.0))
PROBS = TensorSpec("probabilities", "FP32", (-1, 10))


class Fake:
    def __init__(self, version="2", inputs=(IMAGE,), outputs=(PROBS,), answer=None):
        self.name, self.version = "digits", version
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.answer = answer or (lambda rows: {"probabilities": np.full((rows, 10), 0.1, np.float32)})
        self.seen = None

    def predict(self, inputs):
        self.seen = inputs
        return self.answer(len(inputs["image"]))


def reason(model, serving=None):
    with pytest.raises(VersionRefused) as info:
        check_model(model, serving)
    return info.value.reason, str(info.value)


def test_a_good_version_passes_on_a_sample_built_from_its_signature():
    model = Fake()
    check_model(model, Fake(version="1"))
    assert model.seen["image"].shape == (2, 8, 8) and model.seen["image"].dtype == np.float32


def test_sample_inputs_text_and_ranges():
    text = sample_inputs([TensorSpec("text", "BYTES", (-1,))], rows=3)["text"]
    assert text.shape == (3,) and text.dtype == object and isinstance(text[0], bytes)
    low = sample_inputs([TensorSpec("x", "INT64", (-1, 2), (5.0, 9.0))])["x"]
    assert low.dtype == np.int64 and (low == 5).all()


@pytest.mark.parametrize("model, expected", [
    (Fake(outputs=(TensorSpec("probabilities", "FP32", (-1, 11)),)), "signature"),
    (Fake(inputs=(TensorSpec("image", "FP32", (-1, 64)),)), "signature"),
    (Fake(answer=lambda rows: 1 / 0), "warmup"),
    (Fake(answer=lambda rows: {"other": np.zeros((rows, 10), np.float32)}), "output"),
    (Fake(answer=lambda rows: {"probabilities": np.zeros((rows, 10), np.float64)}), "output"),
    (Fake(answer=lambda rows: {"probabilities": np.zeros((rows, 9), np.float32)}), "output"),
    (Fake(answer=lambda rows: {"probabilities": np.full((rows, 10), np.nan, np.float32)}), "nan"),
])
def test_each_failing_check_has_its_reason(model, expected):
    got, message = reason(model, Fake(version="1"))
    assert got == expected and message


def test_without_a_serving_version_any_signature_is_taken():
    check_model(Fake(outputs=(TensorSpec("probabilities", "FP32", (-1, 10)),)), None)


def test_the_batch_dimension_must_match_the_rows():
    with pytest.raises(VersionRefused, match="shape"):
        check_outputs(Fake(), {"probabilities": np.zeros((3, 10), np.float32)}, rows=2)


def test_the_hash_check_reads_only_the_roles_asked_for(tmp_path):
    from fogline.models.repository import write_manifest
    from fogline.serving.model_checks import check_files

    version = tmp_path / "digits" / "2"
    (version / "full").mkdir(parents=True)
    (version / "model.int8.onnx").write_bytes(b"edge")
    (version / "full" / "weights").write_bytes(b"full")
    write_manifest(version, {"name": "digits", "version": "2", "inputs": [], "outputs": [],
                             "artifacts": {"edge": "model.int8.onnx", "full_weights": "full/weights"}})
    (version / "full" / "weights").unlink()  # an edge device holds only the edge files
    check_files(version, ("edge", "tokenizer"))
    with pytest.raises(VersionRefused, match="missing"):
        check_files(version)
    (version / "model.int8.onnx").write_bytes(b"EDGE")
    with pytest.raises(VersionRefused, match="sha256") as info:
        check_files(version, ("edge",))
    assert info.value.reason == "hash"
