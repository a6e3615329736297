"""Check a built model repository: every file's hash, then measured fidelity against the gates.

``verify_version`` returns a ``VerifyResult`` for one ``DIR/<name>/<version>``: the hash problems
(missing, resized, corrupt or unlisted files) and, when the hashes are sound, the fidelity measured
afresh (the same measurement the build records) and the gates it fails. The command line prints one
line per version and exits non-zero when anything is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fogline.modelbuild.fidelity import gate_failures, gated_metrics
from fogline.models.distribution import EDGE_ROLES, files_of_roles
from fogline.models.repository import ModelRepository, hash_problems, read_manifest


@dataclass
class VerifyResult:
    """Outcome for one model version; ``ok`` when no hash problem and no gate failure."""

    name: str
    version: str
    path: Path
    files: int = 0
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: The build missed a gate and wrote the model anyway (``fogline models build --accept-fidelity``).
    accepted_below_gate: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line a person can read: what was checked and what was found."""
        head = f"{self.name} {self.version}"
        if not self.ok:
            accepted = " (built below its gate with --accept-fidelity)" if self.accepted_below_gate else ""
            return f"{head}: FAILED{accepted}: " + "; ".join(self.problems)
        return f"{head}: ok ({self.files} files hash-verified; {describe_metrics(self.metrics)})"


def describe_metrics(metrics: dict[str, Any]) -> str:
    """Short text of the gated figures of a model."""
    if not metrics:
        return "fidelity not measured"
    # Which figures a measurement holds says how to print them (not the model's name: a user may import
    # a model called ``digits``).
    if {"full_accuracy", "fp32_onnx_accuracy", "int8_accuracy"} <= metrics.keys():
        return (
            f"accuracy torch FP32 {100 * metrics['full_accuracy']:.2f}%, ONNX FP32 "
            f"{100 * metrics['fp32_onnx_accuracy']:.2f}%, INT8 {100 * metrics['int8_accuracy']:.2f}%"
        )
    int8 = metrics.get("int8", {})
    if {"cosine_mean", "nn_agreement"} <= int8.keys():
        return f"INT8 mean cosine {int8['cosine_mean']:.4f}, nearest-neighbour agreement {int8['nn_agreement']:.3f}"
    numbers = ", ".join(f"{k} {v:g}" for k, v in int8.items() if isinstance(v, int | float))
    return "imported; INT8 at import: " + (numbers or "no figures recorded")


def measure(name: str, version_dir: Path) -> dict[str, Any]:
    """Re-run the build's fidelity measurement on an existing version directory."""
    if name == "minilm":
        from fogline.modelbuild.build_minilm import measure_minilm

        return measure_minilm(version_dir)
    if name == "digits":
        from fogline.modelbuild.build_digits import measure_digits

        return measure_digits(version_dir)
    raise ValueError(f"no fidelity measurement for model {name!r}")


def verify_version(version_dir: Path, remeasure: bool = True, *, edge_only: bool = False) -> VerifyResult:
    """Hash-check one version directory and, if sound and asked to, re-measure its fidelity.
    ``edge_only``: check only the files the edge runtime reads (a device's copy, as ``fogline models
    pull`` and the agent's own fetch leave it, holds no others); never re-measures."""
    version_dir = Path(version_dir)
    result = VerifyResult(version_dir.parent.name, version_dir.name, version_dir)
    try:
        manifest = read_manifest(version_dir)
    except Exception as exc:
        result.problems.append(str(exc))
        return result
    result.name = manifest["name"]
    result.files = len(manifest["files"])
    result.accepted_below_gate = bool(manifest.get("gate", {}).get("accepted_below_gate"))
    if edge_only:
        edge_files = files_of_roles(manifest, EDGE_ROLES)
        result.files = len(edge_files)
        result.problems += hash_problems(version_dir, dict(manifest, files=edge_files), extra_files=False)
        return result
    result.problems += hash_problems(version_dir, manifest)
    if result.problems or not remeasure:
        return result
    if "import" in manifest and "build" not in manifest:
        # a user's import: its evaluation rows are the user's, not shipped, so report what it measured
        # (the reference builds are imports too, of shipped sources, and are measured again below)
        result.metrics = manifest.get("metrics", {})
        return result
    try:
        result.metrics = measure(result.name, version_dir)
    except Exception as exc:
        result.problems.append(f"cannot measure fidelity: {type(exc).__name__}: {exc}")
        return result
    result.problems += gate_failures(result.name, gated_metrics(result.name, result.metrics))
    return result


def verify_repository(root: Path, names: list[str] | None = None, remeasure: bool = True, *,
                      edge_only: bool = False) -> list[VerifyResult]:
    """Verify every version of every model (or of ``names``) under ``root``."""
    repo = ModelRepository(root)
    results = []
    for name in names or repo.names():
        for version in repo.versions(name) or [None]:
            if version is None:
                missing = VerifyResult(name, "-", Path(root) / name)
                if name in repo.names():
                    missing.problems.append(f"{Path(root) / name}: no built version")
                else:
                    held = ", ".join(repo.names()) or "none"
                    missing.problems.append(f"no model {name!r} in {root} (models there: {held})")
                results.append(missing)
                continue
            results.append(verify_version(repo.resolve(name, version), remeasure=remeasure, edge_only=edge_only))
    return results
