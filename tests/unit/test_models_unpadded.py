"""fogline.modelbuild.unpadded: the padding-free edge network computes what the cloud network computes."""

from __future__ import annotations

import pytest
import torch

from fogline.modelbuild.unpadded import UnpaddedMiniLM
from fogline.models.minilm_net import BertConfig, MiniLMEmbedder

pytestmark = pytest.mark.unit

SMALL = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=16)  # fmt: skip


def _batch(lengths: list[int], seq: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, SMALL.vocab_size, (len(lengths), seq), generator=gen)
    mask = torch.zeros(len(lengths), seq, dtype=torch.int64)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids = ids * mask  # padding id 0, as the tokenizer pads
    return ids, mask, torch.zeros_like(ids)


@pytest.mark.parametrize("lengths", [[7, 3, 1, 7], [5], [2, 6]])
def test_same_embeddings_as_the_padded_network(lengths: list[int]) -> None:
    torch.manual_seed(0)
    padded = MiniLMEmbedder(SMALL).eval()
    unpadded = UnpaddedMiniLM.from_padded(padded)
    ids, mask, types = _batch(lengths, max(lengths))
    with torch.inference_mode():
        want, got = padded(ids, mask, types), unpadded(ids, mask, types)
    assert got.shape == want.shape == (len(lengths), SMALL.hidden_size)
    assert torch.allclose(got, want, atol=1e-5)


def test_a_row_does_not_depend_on_how_much_padding_its_batch_has() -> None:
    torch.manual_seed(0)
    model = UnpaddedMiniLM.from_padded(MiniLMEmbedder(SMALL).eval())
    ids, mask, types = _batch([3, 9], 9)
    with torch.inference_mode():
        alone = model(ids[:1, :3], mask[:1, :3], types[:1, :3])
        in_batch = model(ids, mask, types)[:1]
    assert torch.allclose(alone, in_batch, atol=1e-5)


def test_parameter_names_match_the_cloud_network() -> None:
    assert set(UnpaddedMiniLM(SMALL).state_dict()) == set(MiniLMEmbedder(SMALL).state_dict())
