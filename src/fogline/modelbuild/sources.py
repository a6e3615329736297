"""Turn what a user hands ``fogline models import`` into an FP32 ONNX file and, where given, a torch form.

| source | the cloud runs | the edge INT8 is quantized from | signature read from |
| --- | --- | --- | --- |
| ``.onnx`` | the FP32 ONNX in onnxruntime | the file itself | the ONNX graph |
| ``.pt2`` (``torch.export.save``) | the torch program | its ONNX export (``torch.onnx``, dynamo) | the program, via its export |
| ``.pt`` (``torch.jit.save``) | the TorchScript module | its ONNX export (TorchScript exporter) | argument names from the module; shapes and datatypes from the calibration arrays (batch axis dynamic) |

``prepare`` writes ``model.fp32.onnx`` (and copies the torch file to ``full/``) into a work directory
and returns a ``Source``. A file that cannot be read as the form its suffix says is refused
(``ImportRefused``), as is a TorchScript file without calibration data.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fogline.modelbuild import output_names
from fogline.modelbuild.import_errors import ImportRefused

SUFFIXES = {".onnx": "onnx", ".pt2": "torch_export", ".pt": "torchscript"}
FP32_ONNX = "model.fp32.onnx"
#: Where the torch form goes in the version directory, and the manifest artifact that names it.
TORCH_FILES = {"torch_export": ("full_program", "full/model.pt2"), "torchscript": ("full_torchscript", "full/model.pt")}
#: Opset of the ONNX export of a torch source.
EXPORT_OPSET = 18


@dataclass(frozen=True)
class Source:
    """The imported model's files in the work directory."""

    kind: str  # onnx | torch_export | torchscript
    path: Path  # what the user gave
    fp32_onnx: Path
    full_artifact: tuple[str, str] | None  # (manifest role, relative path) of the torch form, if any
    run_torch: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]] | None  # the source model, for checks


def kind_of(path: Path) -> str:
    """The source kind from the file suffix; ``ImportRefused`` for anything else."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ImportRefused(f"{path}: unsupported model file; give an ONNX file (.onnx), a torch.export program "
                            "(.pt2, torch.export.save) or a TorchScript file (.pt, torch.jit.save)")
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file")
    return kind


def prepare(path: Path, work: Path, example: Mapping[str, np.ndarray] | None,
            names_out: Sequence[str] | None = None) -> Source:
    """Write ``work/model.fp32.onnx`` (and ``work/full/...`` for a torch source) from ``path``.

    ``example`` (a few rows of every input, keyed by name) drives the export of a torch source and is
    required for TorchScript, whose file records no shapes. ``names_out`` names a torch source's outputs
    (``fogline.modelbuild.output_names``; refused for an ONNX file).
    """
    kind = kind_of(path)
    fp32 = work / FP32_ONNX
    if kind == "onnx":
        output_names.refuse_for_onnx(names_out, path)
        shutil.copyfile(path, fp32)
        return Source(kind, path, fp32, None, None)
    import torch

    role, rel = TORCH_FILES[kind]
    if kind == "torch_export":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # zipfile / pickle / torch errors on a corrupt or foreign file
            raise ImportRefused(f"{path}: not a readable torch.export program (.pt2): {_first(exc)}") from None
        module = program.module()
        names = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
        if not example or any(n not in example for n in names):
            example = _program_example(program, names)
        args = tuple(torch.from_numpy(np.ascontiguousarray(example[n][:2])) for n in names)
        _export(lambda: torch.onnx.export(program, args, str(fp32), dynamo=True, input_names=names,
                                          output_names=_output_names(module, args, names_out, names, path),
                                          opset_version=EXPORT_OPSET,
                                          optimize=True, verbose=False, external_data=False), path)
    else:
        if example is None:
            raise ImportRefused(f"{path}: a TorchScript file records no input shapes; pass --calibration F.npz with "
                                "one array per forward() argument, keyed by its name")
        try:
            module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # RuntimeError on a corrupt or foreign file
            raise ImportRefused(f"{path}: not a readable TorchScript file (.pt): {_first(exc)}") from None
        names = [arg.name for arg in module.forward.schema.arguments[1:]]
        missing = [n for n in names if n not in example]
        if missing:
            raise ImportRefused(f"{path}: forward() takes {names}; the calibration file has no array for {missing}")
        args = tuple(torch.from_numpy(np.ascontiguousarray(example[n][:2])) for n in names)
        outputs = _output_names(module, args, names_out, names, path)
        axes = {name: {0: "batch"} for name in [*names, *outputs]}
        _export(lambda: torch.onnx.export(module, args, str(fp32), dynamo=False, input_names=names,
                                          output_names=outputs, dynamic_axes=axes, opset_version=17,
                                          do_constant_folding=True), path)
    (work / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, work / rel)
    return Source(kind, path, fp32, (role, rel), _torch_runner(module, names))


def attach_full(source: Source, path: Path, work: Path) -> Source:
    """``source`` (an ONNX file) with a torch form for the cloud: ``path`` is checked to load and copied to
    ``work/full/``. The served torch form is then checked against the ONNX file, not run as the source."""
    import torch

    kind = kind_of(path)
    try:
        if kind == "torch_export":
            torch.export.load(str(path))
        else:
            torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # corrupt or foreign file
        raise ImportRefused(f"{path}: not a readable {'torch.export program' if kind == 'torch_export' else 'TorchScript file'}"
                            f": {_first(exc)}") from None
    role, rel = TORCH_FILES[kind]
    (work / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, work / rel)
    return Source(source.kind, source.path, source.fp32_onnx, (role, rel), None)


def _program_example(program: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Two rows per input, shaped as the program's example values (dynamic dims at their hint)."""
    import torch

    values = {node.name: node.meta.get("val") for node in program.graph.nodes if node.op == "placeholder"}
    example = {}
    for name in names:
        value = values.get(name)
        if value is None or not isinstance(value, torch.Tensor):
            raise ImportRefused(f"program input {name!r} is not a tensor; fogline serves tensor inputs only")
        shape = [2 if i == 0 else _hint(d) for i, d in enumerate(value.shape)]
        example[name] = torch.zeros(shape, dtype=value.dtype).numpy()
    return example


def _hint(dim: Any) -> int:
    try:
        return int(dim)
    except TypeError:
        return int(dim.node.hint) if getattr(dim.node, "hint", None) is not None else 2


def _output_names(module: Any, args: tuple[Any, ...], given: Sequence[str] | None, inputs: Sequence[str],
                  path: Path) -> list[str]:
    """The names of the module's outputs: ``given`` (checked against the count it returns) or ``output``
    for one output, ``output_0``... for several (the program's own names are op names)."""
    import torch

    with torch.inference_mode():
        result = module(*args)
    count = 1 if isinstance(result, torch.Tensor) else len(result)
    return output_names.resolve(count, given, inputs, path)


def _torch_runner(module: Any, names: list[str]) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    import torch

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            result = module(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names))
        result = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        return [t.detach().numpy() for t in result]

    return run


def _export(call: Callable[[], Any], path: Path) -> None:
    """Run a ``torch.onnx.export`` call quietly; a failure is one ``ImportRefused`` line."""
    with _quiet():
        try:
            call()
        except ImportRefused:
            raise
        except Exception as exc:  # the exporters raise many types; the first line says which op failed
            raise ImportRefused(f"{path}: cannot export it to ONNX for the edge: {_first(exc)}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and log tracebacks of optional steps; keep the import's output clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
