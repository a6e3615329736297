"""The full-precision runtime: a built model's FP32 torch network (what the cloud tier serves).

``FullModel.load(version_dir)`` rebuilds the network from the files the build copied or trained
(``full/config.json`` + ``full/model.safetensors``) and, for ``minilm``, the same ``tokenizer.json`` the
edge runtime uses, so both tiers see identical token ids. The interface matches
``edge_models.edge_runtime.EdgeModel``: ``predict`` takes and returns numpy arrays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fogline.errors import ConfigError

from .digits_net import DigitsConfig, load_digits_model
from .minilm_net import load_minilm
from .repository import LoadedModel, read_manifest
from .spec import decode_texts, validate_inputs
from .text import TextEncoder


class FullModel(LoadedModel):
    """One model version as an FP32 torch module, ready for batched inference."""

    def __init__(
        self, version_dir: Path, manifest: dict[str, Any], module: torch.nn.Module,
        encoder: TextEncoder | None, device: torch.device,
    ) -> None:  # fmt: skip
        super().__init__(version_dir, manifest)
        self.device = device
        self.module = module
        self._encoder = encoder

    @classmethod
    def load(cls, version_dir: Path | str, device: str = "cpu") -> FullModel:
        version_dir = Path(version_dir)
        manifest = read_manifest(version_dir)
        artifacts = manifest["artifacts"]
        try:
            config_path = version_dir / artifacts["full_config"]
            weights_path = version_dir / artifacts["full_weights"]
        except KeyError as exc:
            raise ConfigError(f"{version_dir}: manifest names no {exc.args[0]!r} artifact") from None
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ConfigError(f"{path}: missing; rebuild with 'fogline models build'")
        try:
            target = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"unknown torch device {device!r} ({exc})") from None
        encoder = None
        try:
            if manifest.get("task") == "embedding":
                module = load_minilm(config_path, weights_path)
                encoder = TextEncoder(version_dir / artifacts["tokenizer"])
            else:
                cfg = DigitsConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
                module = load_digits_model(cfg, weights_path)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{version_dir}: cannot load the full model ({exc})") from None
        return cls(version_dir, manifest, module.to(target).eval(), encoder, target)

    def _feed(self, checked: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        if self._encoder is not None:
            ids = self._encoder.encode(decode_texts(checked[self.inputs[0].name]))
            names = ("input_ids", "attention_mask", "token_type_ids")
            return tuple(torch.from_numpy(ids[n]).to(self.device) for n in names)
        return tuple(torch.from_numpy(np.ascontiguousarray(checked[s.name])).to(self.device) for s in self.inputs)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns ``{output name: float32 array}``."""
        checked = validate_inputs(self.name, self.inputs, inputs)
        with torch.inference_mode():
            result = self.module(*self._feed(checked))
        return {self.outputs[0].name: result.detach().to("cpu").numpy().astype(np.float32, copy=False)}

    def __repr__(self) -> str:
        return f"FullModel({self.name!r}, version={self.version!r}, device={str(self.device)!r})"
