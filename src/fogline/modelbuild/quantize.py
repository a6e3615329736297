"""INT8 quantization recipes, applied with onnxruntime's quantization tooling.

A ``Recipe`` is a frozen, JSON-able description of how an FP32 ONNX file becomes an INT8 one:
dynamic (weights INT8 ahead of time, activations quantized on the fly) or static QDQ (activation
ranges fixed from calibration batches), per-tensor or per-channel weights, which op types are
quantized and which nodes stay FP32. The build applies the recipe it was told to; the exploration
that chose each model's recipe is recorded in ``bench/results/models.md``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fogline.modelbuild.onnx_fold import folded_copy


@dataclass(frozen=True)
class Recipe:
    """How to quantize one model. ``method`` is ``"dynamic"`` or ``"static_qdq"``."""

    method: str
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    nodes_to_exclude: tuple[str, ...] = ()
    calibration: str = "minmax"  # static only: minmax | entropy | percentile
    activation_type: str = "QUInt8"  # static only
    extra_options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    smooth_alpha: float | None = None  # smooth activations first (fogline.modelbuild.smooth); needs calibration
    note: str = ""

    @property
    def needs_calibration(self) -> bool:
        return self.method == "static_qdq" or self.smooth_alpha is not None

    def __post_init__(self) -> None:
        if self.method not in ("dynamic", "static_qdq"):
            raise ValueError(f"unknown quantization method {self.method!r}")
        if self.calibration not in ("minmax", "entropy", "percentile"):
            raise ValueError(f"unknown calibration method {self.calibration!r}")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as stored in ``manifest.json`` (tooling named, so a reader can redo it)."""
        data = asdict(self)
        data["op_types"] = list(self.op_types)
        data["nodes_to_exclude"] = list(self.nodes_to_exclude)
        data["extra_options"] = dict(self.extra_options)
        data["tool"] = "onnxruntime.quantization"
        if self.method == "dynamic":
            for key in ("calibration", "activation_type"):
                data.pop(key)
        return data

    def with_excluded(self, nodes: Iterable[str]) -> Recipe:
        """The same recipe with ``nodes`` kept in FP32 as well."""
        merged = tuple(sorted(set(self.nodes_to_exclude) | set(nodes)))
        return Recipe(**{**asdict(self), "nodes_to_exclude": merged, "op_types": self.op_types,
                         "extra_options": self.extra_options})


class _FeedReader:
    """``CalibrationDataReader`` over a fixed list of input feeds (duck-typed: ``get_next``)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = [dict(f) for f in feeds]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def quantize_onnx(
    src: Path, dst: Path, recipe: Recipe, calibration_feeds: Sequence[Mapping[str, np.ndarray]] = ()
) -> None:
    """Write the INT8 version of ``src`` to ``dst`` following ``recipe``.

    ``calibration_feeds`` (a few input batches, the model's own input names) are required for
    static recipes and for smoothing, and ignored otherwise.
    """
    if recipe.needs_calibration and not calibration_feeds:
        raise ValueError("this recipe needs calibration batches (static ranges or smoothing)")
    with _quiet_root_logger(), tempfile.TemporaryDirectory(prefix="fogline-quant-") as scratch:
        # Constant Identity nodes keep the quantized convolutions from fusing (fogline.modelbuild.onnx_fold).
        src = folded_copy(src, Path(scratch))
        if recipe.smooth_alpha is not None:
            from fogline.modelbuild.smooth import smooth_onnx

            smoothed = Path(scratch) / "smoothed.onnx"
            smooth_onnx(src, smoothed, calibration_feeds, alpha=recipe.smooth_alpha)
            src = smoothed
        _quantize(src, dst, recipe, calibration_feeds)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer logs advice through the root logger; keep build output readable."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


def _quantize(
    src: Path, dst: Path, recipe: Recipe, calibration_feeds: Sequence[Mapping[str, np.ndarray]]
) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    extra = dict(recipe.extra_options)
    common = dict(
        op_types_to_quantize=list(recipe.op_types),
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(recipe.nodes_to_exclude),
        extra_options=extra,
    )
    if recipe.method == "dynamic":
        quantize_dynamic(str(src), str(dst), **common)
        return
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    extra.setdefault("CalibTensorRangeSymmetric", False)
    quantize_static(
        str(src),
        str(dst),
        _FeedReader(calibration_feeds),
        quant_format=QuantFormat.QDQ,
        activation_type=getattr(QuantType, recipe.activation_type),
        calibrate_method=methods[recipe.calibration],
        calibration_providers=["CPUExecutionProvider"],
        **common,
    )


def quantizable_nodes(model_path: Path, op_types: Sequence[str]) -> list[str]:
    """Names of the nodes of ``op_types`` that carry a constant weight (what quantization touches)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in op_types and any(name in weights for name in node.input)
    ]
