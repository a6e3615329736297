"""The built models loaded through both runtimes: shapes, agreement, validation, export fidelity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fogline.errors import InvalidInput
from fogline.models.edge_runtime import EdgeModel
from fogline.models.full_runtime import FullModel
from fogline.models.repository import ModelRepository

pytestmark = [pytest.mark.integration, pytest.mark.models]

SENTENCES = [
    "The ferry was cancelled because of the storm.",
    "Boats stopped sailing when the gale arrived.",
    "My spreadsheet formula returns the wrong total.",
    "Ok",
]


@pytest.fixture(scope="module")
def repo(model_repo: Path) -> ModelRepository:
    return ModelRepository(model_repo)


@pytest.fixture(scope="module")
def digits_test_images() -> tuple[np.ndarray, np.ndarray]:
    from fogline.modelbuild.build_digits import CONFIG
    from fogline.models.digits_net import load_digits_split

    data = load_digits_split(CONFIG)
    return data.test_x, data.test_y


def _texts(items: list[str]) -> np.ndarray:
    return np.array([s.encode() for s in items], dtype=object)


def test_minilm_edge_and_full_agree_and_are_normalised(repo: ModelRepository) -> None:
    edge = EdgeModel.load(repo.resolve("minilm"))
    full = FullModel.load(repo.resolve("minilm"))
    assert (edge.name, edge.version) == ("minilm", "1")
    assert [s.to_dict() for s in edge.outputs] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    e = edge.predict({"text": _texts(SENTENCES)})["embedding"]
    f = full.predict({"text": _texts(SENTENCES)})["embedding"]
    assert e.shape == f.shape == (4, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    assert ((e * f).sum(axis=1) > 0.97).all()
    # Paraphrases sit closer together than unrelated sentences, in both tiers.
    for emb in (e, f):
        assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
    assert edge.confidence({"embedding": e}) is None


def test_minilm_full_model_matches_sentence_transformers(repo: ModelRepository) -> None:
    from sentence_transformers import SentenceTransformer

    from fogline.modelbuild.build_minilm import package_model_dir

    reference = SentenceTransformer(str(package_model_dir()), device="cpu")
    expected = reference.encode(SENTENCES, normalize_embeddings=True)
    got = FullModel.load(repo.resolve("minilm")).predict({"text": _texts(SENTENCES)})["embedding"]
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_minilm_batch_result_does_not_depend_on_padding(repo: ModelRepository) -> None:
    edge = EdgeModel.load(repo.resolve("minilm"), artifact="reference_onnx")
    alone = edge.predict({"text": _texts(SENTENCES[3:])})["embedding"]
    batched = edge.predict({"text": _texts(SENTENCES)})["embedding"][3:]
    np.testing.assert_allclose(alone, batched, atol=1e-5)


def test_onnx_fp32_matches_torch_before_quantization(repo: ModelRepository, digits_test_images) -> None:
    images, _ = digits_test_images
    digits_dir = repo.resolve("digits")
    onnx_probs = EdgeModel.load(digits_dir, artifact="reference_onnx").predict({"image": images})
    torch_probs = FullModel.load(digits_dir).predict({"image": images})
    np.testing.assert_allclose(onnx_probs["probabilities"], torch_probs["probabilities"], atol=1e-5)
    texts = _texts([*SENTENCES, "a much longer sentence " * 30])
    minilm_dir = repo.resolve("minilm")
    onnx_emb = EdgeModel.load(minilm_dir, artifact="reference_onnx").predict({"text": texts})["embedding"]
    torch_emb = FullModel.load(minilm_dir).predict({"text": texts})["embedding"]
    np.testing.assert_allclose(onnx_emb, torch_emb, atol=1e-5)


def test_digits_edge_model_classifies_held_out_images(repo: ModelRepository, digits_test_images) -> None:
    images, labels = digits_test_images
    edge = EdgeModel.load(repo.resolve("digits"), intra_op_threads=1)
    out = edge.predict({"image": images})
    probs = out["probabilities"]
    assert probs.shape == (len(images), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    assert (probs.argmax(axis=1) == labels).mean() > 0.95
    conf = edge.confidence(out)
    assert conf.shape == (len(images),) and ((conf > 0) & (conf <= 1.0 + 1e-6)).all()
    full = FullModel.load(repo.resolve("digits"))
    assert (full.predict({"image": images})["probabilities"].argmax(1) == labels).mean() > 0.95


@pytest.mark.parametrize("runtime", ["edge", "full"])
def test_loaders_refuse_wrong_dtype_and_shape(repo: ModelRepository, runtime: str) -> None:
    cls = EdgeModel if runtime == "edge" else FullModel
    digits = cls.load(repo.resolve("digits"))
    with pytest.raises(InvalidInput, match="dtype float64"):
        digits.predict({"image": np.zeros((1, 8, 8))})
    with pytest.raises(InvalidInput, match=r"shape \[1, 8\]"):
        digits.predict({"image": np.zeros((1, 8), np.float32)})
    with pytest.raises(InvalidInput, match=r"unexpected input tensor\(s\) \['pixels'\]"):
        digits.predict({"pixels": np.zeros((1, 8, 8), np.float32)})
    minilm = cls.load(repo.resolve("minilm"))
    with pytest.raises(InvalidInput, match="expected BYTES"):
        minilm.predict({"text": np.array([1, 2], dtype=np.int64)})
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        minilm.predict({"text": np.array([b"\xc3"], dtype=object)})


def test_full_model_loads_on_cpu_device_explicitly(repo: ModelRepository) -> None:
    model = FullModel.load(repo.resolve("digits"), device="cpu")
    assert model.device == torch.device("cpu")


def test_edge_runtime_never_imports_torch(repo_root: Path, model_repo: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from fogline.models.edge_runtime import EdgeModel\n"
        "from fogline.models.repository import ModelRepository\n"
        f"repo = ModelRepository({str(model_repo)!r})\n"
        "m = EdgeModel.load(repo.resolve('minilm'))\n"
        "m.predict({'text': np.array([b'hello'], dtype=object)})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
