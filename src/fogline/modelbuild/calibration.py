"""Calibration and evaluation data for an import: ``.npz`` files keyed by input name.

A file holds one array per model input (its name as the key, rows along the first axis) and, for a
classifier, optionally ``labels`` (integer class per row). ``read_npz`` opens it (no pickles),
``match`` checks it against the model's inputs (every input present, nothing unknown, the input's
datatype, rank and fixed dimensions, one row count) and refuses a mismatch with one line naming the
array. When no file is given, ``synthetic`` makes standard-normal rows for a model whose inputs are
all floating point with fixed dimensions but the batch (good enough to check a dynamic-quantized
model, not to calibrate a static one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fogline.modelbuild.import_errors import ImportRefused
from fogline.models.spec import TensorSpec

LABELS = "labels"


@dataclass(frozen=True)
class Dataset:
    """Rows for every model input, optional labels, and where they came from."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    origin: str

    @property
    def rows(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        """Consecutive feeds of at most ``size`` rows."""
        return [{k: v[i : i + size] for k, v in self.arrays.items()} for i in range(0, self.rows, size)]

    def head(self, rows: int) -> dict[str, np.ndarray]:
        return {k: v[:rows] for k, v in self.arrays.items()}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file; ``ImportRefused`` when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except FileNotFoundError:
        raise ImportRefused(f"{path}: no such file") from None
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
        raise ImportRefused(f"{path}: not a readable .npz file of arrays ({exc})") from None


def match(path: Path, arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> Dataset:
    """Check ``arrays`` (from ``path``) against ``inputs``; return them as a ``Dataset``."""
    wanted = [spec.name for spec in inputs]
    unknown = sorted(set(arrays) - set(wanted) - {LABELS})
    if unknown:
        raise ImportRefused(f"{path}: array(s) {unknown} match no model input; the model's inputs are {wanted}"
                            f" (and optional {LABELS!r})")
    rows: int | None = None
    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.name not in arrays:
            raise ImportRefused(f"{path}: no array for the model input {spec.name!r}; the file has {sorted(arrays)}")
        array = arrays[spec.name]
        if array.dtype != spec.dtype:
            raise ImportRefused(f"{path}: array {spec.name!r} is {array.dtype}, the model input is {spec.datatype} "
                                f"({spec.dtype}); save it with .astype(np.{spec.dtype})")
        if not spec.accepts_shape(array.shape):
            raise ImportRefused(f"{path}: array {spec.name!r} has shape {list(array.shape)}, the model input "
                                f"wants {_shape_text(spec.shape)}")
        if array.shape[0] == 0 or (rows is not None and array.shape[0] != rows):
            raise ImportRefused(f"{path}: array {spec.name!r} has {array.shape[0]} rows, expected "
                                f"{rows if rows else 'at least 1'}")
        rows = int(array.shape[0])
        out[spec.name] = np.ascontiguousarray(array)
    labels = arrays.get(LABELS)
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != rows or labels.dtype.kind not in "iu":
            raise ImportRefused(f"{path}: {LABELS!r} must be {rows} integer class ids (one per row), got "
                                f"{labels.dtype} {list(labels.shape)}")
        labels = labels.astype(np.int64)
    return Dataset(out, labels, str(path))


def synthetic(inputs: Sequence[TensorSpec], rows: int = 32, seed: int = 0) -> Dataset | None:
    """Standard-normal rows when every input is floating point with fixed non-batch dimensions; else None."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.datatype not in ("FP32", "FP64") or -1 in spec.shape[1:] or not spec.shape:
            return None
        arrays[spec.name] = rng.standard_normal((rows, *spec.shape[1:])).astype(spec.dtype)
    return Dataset(arrays, None, f"synthetic ({rows} standard-normal rows, seed {seed})")


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join("N" if d == -1 else str(d) for d in shape) + "]"
