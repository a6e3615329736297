"""Tensor signatures of the reference models, and the checks every runtime applies to its inputs.

A ``TensorSpec`` names one input or output tensor with its v2 datatype (``"FP32"``, ``"BYTES"``...)
and its shape, where ``-1`` marks a variable dimension (the batch, usually). ``validate_inputs`` is
the one place that decides whether a batch handed to ``predict`` is acceptable; the edge runtime
(onnxruntime) and the full runtime (torch) both call it, so both refuse the same things with the same
``InvalidInput`` message. This module needs numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fogline.errors import InvalidInput

#: Datatype names as the Open Inference Protocol v2 spells them -> the numpy dtype kind they hold.
_NUMPY_OF = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "INT64": np.dtype(np.int64),
    "INT32": np.dtype(np.int32),
    "BYTES": np.dtype(object),
}

#: The v2 datatypes a model's tensors may have (what ``fogline models import`` accepts).
DATATYPES = tuple(_NUMPY_OF)

#: Longest text (in UTF-8 bytes) one ``minilm`` element may carry; longer text is refused, not cut.
MAX_TEXT_BYTES = 64 * 1024
#: Largest batch one ``predict`` call accepts.
MAX_BATCH = 1024


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: v2 datatype and shape (``-1`` = any size along that dimension).

    ``value_range`` (optional, ``(low, high)``) bounds the values of a numeric input; a batch with a
    value outside it, or NaN, is refused. It is stored in the manifest only when set.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    value_range: tuple[float, float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.datatype not in _NUMPY_OF:
            raise ValueError(f"unsupported datatype {self.datatype!r}; expected one of {sorted(_NUMPY_OF)}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def to_dict(self) -> dict[str, Any]:
        """The form stored in ``manifest.json`` and reported by ``ModelMetadata``."""
        data: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.value_range is not None:
            data["value_range"] = [float(v) for v in self.value_range]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        bounds = data.get("value_range")
        value_range = (float(bounds[0]), float(bounds[1])) if bounds is not None else None
        return cls(str(data["name"]), str(data["datatype"]), tuple(data["shape"]), value_range)

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype that holds this tensor (``object`` for BYTES)."""
        return _NUMPY_OF[self.datatype]

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        """True when ``shape`` has the right rank and matches every fixed dimension."""
        if len(shape) != len(self.shape):
            return False
        return all(want == -1 or want == got for want, got in zip(self.shape, shape, strict=True))


# The signatures of the two reference models (DESIGN.md, "Reference models").
MINILM_INPUTS = (TensorSpec("text", "BYTES", (-1,)),)
MINILM_OUTPUTS = (TensorSpec("embedding", "FP32", (-1, 384)),)
DIGITS_INPUTS = (TensorSpec("image", "FP32", (-1, 8, 8), value_range=(0.0, 16.0)),)
DIGITS_OUTPUTS = (TensorSpec("probabilities", "FP32", (-1, 10)),)

SIGNATURES: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    "minilm": (MINILM_INPUTS, MINILM_OUTPUTS),
    "digits": (DIGITS_INPUTS, DIGITS_OUTPUTS),
}


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join("N" if d == -1 else str(d) for d in shape) + "]"


def validate_inputs(
    model: str, specs: Sequence[TensorSpec], inputs: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Check a batch against the model's input specs; return the arrays, ready for the runtime.

    Raises ``InvalidInput`` naming the tensor and what was expected when a tensor is missing or
    unexpected, has the wrong datatype or shape, the batch is empty or too large, text is not
    UTF-8, or a numeric input holds values outside its spec's ``value_range`` (or NaN), such as a
    ``digits`` image outside 0..16.
    """
    if not isinstance(inputs, Mapping):
        raise InvalidInput(f"{model}: inputs must be a mapping of tensor name to array")
    wanted = {spec.name for spec in specs}
    extra = sorted(set(inputs) - wanted)
    if extra:
        raise InvalidInput(f"{model}: unexpected input tensor(s) {extra}; expected {sorted(wanted)}")
    out: dict[str, np.ndarray] = {}
    batch: int | None = None
    for spec in specs:
        if spec.name not in inputs:
            raise InvalidInput(f"{model}: missing input tensor {spec.name!r}")
        array = inputs[spec.name]
        if not isinstance(array, np.ndarray):
            raise InvalidInput(f"{model}: input {spec.name!r} must be a numpy array, got {type(array).__name__}")
        want = _NUMPY_OF[spec.datatype]
        if array.dtype != want:
            raise InvalidInput(
                f"{model}: input {spec.name!r} has dtype {array.dtype}, expected {spec.datatype} ({want})"
            )
        if not spec.accepts_shape(array.shape):
            raise InvalidInput(
                f"{model}: input {spec.name!r} has shape {list(array.shape)}, expected {_shape_text(spec.shape)}"
            )
        rows = int(array.shape[0]) if array.ndim else 1
        if rows == 0:
            raise InvalidInput(f"{model}: input {spec.name!r} is an empty batch")
        if rows > MAX_BATCH:
            raise InvalidInput(f"{model}: batch of {rows} exceeds the limit of {MAX_BATCH}")
        if batch is not None and rows != batch:
            raise InvalidInput(f"{model}: inputs disagree on the batch size ({batch} vs {rows})")
        batch = rows
        if spec.datatype == "BYTES":
            _check_text(model, spec.name, array)
        elif spec.value_range is not None:
            _check_range(model, spec.name, array, spec.value_range)
        out[spec.name] = array
    return out


def _check_text(model: str, name: str, array: np.ndarray) -> None:
    for i, item in enumerate(array.reshape(-1)):
        if not isinstance(item, (bytes, bytearray)):
            raise InvalidInput(f"{model}: element {i} of {name!r} is {type(item).__name__}, expected bytes")
        if len(item) > MAX_TEXT_BYTES:
            raise InvalidInput(
                f"{model}: element {i} of {name!r} is {len(item)} bytes long; the limit is {MAX_TEXT_BYTES}"
            )
        try:
            bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{model}: element {i} of {name!r} is not valid UTF-8 ({exc.reason})") from None


def _check_range(model: str, name: str, array: np.ndarray, bounds: tuple[float, float]) -> None:
    if not np.all(np.isfinite(array)):
        raise InvalidInput(f"{model}: input {name!r} holds NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < bounds[0] or high > bounds[1]:
        raise InvalidInput(
            f"{model}: input {name!r} values must lie in {bounds[0]:g}..{bounds[1]:g}, got {low:g}..{high:g}"
        )


def decode_texts(array: np.ndarray) -> list[str]:
    """The UTF-8 strings of a validated BYTES batch, in order."""
    return [bytes(item).decode("utf-8") for item in array.reshape(-1)]
