"""The TorchScript the build saves for the cloud must run on any device, not only where it was traced."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from fogline.modelbuild.onnx_export import save_torchscript  # noqa: E402
from fogline.models.minilm_net import BertConfig, MiniLMEmbedder  # noqa: E402

pytestmark = pytest.mark.unit


def test_a_traced_minilm_holds_no_device_constant_and_counts_positions_per_row(tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    model = MiniLMEmbedder(cfg).eval()
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    path = tmp_path / "m.pt"
    save_torchscript(model, (ids, mask, types), path)
    loaded = torch.jit.load(str(path))
    graph = str(loaded.inlined_graph)
    assert 'value="cpu"' not in graph, "a device constant was traced into the graph"
    # Other lengths than the traced one still get positions 0..n-1 (the trace is not fixed to 7 tokens).
    longer = torch.randint(0, 50, (3, 11))
    with torch.no_grad():
        want = model(longer, torch.ones_like(longer), torch.zeros_like(longer))
        got = loaded(longer, torch.ones_like(longer), torch.zeros_like(longer))
    assert torch.allclose(want, got, atol=1e-6)
