"""``fogline models import --tokenizer``: the tokenizer file, the token-input check, text calibration
files, per-batch tokenization, and the refusals (one ``ImportRefused`` line, nothing written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fogline.modelbuild import text_inputs
from fogline.modelbuild.build_minilm import package_model_dir
from fogline.modelbuild.import_errors import ImportRefused
from fogline.modelbuild.importer import ImportOptions, import_model
from fogline.models.spec import TensorSpec

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def encoder():
    return text_inputs.open_encoder(text_inputs.tokenizer_file(package_model_dir()))


def test_tokenizer_is_found_in_a_directory_or_given_as_the_file(tmp_path) -> None:
    shipped = package_model_dir() / "tokenizer.json"
    assert text_inputs.tokenizer_file(package_model_dir()) == shipped
    assert text_inputs.tokenizer_file(shipped) == shipped
    with pytest.raises(ImportRefused, match=r"no tokenizer\.json there"):
        text_inputs.tokenizer_file(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ImportRefused, match=r"not a readable Hugging Face tokenizer\.json"):
        text_inputs.open_encoder(tmp_path / "tokenizer.json")


@pytest.mark.parametrize(("specs", "message"), [
    ([TensorSpec("x", "FP32", (-1, 4))], "input 'x' is FP32"),
    ([TensorSpec("input_ids", "INT32", (-1, -1))], "input 'input_ids' is INT32"),
    ([TensorSpec("input_ids", "INT64", (-1,))], "input 'input_ids' is INT64 \\[-1\\]"),
    ([TensorSpec("attention_mask", "INT64", (-1, -1))], "needs a model input named 'input_ids'"),
])
def test_token_inputs_are_int64_batch_by_tokens(specs, message) -> None:
    with pytest.raises(ImportRefused, match=message):
        text_inputs.check_token_inputs(specs, Path("m.onnx"))
    text_inputs.check_token_inputs([TensorSpec("input_ids", "INT64", (-1, -1)),
                                    TensorSpec("attention_mask", "INT64", (-1, -1))], Path("m.onnx"))


@pytest.mark.parametrize(("arrays", "message"), [
    ({"input_ids": np.zeros((2, 3), np.int64)}, "holds 'text'"),
    ({"text": np.array(["a"]), "extra": np.zeros(1)}, "holds 'text'"),
    ({"text": np.array([["a", "b"]])}, "non-empty 1-D array of strings"),
    ({"text": np.zeros(3, np.float32)}, "non-empty 1-D array of strings"),
    ({"text": np.array([b"\xff\xfe"])}, "not UTF-8"),
    ({"text": np.array(["a", "b"]), "labels": np.array([1])}, "2 integer class ids"),
])
def test_text_files_are_checked(arrays, message) -> None:
    with pytest.raises(ImportRefused, match=message):
        text_inputs.read_texts("f.npz", arrays)


def test_text_rows_are_read_from_str_or_bytes() -> None:
    texts, labels = text_inputs.read_texts("f.npz", {"text": np.array([b"caf\xc3\xa9", b"b"]),
                                                      "labels": np.array([0, 1], np.int32)})
    assert texts == ["café", "b"] and labels.dtype == np.int64


def test_each_batch_is_tokenized_to_its_longest_row_with_the_model_inputs_only(encoder) -> None:
    rows = text_inputs.TextDataset(["a", "a much longer sentence than the first", "b", "c"], None, "t", encoder,
                                   ["input_ids", "attention_mask"])
    first, second = rows.batches(2)
    assert set(first) == {"input_ids", "attention_mask"} and first["input_ids"].dtype == np.int64
    assert first["input_ids"].shape[1] > second["input_ids"].shape[1] == 3  # [CLS] x [SEP]
    assert rows.head(1)["attention_mask"].tolist() == [[1, 1, 1]]
    assert rows.wire(2)["text"].tolist() == [b"a", b"a much longer sentence than the first"]
    default = text_inputs.dataset(None, None, encoder, ["input_ids"])
    assert default.rows > 50 and "sentences.txt" in default.origin


def _float_model(path: Path) -> None:
    from onnx import helper, save

    weight = helper.make_tensor("w", 1, [3, 3], np.eye(3, dtype=np.float32).ravel().tolist())
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, ["N", 3])],
                              [helper.make_tensor_value_info("y", 1, ["N", 3])], initializer=[weight])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_import_refuses_a_tokenizer_for_a_model_without_token_inputs(tmp_path) -> None:
    _float_model(tmp_path / "m.onnx")
    options = ImportOptions(name="m", source=tmp_path / "m.onnx", models_dir=tmp_path / "repo",
                            tokenizer=package_model_dir(), progress=False)
    with pytest.raises(ImportRefused, match="--tokenizer needs a model whose inputs are token tensors"):
        import_model(options)
    assert not (tmp_path / "repo" / "m").exists()
