"""The full-precision runtime: a model version's FP32 form (what the cloud tier serves).

``FullModel.load(version_dir)`` reads the manifest and opens the full model through the backend its
artifacts call for (``fogline.models.full_backends``: a ``torch.export`` program, a TorchScript file,
or for an ONNX-only import the FP32 ONNX in onnxruntime; the reference models carry TorchScript), and,
when the manifest names a ``tokenizer``, the same ``tokenizer.json`` the edge runtime uses, so both
tiers see identical token ids. The interface matches ``fogline.models.edge_runtime.EdgeModel``:
``predict`` takes and returns numpy arrays, each output in its manifest datatype.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fogline.errors import ConfigError
from fogline.models.full_backends import Backend, open_backend
from fogline.models.repository import LoadedModel, read_manifest
from fogline.models.spec import decode_texts, validate_inputs
from fogline.models.text import TextEncoder, encoder_for


class FullModel(LoadedModel):
    """One model version in full precision, ready for batched inference."""

    def __init__(
        self, version_dir: Path, manifest: dict[str, Any], backend: Backend,
        encoder: TextEncoder | None, device: torch.device,
    ) -> None:  # fmt: skip
        super().__init__(version_dir, manifest)
        self.device = device
        self.backend = backend
        self._encoder = encoder

    @classmethod
    def load(cls, version_dir: Path | str, device: str = "cpu") -> FullModel:
        version_dir = Path(version_dir)
        manifest = read_manifest(version_dir)
        try:
            target = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"unknown torch device {device!r} ({exc})") from None
        backend = open_backend(version_dir, manifest, target)
        encoder = encoder_for(version_dir, manifest)
        return cls(version_dir, manifest, backend, encoder, target)

    def _feed(self, checked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._encoder is not None:
            return self._encoder.encode(decode_texts(checked[self.inputs[0].name]))
        return checked

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns ``{output name: array}`` (each in its manifest datatype)."""
        checked = validate_inputs(self.name, self.inputs, inputs)
        results = self.backend.run(self._feed(checked))
        pairs = zip(self.outputs, results, strict=True)
        return {spec.name: np.asarray(out).astype(spec.dtype, copy=False) for spec, out in pairs}

    def __repr__(self) -> str:
        return f"FullModel({self.name!r}, version={self.version!r}, device={str(self.device)!r})"
