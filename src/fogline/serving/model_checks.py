"""Checking a model version before it replaces the one serving: both tiers' hot swap (SIGHUP).

``wanted_version(repo, name, pinned)`` says which version a model should serve: the pinned one, else
the newest in the repository. A new version is loaded beside the old one, then ``check_version``
runs every check a swap needs, and the first one that fails raises ``VersionRefused`` with a short
``reason`` (the metric's label) and a message a person can act on:

- ``missing``: the pinned version is not in the repository (``wanted_version``'s caller says so);
- ``hash``: a file is missing, truncated, modified or not listed (``fogline.models.repository``);
- ``load``: the runtime cannot open it;
- ``manifest``: the manifest's name or version is not the directory's;
- ``signature``: its inputs or outputs differ from the version serving (clients would break);
- ``warmup``: one inference on a sample input built from the manifest's signature raised;
- ``output``: an output is missing or has the wrong datatype or shape;
- ``nan``: an output holds NaN or infinity.

Nothing here knows which tier runs the model: anything with ``name``, ``version``, ``inputs``,
``outputs`` (``TensorSpec`` lists) and ``predict`` will do (``EdgeModel``, ``FullModel``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fogline.codec import datatype_to_dtype
from fogline.errors import ConfigError
from fogline.models.distribution import files_of_roles
from fogline.models.repository import ModelRepository, hash_problems, read_manifest

T = TypeVar("T")

#: The reasons a version is refused (the ``reason`` label of the load-failure metrics).
REASONS = ("missing", "hash", "load", "manifest", "signature", "warmup", "output", "nan")


class VersionRefused(Exception):
    """A model version failed a check; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ModelChange:
    """What a reload did to one model: ``before`` -> ``after`` (None: not served), or a refusal."""

    name: str
    before: str | None
    after: str | None
    #: The version refused ("" when none was), the check that failed and why.
    refused: str = ""
    reason: str = ""
    message: str = ""
    #: Load, check and warm-up time of the new version (ms).
    load_ms: float = 0.0

    def describe(self) -> str:
        if self.refused:
            keep = f"version {self.before} keeps serving" if self.before else "not served"
            return f"{self.name} v{self.refused} refused ({self.reason}): {self.message}; {keep}"
        if self.after is None:
            return f"{self.name} v{self.before} no longer served"
        if self.before is None:
            return f"{self.name} v{self.after} loaded ({self.load_ms:.0f} ms)"
        return f"{self.name} v{self.before} -> v{self.after} ({self.load_ms:.0f} ms)"


def wanted_version(repo: ModelRepository, name: str, pinned: str | None) -> str:
    """The version ``name`` should serve: ``pinned``, else the newest; ``ModelNotFound`` when absent."""
    return repo.resolve(name, pinned).name


def check_files(version_dir: Path, roles: Sequence[str] | None = None) -> None:
    """The manifest's hashes against the files (``hash``): all of them, or only those of the artifact
    ``roles`` a runtime reads (the edge reads ``edge`` and ``tokenizer``: a device may hold only
    those, and hashing the full model's 180 MB would make a swap slow for nothing)."""
    version_dir = Path(version_dir)
    problems = hash_problems(version_dir) if roles is None else _role_problems(version_dir, roles)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VersionRefused("hash", problems[0] + more)


def _role_problems(version_dir: Path, roles: Sequence[str]) -> list[str]:
    try:
        manifest = read_manifest(version_dir)
    except ConfigError as exc:
        return [str(exc)]
    paths = [manifest["artifacts"][role] for role in roles if role in manifest["artifacts"]]
    files = files_of_roles(manifest, tuple(roles))
    unlisted = [path for path in paths if path not in files and not (version_dir / path).is_dir()]
    problems = [f"{version_dir / path}: not listed in the manifest" for path in unlisted]
    return problems + hash_problems(version_dir, dict(manifest, files=files), extra_files=False)


def sample_inputs(specs: Iterable[Any], rows: int = 1) -> dict[str, np.ndarray]:
    """A batch of ``rows`` built from the input signature: text for BYTES, the low end of a numeric
    input's value range (zeros when it has none) otherwise."""
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = [rows if d < 0 else d for d in spec.shape]
        if spec.datatype == "BYTES":
            out[spec.name] = np.full(shape, b"fogline version check", dtype=object)
        else:
            low = spec.value_range[0] if getattr(spec, "value_range", None) else 0
            out[spec.name] = np.full(shape, low, dtype=datatype_to_dtype(spec.datatype))
    return out


def _signature(specs: Sequence[Any]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(s.name, s.datatype, tuple(s.shape)) for s in specs]


def check_signature(model: Any, serving: Any | None) -> None:
    """The new version takes and gives what the serving one does (``signature``)."""
    if serving is None:
        return
    for what in ("inputs", "outputs"):
        new, old = _signature(getattr(model, what)), _signature(getattr(serving, what))
        if new != old:
            raise VersionRefused("signature", f"its {what} {new} differ from version {serving.version}'s {old}")


def check_outputs(model: Any, outputs: dict[str, np.ndarray], rows: int) -> None:
    """Every declared output, of its datatype and shape (``output``), all finite (``nan``)."""
    for spec in model.outputs:
        if spec.name not in outputs:
            raise VersionRefused("output", f"the warm-up gave no output {spec.name!r}")
        value = np.asarray(outputs[spec.name])
        if spec.datatype != "BYTES" and value.dtype != datatype_to_dtype(spec.datatype):
            raise VersionRefused("output", f"output {spec.name!r} is {value.dtype}, the manifest says {spec.datatype}")
        expected = [rows if d < 0 and i == 0 else d for i, d in enumerate(spec.shape)]
        if len(value.shape) != len(expected) or any(d >= 0 and d != n for d, n in zip(expected, value.shape,
                                                                                   strict=True)):
            raise VersionRefused("output", f"output {spec.name!r} has shape {list(value.shape)}, "
                                           f"the manifest says {list(spec.shape)}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise VersionRefused("nan", f"output {spec.name!r} holds NaN or infinity on the sample input")


def check_model(model: Any, serving: Any | None = None, rows: int = 2) -> None:
    """Signature against ``serving`` (the version in use, or None), then one warm-up inference on a
    sample input and its outputs. Blocking: run it off the event loop."""
    check_signature(model, serving)
    try:
        outputs = model.predict(sample_inputs(model.inputs, rows))
    except Exception as exc:
        raise VersionRefused("warmup", f"the warm-up inference failed: {' '.join(str(exc).split())}") from None
    check_outputs(model, outputs, rows)


def load_checked(version_dir: Path, load: Callable[[Path], T], serving: Any | None = None, *,
                 roles: Sequence[str] | None = None) -> T:
    """Every check in order: the files' hashes (of ``roles``' files only, see ``check_files``), ``load(version_dir)``, the manifest's name and version
    against the directory, then ``check_model``. Returns the loaded model; raises ``VersionRefused``.
    Blocking: run it off the event loop."""
    version_dir = Path(version_dir)
    check_files(version_dir, roles)
    try:
        model = load(version_dir)
    except Exception as exc:
        raise VersionRefused("load", " ".join(str(exc).split()) or type(exc).__name__) from None
    if str(model.version) != version_dir.name or model.name != version_dir.parent.name:
        raise VersionRefused("manifest", f"{version_dir}: its manifest says {model.name!r} version "
                                         f"{model.version!r}; fix the manifest or the directory name")
    check_model(model, serving)
    return model
