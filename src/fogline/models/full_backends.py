"""What runs a full-precision model in the cloud, chosen from the artifacts its manifest names.

One backend per form a model can take, all with the same small interface (``run(feed) -> list of
arrays``, outputs in manifest order), so ``FullModel`` has no branch per model:

| manifest artifact | backend | what it is |
| --- | --- | --- |
| ``full_program`` | ``TorchBackend`` | a ``torch.export`` program (``.pt2``), run with ``ExportedProgram.module()`` |
| ``full_torchscript`` | ``TorchBackend`` | a TorchScript file (``.pt``), run with ``torch.jit.load`` (profiling optimizer off) |
| only ``reference_onnx`` | ``OnnxBackend`` | the FP32 ONNX file in onnxruntime (CUDA provider on ``cuda``) |

The positional inputs of a torch module are the manifest's ``feed`` list when present (a model that
tokenizes text: its token tensors), else its input names, in manifest order. The reference models
(``minilm``, ``digits``) are imports like any other (a TorchScript full form), so nothing here knows them.

A TorchScript module runs with ``torch.jit.optimized_execution(False)``: the profiling optimizer
re-specializes the graph for each new input shape (a text model sees a new token count on most calls)
and those calls take several times longer (all-MiniLM: 50-80 ms instead of 6-8 ms for the first few
dozen calls), while the plain interpreter runs at eager speed from the first call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fogline.errors import ConfigError

#: The torch artifacts, in the order they are looked for.
TORCH_ARTIFACTS = ("full_program", "full_torchscript")


class Backend(Protocol):
    """Runs one batch: ``feed`` maps input names to arrays; returns the outputs in manifest order."""

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class TorchBackend:
    """A torch module called with positional tensors in ``input_names`` order."""

    def __init__(self, module: Any, input_names: Sequence[str], device: torch.device,
                 optimize: bool = True) -> None:  # fmt: skip
        self.module = module
        self.input_names = list(input_names)
        self.device = device
        self.optimize = optimize

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feed[name])).to(self.device) for name in self.input_names]
        with torch.inference_mode(), torch.jit.optimized_execution(self.optimize):
            result = self.module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result.values())
        return [tensor.detach().to("cpu").numpy() for tensor in result]


class OnnxBackend:
    """An FP32 ONNX file in onnxruntime, for a model imported without a torch form."""

    def __init__(self, session: Any, output_names: Sequence[str]) -> None:
        self.session = session
        self.output_names = list(output_names)
        self._input_names = [i.name for i in session.get_inputs()]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(self.output_names, {n: np.ascontiguousarray(feed[n]) for n in self._input_names}))


def open_backend(version_dir: Path, manifest: dict[str, Any], device: torch.device) -> Backend:
    """The backend for the first form of the model the manifest names (see the table above)."""
    artifacts = manifest["artifacts"]
    feed_names = list(manifest.get("feed") or [spec["name"] for spec in manifest["inputs"]])
    kind = next((key for key in TORCH_ARTIFACTS if key in artifacts), None)
    if kind is None:
        if "reference_onnx" not in artifacts:
            raise ConfigError(f"{version_dir}: manifest names no full model (one of {', '.join(TORCH_ARTIFACTS)}, "
                              "reference_onnx)")
        return _onnx_backend(_existing(version_dir, artifacts["reference_onnx"]), manifest, device)
    try:
        if kind == "full_program":
            program = torch.export.load(str(_existing(version_dir, artifacts[kind])))
            module = program.module().to(device)
        else:
            with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(_existing(version_dir, artifacts[kind])), map_location=device).eval()
            return TorchBackend(module, feed_names, device, optimize=False)
    except ConfigError:
        raise
    except Exception as exc:  # torch raises many types for a corrupt or incompatible file
        raise ConfigError(f"{version_dir}: cannot load the full model ({type(exc).__name__}: {exc})") from None
    return TorchBackend(module, feed_names, device)


def _existing(version_dir: Path, rel: str) -> Path:
    path = version_dir / rel
    if not path.is_file():
        raise ConfigError(f"{path}: missing; rebuild or re-import the model")
    return path


def _onnx_backend(path: Path, manifest: dict[str, Any], device: torch.device) -> OnnxBackend:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(f"{path}: device cuda needs onnxruntime's CUDA provider (pip install onnxruntime-gpu); "
                              f"this onnxruntime has {', '.join(ort.get_available_providers())}")
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ConfigError(f"{path}: onnxruntime cannot load it ({exc})") from None
    return OnnxBackend(session, [spec["name"] for spec in manifest["outputs"]])
