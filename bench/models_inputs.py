"""The inputs ``bench.models`` times a model on, made from its manifest's input signature alone.

| signature | columns | rows |
| --- | --- | --- |
| one BYTES ``text`` input (a model with a tokenizer) | ``1``, ``8``, ``8 long``, ``8 real`` | fogline's sentence set (``src/fogline/modelbuild/data/sentences.txt``): the median-length sentence(s), the 8 longest, and every consecutive group of 8 in file order |
| tensors | ``1``, ``8`` | seeded random rows shaped as the signature: uniform in the input's ``value_range`` when the manifest gives one, else standard normal (floats) or zeros (integers); a dynamic dimension past the batch is ``FREE_DIM`` |

Speed gates read ``8 real`` for a text model (batches as they come, each padded to its longest
sentence, as the edge runtime pads them) and ``8`` otherwise.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Size given to a dynamic dimension other than the batch (sequence length, image side...).
FREE_DIM = 16
SEED = 0


@dataclass
class Workload:
    """Input batches per column, the column speed gates read, and a line saying what they are."""

    feeds: dict[str, list[dict[str, np.ndarray]]]
    gate_column: str
    description: str
    tokens: dict[str, list[int]] = field(default_factory=dict)


def is_text(manifest: dict[str, Any]) -> bool:
    inputs = manifest["inputs"]
    return len(inputs) == 1 and inputs[0]["datatype"] == "BYTES"


def workload(version_dir: Path, manifest: dict[str, Any]) -> Workload:
    """The batches to time the model of ``manifest`` (in ``version_dir``) on."""
    return _text(version_dir, manifest) if is_text(manifest) else _tensors(manifest)


def _text(version_dir: Path, manifest: dict[str, Any]) -> Workload:
    from fogline.modelbuild.fidelity import load_sentences
    from fogline.models.spec import decode_texts
    from fogline.models.text import encoder_for

    name = manifest["inputs"][0]["name"]
    ordered = load_sentences()
    texts = sorted(ordered, key=len)
    mid = len(texts) // 2
    pick = {"1": [texts[mid : mid + 1]], "8": [texts[mid - 4 : mid + 4]], "8 long": [texts[-8:]],
            "8 real": [ordered[i : i + 8] for i in range(0, len(ordered) - 7, 8)]}  # fmt: skip
    feeds = {col: [{name: np.array([t.encode() for t in ts], dtype=object)} for ts in groups]
             for col, groups in pick.items()}  # fmt: skip
    encoder = encoder_for(version_dir, manifest)
    tokens: dict[str, list[int]] = {}
    if encoder is not None:
        tokens = {col: [int(encoder.encode(decode_texts(f[name]))["input_ids"].shape[1]) for f in fs]
                  for col, fs in feeds.items()}  # fmt: skip
    real = sorted(tokens.get("8 real", [0]))
    description = (
        f"Batch 1 and 8: median-length sentences of `sentences.txt` ({_first(tokens, '8')} tokens padded); batch 8 "
        f"long: the 8 longest ({_first(tokens, '8 long')} tokens); batch 8 real: all {len(pick['8 real'])} "
        f"consecutive groups of 8 of the file, each padded to its longest ({real[0]}-{real[-1]} tokens, median "
        f"{statistics.median(real):g}); median over groups. Speed gates (a reference build's) read batch 8 real."
    )
    return Workload(feeds, "8 real", description, tokens)


def _first(tokens: dict[str, list[int]], column: str) -> str:
    values = tokens.get(column)
    return str(values[0]) if values else "?"


def _tensors(manifest: dict[str, Any]) -> Workload:
    rng = np.random.default_rng(SEED)
    feeds: dict[str, list[dict[str, np.ndarray]]] = {}
    shown = []
    for rows in (1, 8):
        feed = {spec["name"]: _rows(spec, rows, rng) for spec in manifest["inputs"]}
        feeds[str(rows)] = [feed]
    for spec in manifest["inputs"]:
        shape = "[" + ",".join("N" if i == 0 else str(FREE_DIM if d == -1 else d)
                               for i, d in enumerate(spec["shape"])) + "]"  # fmt: skip
        shown.append(f"`{spec['name']}` {spec['datatype']} {shape} {_values(spec)}")
    description = f"Batch 1 and 8: seeded random rows ({'; '.join(shown)})."
    return Workload(feeds, "8", description)


def _rows(spec: dict[str, Any], rows: int, rng: np.random.Generator) -> np.ndarray:
    from fogline.models.spec import TensorSpec

    dtype = TensorSpec.from_dict(spec).dtype
    shape = [rows, *(FREE_DIM if d == -1 else d for d in spec["shape"][1:])]
    low_high = spec.get("value_range")
    if low_high is not None:
        return rng.uniform(low_high[0], low_high[1], shape).astype(dtype)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _values(spec: dict[str, Any]) -> str:
    if spec.get("value_range") is not None:
        low, high = spec["value_range"]
        return f"uniform in [{low:g}, {high:g}]"
    return "standard normal" if spec["datatype"].startswith("FP") else "zeros"
