"""The edge export of ``minilm`` that skips padding: per-token layers run on real tokens only.

A batch of sentences is padded to its longest member (``fogline.models.text``). The plain network then
computes every projection, GELU and LayerNorm for the padded positions too, and drops their results
at pooling. ``UnpaddedMiniLM`` computes the same function, but gathers the real tokens into one
``[1, tokens, hidden]`` matrix after the embeddings and keeps the per-token work (Q/K/V, output and
FFN projections, LayerNorms) on that matrix. Only the attention core, which needs the
``[batch, heads, seq, seq]`` layout, sees the padded shape: Q, K and V are gathered back into it
(padded slots get copies of their sentence's last real token, which the attention mask then
ignores) and the context is gathered into token rows again.

The outputs are the plain network's up to float rounding: a padded key gets weight at most e^-50
of a real key's (``MASK_BIAS``; its score is a copy of a real key's score), and padded queries only
produce rows that pooling ignores. What changes for INT8 is the cost:
the quantized matmuls see ``tokens`` rows instead of ``batch * longest`` rows, and the dynamic
activation scales are computed from real tokens only. Parameter names and the ONNX node names of
the projections (``/encoder/layer.0/output/dense/MatMul``) are those of ``MiniLMEmbedder``, so the
quantization recipe refers to the same nodes. Used only for the edge export; the cloud serves
``MiniLMEmbedder`` and the FP32 ONNX reference stays the plain export.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fogline.models.minilm_net import BertConfig, MiniLMEmbedder, _Attention, _Encoder, _Layer, _SelfAttention

#: Score added at padded key positions. ``MiniLMEmbedder`` uses -10000 (as Hugging Face BERT does);
#: here it is -50. Both give padded keys no weight in FP32: a padded key here is a copy of a real
#: key of the same sentence, so it gets at most e^-50 (2e-22) of that key's weight. But onnxruntime's Softmax takes a
#: slow path for inputs whose exponential underflows (below about -87): with -10000 the attention
#: softmax of a padded batch ran ~5x slower (measured, onnxruntime 1.32, 22-token batch of 8).
MASK_BIAS = -50.0

# Each class below subclasses its ``minilm_net`` counterpart and is called through the same module
# tree, so parameter names and the exported node names (``/encoder/layer.0/output/dense/MatMul``)
# stay those of ``MiniLMEmbedder``. ``rows`` is the ``[1, tokens, hidden]`` matrix of real tokens
# (kept 3-D so that each ``nn.Linear`` exports as MatMul + Add, not Gemm, which smoothing and the
# recipe target); ``keep`` and ``back`` map between it and the padded layout (see ``_index``).


def _index(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``keep``: flat padded positions of the real tokens; ``back``: for each flat padded position,
    its row in the token matrix. A padding position maps to the last real token of its own sentence
    (the running count of real tokens stops there), so padded slots hold copies of that token."""
    flat = attention_mask.reshape(-1)
    return torch.nonzero(flat).squeeze(1), torch.cumsum(flat, 0) - 1


def _to_padded(rows: torch.Tensor, back: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    return rows[0].index_select(0, back).view(batch, seq, rows.shape[-1])


def _to_rows(padded: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return padded.reshape(-1, padded.shape[-1]).index_select(0, keep).unsqueeze(0)


class _RowsSelfAttention(_SelfAttention):
    def forward(self, rows: torch.Tensor, mask_bias: torch.Tensor, keep: torch.Tensor, back: torch.Tensor):
        batch, seq = mask_bias.shape[0], mask_bias.shape[-1]
        q, k, v = (
            self._split(_to_padded(p(rows), back, batch, seq)) for p in (self.query, self.key, self.value)
        )
        scores = torch.matmul(q, k.transpose(-1, -2)) / (self.head_dim**0.5) + mask_bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return _to_rows(context.view(batch, seq, self.heads * self.head_dim), keep)


class _RowsAttention(_Attention):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__(cfg)
        self.self = _RowsSelfAttention(cfg)

    def forward(self, rows: torch.Tensor, mask_bias: torch.Tensor, keep: torch.Tensor, back: torch.Tensor):
        return self.output(self.self(rows, mask_bias, keep, back), rows)


class _RowsLayer(_Layer):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__(cfg)
        self.attention = _RowsAttention(cfg)

    def forward(self, rows: torch.Tensor, mask_bias: torch.Tensor, keep: torch.Tensor, back: torch.Tensor):
        rows = self.attention(rows, mask_bias, keep, back)
        return self.output(self.intermediate(rows), rows)


class _RowsEncoder(_Encoder):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__(cfg)
        self.layer = torch.nn.ModuleList(_RowsLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, rows: torch.Tensor, mask_bias: torch.Tensor, keep: torch.Tensor, back: torch.Tensor):
        for layer in self.layer:
            rows = layer(rows, mask_bias, keep, back)
        return rows


class UnpaddedMiniLM(MiniLMEmbedder):
    """``MiniLMEmbedder`` whose per-token layers run on the batch's real tokens only."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__(cfg)
        self.encoder = _RowsEncoder(cfg)

    @classmethod
    def from_padded(cls, model: MiniLMEmbedder) -> UnpaddedMiniLM:
        """A copy of ``model`` (same config and weights) with the padding-free forward."""
        twin = cls(model.config)
        twin.load_state_dict(model.state_dict(), strict=True)
        return twin.eval()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        batch, seq = input_ids.shape
        keep, back = _index(attention_mask)
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * MASK_BIAS
        rows = _to_rows(self.embeddings(input_ids, token_type_ids), keep)
        hidden = _to_padded(self.encoder(rows, mask_bias, keep, back), back, batch, seq)
        weights = attention_mask.to(torch.float32).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1, eps=1e-12)
