"""The edge runtime: a built model's INT8 ONNX file run with onnxruntime. Never imports torch.

``EdgeModel.load(version_dir)`` reads the manifest, opens an onnxruntime session on the edge
artifact and, when the manifest names a ``tokenizer`` artifact (``minilm``, or an import with
``--tokenizer``), the model's own tokenizer. ``predict`` takes a batch as the v2 protocol delivers it
(the manifest's input tensors) and returns the output tensors, each in its manifest datatype; bad
input raises ``fogline.errors.InvalidInput``. Any version directory whose manifest names an ``edge``
ONNX file loads here, reference build or import alike. The agent imports this on devices without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fogline.errors import ConfigError
from fogline.models.repository import LoadedModel, read_manifest
from fogline.models.spec import decode_texts, validate_inputs
from fogline.models.text import TextEncoder, encoder_for

#: onnxruntime graph rewrites left off. Measured on the INT8 minilm (batch 8, one thread,
#: onnxruntime 1.32): the fused SkipLayerNormalization kernel is slower than the Add +
#: LayerNormalization it replaces (17.1 -> 14.7 ms without it); the FP32 graph is unaffected.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def open_session(path: Path, intra_op_threads: int = 1) -> Any:
    """An onnxruntime CPU session on ``path`` with fogline's options (see ``session_options``)."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path),
        session_options(intra_op_threads),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


def session_options(intra_op_threads: int = 1) -> Any:
    """onnxruntime options: full graph optimisation, ``intra_op_threads`` threads, no spinning."""
    import onnxruntime as ort

    if intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Busy-waiting worker threads would steal CPU from the rest of a small device.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class EdgeModel(LoadedModel):
    """One model version served by onnxruntime (the INT8 edge file unless told otherwise)."""

    def __init__(
        self,
        version_dir: Path,
        manifest: dict[str, Any],
        session: Any,
        encoder: TextEncoder | None,
        artifact: str,
    ) -> None:
        super().__init__(version_dir, manifest)
        self.artifact = artifact
        self._session = session
        self._encoder = encoder
        self._onnx_inputs = [i.name for i in session.get_inputs()]

    @classmethod
    def load(cls, version_dir: Path | str, intra_op_threads: int = 1, artifact: str = "edge") -> EdgeModel:
        """Open ``version_dir``; ``artifact`` picks the ONNX file (``edge`` INT8, ``reference_onnx`` FP32)."""
        version_dir = Path(version_dir)
        manifest = read_manifest(version_dir)
        rel = manifest["artifacts"].get(artifact)
        if rel is None:
            raise ConfigError(f"{version_dir}: manifest names no {artifact!r} artifact")
        path = version_dir / rel
        if not path.is_file():
            raise ConfigError(f"{path}: missing; rebuild with 'fogline models build'")
        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        try:
            session = open_session(path, intra_op_threads)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConfigError(f"{path}: onnxruntime cannot load it ({exc})") from None
        encoder = encoder_for(version_dir, manifest)
        return cls(version_dir, manifest, session, encoder, artifact)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns ``{output name: array}`` with the batch size of the input."""
        return self.predict_checked(validate_inputs(self.name, self.inputs, inputs))

    def predict_checked(self, checked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``predict`` for inputs that already passed ``validate_inputs`` against this model's specs (the
        agent checks each request once, before routing it, and then skips the second check)."""
        if self._encoder is not None:
            feed = self._encoder.encode(decode_texts(checked[self.inputs[0].name]))
            feed = {name: feed[name] for name in self._onnx_inputs}
        else:
            feed = {name: np.ascontiguousarray(checked[name]) for name in self._onnx_inputs}
        results = self._session.run([spec.name for spec in self.outputs], feed)
        pairs = zip(self.outputs, results, strict=True)
        return {spec.name: np.asarray(out, dtype=spec.dtype) for spec, out in pairs}

    def __repr__(self) -> str:
        return f"EdgeModel({self.name!r}, version={self.version!r}, artifact={self.artifact!r})"
