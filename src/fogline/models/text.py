"""Text -> token-id tensors for ``minilm``, with the model's own ``tokenizer.json``.

Both runtimes (onnxruntime on the edge, torch in the cloud) tokenize through this class so they see
identical ids. It needs the ``tokenizers`` library and numpy only. Sequences are cut at
``max_length`` tokens (256, what sentence-transformers uses for all-MiniLM-L6-v2) and a batch is
padded to its longest member, never to a fixed length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fogline.errors import ConfigError

#: Token limit per sentence; all-MiniLM-L6-v2 was trained with 256 (sentence_bert_config.json).
MAX_TOKENS = 256


class TextEncoder:
    """Wraps a ``tokenizers.Tokenizer`` and turns a list of strings into int64 model inputs."""

    def __init__(self, tokenizer_json: Path, max_length: int = MAX_TOKENS) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        # The shipped file pads every batch to 128 tokens; pad to the longest row instead.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)
        pad_id = self._tokenizer.token_to_id("[PAD]")
        self._tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask`` and ``token_type_ids``, each int64 ``[batch, tokens]``."""
        encodings = self._tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        }


def encoder_for(version_dir: Path, manifest: dict) -> TextEncoder | None:
    """The tokenizer a model version's manifest names (artifact ``tokenizer``), or None for a model
    that takes tensors; a file that will not load is a ``ConfigError`` naming it."""
    name = manifest["artifacts"].get("tokenizer")
    if name is None:
        return None
    path = Path(version_dir) / name
    try:
        return TextEncoder(path)
    except Exception as exc:  # tokenizers raises a plain Exception on a bad file
        raise ConfigError(f"{path}: cannot load the tokenizer ({exc})") from None
