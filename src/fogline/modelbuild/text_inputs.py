"""Text models for ``fogline models import --tokenizer``: token-id inputs served as BYTES text.

A model whose inputs are all token tensors (``input_ids``, ``attention_mask``, ``token_type_ids``, as
present; int64, ``[batch, tokens]``) can take text on the wire when the import is given its Hugging
Face ``tokenizer.json`` (a file, or a directory holding one). The version then declares one input,
``text`` BYTES ``[-1]`` (as ``minilm`` does), keeps the token names as the manifest's ``feed`` (what
the runtime passes the model, in order), and ships the tokenizer as the ``tokenizer`` artifact; both
runtimes tokenize with ``fogline.models.text.TextEncoder``, padding each batch to its longest row.

Calibration and evaluation files of a text model hold sentences instead of token ids: an array
``text`` (numpy ``str`` or ``bytes``, one sentence per row; optional ``labels``). Without a file the
import uses fogline's own sentence set (``modelbuild/data/sentences.txt``). ``TextDataset`` has the
interface of ``calibration.Dataset`` and tokenizes each batch as the runtimes would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fogline.modelbuild.calibration import LABELS
from fogline.modelbuild.import_errors import ImportRefused
from fogline.models.spec import TensorSpec
from fogline.models.text import TextEncoder

#: The token tensors a text model may take (what ``TextEncoder.encode`` returns).
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: The one input a text model declares on the wire.
TEXT = "text"
TEXT_SPEC = TensorSpec(TEXT, "BYTES", (-1,))
TOKENIZER_FILE = "tokenizer.json"


def tokenizer_file(path: Path) -> Path:
    """``path`` itself, or ``path/tokenizer.json`` for a directory; ``ImportRefused`` when absent."""
    found = path / TOKENIZER_FILE if path.is_dir() else path
    if not found.is_file():
        raise ImportRefused(f"--tokenizer {path}: no {TOKENIZER_FILE} there (give a Hugging Face tokenizer.json "
                            "or the directory holding it)")
    return found


def open_encoder(path: Path) -> TextEncoder:
    """The encoder the runtimes will use; ``ImportRefused`` when the file is not a tokenizer."""
    try:
        return TextEncoder(path)
    except Exception as exc:  # tokenizers raises a plain Exception on a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImportRefused(f"--tokenizer {path}: not a readable Hugging Face tokenizer.json ({first})") from None


def check_token_inputs(inputs: Sequence[TensorSpec], source: Path) -> None:
    """Refuse a model whose inputs are not all int64 ``[batch, tokens]`` token tensors."""
    for spec in inputs:
        if spec.name not in TOKEN_INPUTS or spec.datatype != "INT64" or len(spec.shape) != 2:
            raise ImportRefused(
                f"{source}: --tokenizer needs a model whose inputs are token tensors ({', '.join(TOKEN_INPUTS)}; "
                f"INT64 [batch, tokens]); input {spec.name!r} is {spec.datatype} {list(spec.shape)}")
    if "input_ids" not in {s.name for s in inputs}:
        raise ImportRefused(f"{source}: --tokenizer needs a model input named 'input_ids'; the inputs are "
                            f"{[s.name for s in inputs]}")


def read_texts(path: Path | str, arrays: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray | None]:
    """The sentences (and labels) of a text calibration / evaluation file; ``ImportRefused`` otherwise."""
    unknown = sorted(set(arrays) - {TEXT, LABELS})
    if TEXT not in arrays or unknown:
        raise ImportRefused(f"{path}: a text model's file holds {TEXT!r} (one sentence per row) and optional "
                            f"{LABELS!r}; this one has {sorted(arrays)}")
    array = np.asarray(arrays[TEXT])
    if array.ndim != 1 or array.shape[0] == 0 or array.dtype.kind not in "US":
        raise ImportRefused(f"{path}: {TEXT!r} must be a non-empty 1-D array of strings, got {array.dtype} "
                            f"{list(array.shape)}")
    try:
        texts = [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.tolist()]
    except UnicodeDecodeError as exc:
        raise ImportRefused(f"{path}: {TEXT!r} holds bytes that are not UTF-8 ({exc.reason})") from None
    labels = arrays.get(LABELS)
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != len(texts) or labels.dtype.kind not in "iu":
            raise ImportRefused(f"{path}: {LABELS!r} must be {len(texts)} integer class ids (one per row), got "
                                f"{labels.dtype} {list(labels.shape)}")
        labels = labels.astype(np.int64)
    return texts, labels


class TextDataset:
    """Sentences standing in for a model's token inputs; each batch is tokenized as the runtimes do."""

    def __init__(self, texts: Sequence[str], labels: np.ndarray | None, origin: str, encoder: TextEncoder,
                 names: Sequence[str]) -> None:
        self.texts = list(texts)
        self.labels = labels
        self.origin = origin
        self.encoder = encoder
        self.names = list(names)

    @property
    def rows(self) -> int:
        return len(self.texts)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The model's token inputs for ``texts`` (padded to the longest)."""
        tokens = self.encoder.encode(texts)
        return {name: tokens[name] for name in self.names}

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        return [self.encode(self.texts[i : i + size]) for i in range(0, self.rows, size)]

    def head(self, rows: int) -> dict[str, np.ndarray]:
        return self.encode(self.texts[:rows])

    def wire(self, rows: int) -> dict[str, np.ndarray]:
        """The first ``rows`` sentences as the v2 BYTES tensor a client sends."""
        return {TEXT: np.array([t.encode("utf-8") for t in self.texts[:rows]], dtype=object)}


def dataset(path: Path | None, arrays: Mapping[str, np.ndarray] | None, encoder: TextEncoder,
            names: Sequence[str]) -> TextDataset:
    """The sentences of ``path`` (already read into ``arrays``), or fogline's sentence set when None."""
    if path is None or arrays is None:
        from fogline.modelbuild.fidelity import DATA_DIR, load_sentences

        return TextDataset(load_sentences(), None, f"fogline sentence set ({DATA_DIR.name}/sentences.txt)",
                           encoder, names)
    texts, labels = read_texts(path, arrays)
    return TextDataset(texts, labels, str(path), encoder, names)


def example_tokens(encoder: TextEncoder, arrays: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Token arrays of a few sentences (every token tensor), to trace / export a torch source."""
    texts = ["an example sentence for tracing", "short"]
    if arrays is not None and TEXT in arrays:
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in np.asarray(arrays[TEXT])[:2].tolist()]
        texts = texts if len(texts) == 2 else [*texts, "short"]
    return encoder.encode(texts)
