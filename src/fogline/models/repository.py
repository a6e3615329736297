"""The on-disk model repository: ``DIR/<name>/<version>/`` directories, each with a ``manifest.json``.

``ModelRepository`` answers which models and versions exist and where they live; it reads only small
JSON files and never loads a network. ``hash_problems`` re-hashes a version directory against its
manifest. Versions are positive integers written as strings ("1", "2"...); a directory whose name is
not one (for example a build's temporary directory) is not a version and is ignored.

Manifest keys (``manifest.json``): ``format``, ``name``, ``version``, ``inputs``/``outputs`` (tensor
specs), ``files`` (relative path -> ``{"sha256", "bytes"}`` for every other file in the directory),
``artifacts`` (role -> relative path: ``edge``, ``reference_onnx``, ``full_weights``...),
``quantization`` (the recipe), ``metrics`` (measured at build time), ``gate`` (the fidelity limits the
build checked, ``passed``, and ``accepted_below_gate`` with the ``misses`` when it was written anyway),
``source``, ``task`` (``classification`` | ``embedding`` | ``generic``) and, for a classifier,
``classification: {"output": NAME, "scores": "probabilities" | "logits"}`` (the tensor whose per-row
top probability is the answer's confidence; without it, the first output holds probabilities).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fogline.errors import ConfigError, ModelNotFound
from fogline.models.spec import SIGNATURES, TensorSpec

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def default_models_dir() -> Path:
    """``$FOGLINE_MODELS`` when set, else ``./models``."""
    return Path(os.environ.get("FOGLINE_MODELS") or "models")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_table(version_dir: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256", "bytes"}}`` for every file under ``version_dir`` but the manifest."""
    table: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in Path(version_dir).rglob("*") if p.is_file()):
        rel = path.relative_to(version_dir).as_posix()
        if rel != MANIFEST:
            table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def write_manifest(version_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the file table to ``manifest`` and write it (sorted keys, so equal builds give equal bytes)."""
    manifest = dict(manifest, format=MANIFEST_FORMAT, files=file_table(version_dir))
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (Path(version_dir) / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def read_manifest(version_dir: Path) -> dict[str, Any]:
    """The parsed manifest of a version directory; ``ConfigError`` when missing or malformed."""
    path = Path(version_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; rebuild with 'fogline models build'") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable manifest ({exc})") from None
    for key in ("name", "version", "inputs", "outputs", "files", "artifacts"):
        if not isinstance(data, dict) or key not in data:
            raise ConfigError(f"{path}: manifest lacks the key {key!r}")
    return data


def specs_of(manifest: dict[str, Any], key: str) -> list[TensorSpec]:
    """The ``inputs`` or ``outputs`` of a manifest as ``TensorSpec`` objects."""
    return [TensorSpec.from_dict(item) for item in manifest[key]]


def hash_problems(version_dir: Path, manifest: dict[str, Any] | None = None, *,
                  extra_files: bool = True) -> list[str]:
    """One line per file that is missing, has the wrong size or hash, or (``extra_files``) is not in
    the manifest."""
    version_dir = Path(version_dir)
    try:
        manifest = manifest or read_manifest(version_dir)
    except ConfigError as exc:
        return [str(exc)]
    problems = []
    for rel, entry in sorted(manifest["files"].items()):
        path = version_dir / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry.get("bytes"):
            problems.append(f"{path}: {path.stat().st_size} bytes, manifest says {entry.get('bytes')}")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{path}: sha256 mismatch (file corrupt or modified)")
    if not extra_files:
        return problems
    listed = set(manifest["files"])
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(version_dir).as_posix()
        if rel != MANIFEST and rel not in listed:
            problems.append(f"{path}: not listed in the manifest")
    return problems


def _is_version(name: str) -> bool:
    return name.isdigit() and not name.startswith("0")


class ModelRepository:
    """Read-only view of ``root/<name>/<version>/``."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_models_dir()

    def names(self) -> list[str]:
        """Models with at least one version that has a manifest, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        """Versions of ``name`` that have a manifest, oldest first ("1" < "2" < "10")."""
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        found = [p.name for p in model_dir.iterdir() if _is_version(p.name) and (p / MANIFEST).is_file()]
        return sorted(found, key=int)

    def resolve(self, name: str, version: str | None = None) -> Path:
        """The directory of ``name`` at ``version`` (newest when None); ``ModelNotFound`` otherwise."""
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model {name!r} not found in {self.root} (available: {known})")
        if version in (None, ""):
            return self.root / name / versions[-1]
        if str(version) not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r} (available: {', '.join(versions)})")
        return self.root / name / str(version)

    def manifest(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The manifest of ``name`` at ``version`` (newest when None)."""
        return read_manifest(self.resolve(name, version))


class LoadedModel:
    """What both runtimes (edge ONNX, full torch) read from a version's manifest, and what they share:
    name, version, task, tensor signature, and the classifier confidence used by cascade routing."""

    def __init__(self, version_dir: Path, manifest: dict[str, Any]) -> None:
        self.version_dir = Path(version_dir)
        self.manifest = manifest
        self.name: str = manifest["name"]
        self.version: str = str(manifest["version"])
        self.task: str = manifest.get("task", "classification")
        self.inputs: list[TensorSpec] = _with_reference_ranges(manifest, specs_of(manifest, "inputs"))
        self.outputs: list[TensorSpec] = specs_of(manifest, "outputs")
        scores = manifest.get("classification") or {}
        self.scores_output: str = str(scores.get("output") or self.outputs[0].name)
        self.scores_kind: str = str(scores.get("scores") or "probabilities")

    def confidence(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Per-row top probability for a classifier (softmax first when it outputs logits); None for
        any other task."""
        if self.task != "classification":
            return None
        scores = np.asarray(outputs[self.scores_output], dtype=np.float64)
        if self.scores_kind == "logits":
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            return shifted.max(axis=1) / shifted.sum(axis=1)
        return scores.max(axis=1)


def _with_reference_ranges(manifest: dict[str, Any], specs: list[TensorSpec]) -> list[TensorSpec]:
    """Reference builds made before specs recorded ``value_range`` get the range of their shipped
    signature (``digits``: 0..16); every other manifest is taken as written."""
    known = SIGNATURES.get(manifest["name"])
    if known is None or "import" in manifest:
        return specs
    ranges = {spec.name: spec.value_range for spec in known[0]}
    return [
        TensorSpec(s.name, s.datatype, s.shape, ranges.get(s.name)) if s.value_range is None else s for s in specs
    ]
