"""Torch -> ONNX export and small helpers to run both sides in batches (build and benchmark use them).

The export uses torch's TorchScript-based exporter (``dynamo=False``) at opset 17: it is fast, gives
short node names derived from the module tree (``/encoder/layer.3/output/dense/MatMul``), which the
quantization recipes refer to, and produces the same bytes every time for the same weights.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

OPSET = 17


def export_onnx(
    model: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """Write ``model`` (eval mode, FP32) to ``path`` as a single self-contained ONNX file."""
    model.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block with ``count`` torch intra-op threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def in_batches(
    run: Callable[[Sequence], np.ndarray], items: Sequence, batch_size: int = 16
) -> np.ndarray:
    """Concatenate ``run(chunk)`` over consecutive chunks of ``items``."""
    parts = [run(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    return np.concatenate(parts, axis=0)


def save_torchscript(model: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    """Trace ``model`` on ``example`` and save it as TorchScript (``torch.jit.save``).

    The file is not the same bytes twice (a random ``serialization_id``, and class names mangled with a
    process-wide counter), although the program and weights are; a build that must be byte-for-byte
    reproducible saves a ``torch.export`` program instead (``save_program``).
    """
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example), str(path))


def save_program(model: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path,
                 dynamic: Sequence[dict[int, str]]) -> None:
    """``torch.export`` ``model`` (the dimensions named in ``dynamic``, one dict per input, left free) and
    save the program (``.pt2``; the same bytes for the same weights)."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = tuple({axis: dims.setdefault(name, torch.export.Dim(name, min=1, max=1024)) for axis, name in d.items()}
                   for d in dynamic)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model.eval(), example, dynamic_shapes=shapes), str(path))
