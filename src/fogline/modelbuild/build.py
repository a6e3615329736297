"""Build the reference models into a repository, safely and only when needed.

``build_models(out)`` builds each model into a temporary directory next to its final place and
renames it into ``out/<name>/<version>`` only when every file and the manifest are written, so a
failed or interrupted build never leaves a half-written version. ``ensure_models(root)`` is what
tests and demos call: it returns at once when every model is present, has the current build
revision and passes its hash check, and otherwise builds what is missing. Both hold an exclusive
``fcntl`` lock on ``out/.build.lock`` while building, so several processes may call them at once:
one builds, the others wait and then find the models ready.

Each build measures its model's fidelity and checks it against the gates (``fidelity.GATES``, or
stricter ones passed in) before the model is moved into place. A model that misses a gate is not
written (the version already there, if any, stays) and ``FidelityGateMissed`` names every miss,
unless ``accept_fidelity`` is set: then it is written, a warning goes to stderr, and its manifest's
``gate`` records the limits, the misses and ``accepted_below_gate: true``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fogline.modelbuild.fidelity import GATES, gate_misses, gated_metrics
from fogline.models.repository import hash_problems, read_manifest, write_manifest

MODEL_NAMES = ("minilm", "digits")

#: Bumped whenever a recipe or builder changes what gets built; older builds are rebuilt by ensure_models.
#: 8: the reference models are imports of shipped sources (TorchScript full form, import manifest).
#: 9: minilm's positions no longer carry a device, so its TorchScript runs on CUDA too.
BUILD_REVISION = 9

LOCK_NAME = ".build.lock"
VERSION = "1"


class FidelityGateMissed(Exception):
    """Models that missed a fidelity gate and were therefore not written.

    ``misses`` maps each such model to one line with the measured figures and the gates; ``built``
    maps the models of the same call that passed (and were written) to their directories.
    """

    def __init__(self, misses: dict[str, str], built: dict[str, Path] | None = None) -> None:
        super().__init__("; ".join(misses.values()))
        self.misses = misses
        self.built = dict(built or {})


class Progress:
    """Prints ``[model step/total] message (elapsed)`` lines to stderr, or nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._start = time.monotonic()

    def reporter(self, name: str) -> Callable[[str], None]:
        count = 0

        def report(message: str) -> None:
            nonlocal count
            count += 1
            if self.enabled:
                elapsed = time.monotonic() - self._start
                print(f"[{name} {count}] {message} ({elapsed:.0f}s)", file=sys.stderr, flush=True)

        return report


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on ``root/.build.lock`` (blocks until any other builder is done)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_NAME, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _builder(name: str) -> Callable[..., dict[str, Any]]:
    if name == "minilm":
        from fogline.modelbuild.build_minilm import build_minilm

        return build_minilm
    if name == "digits":
        from fogline.modelbuild.build_digits import build_digits

        return build_digits
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")


def _check_names(names: Sequence[str] | None) -> list[str]:
    chosen = list(MODEL_NAMES if names is None else names)
    unknown = [n for n in chosen if n not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; expected one of {', '.join(MODEL_NAMES)}")
    return chosen


def _gate_record(name: str, manifest: dict[str, Any], limits: Mapping[str, float]) -> list[str]:
    """Check the freshly measured metrics against ``limits``; record the outcome in the manifest."""
    misses = gate_misses(name, gated_metrics(name, manifest["metrics"]), limits)
    manifest["gate"] = {"limits": dict(limits), "passed": not misses, "accepted_below_gate": False}
    if misses:
        manifest["gate"]["misses"] = misses
    return misses


def _build_one(root: Path, name: str, progress: Progress, *, gates: Mapping[str, Mapping[str, float]] | None = None,
               accept_fidelity: bool = False) -> Path:
    """Build ``name`` into a temporary sibling directory, check its gates, then move it into place.

    Raises ``FidelityGateMissed`` (nothing moved, the temporary directory removed) when the model
    misses a gate and ``accept_fidelity`` is not set.
    """
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    for stale in model_dir.glob(".tmp-*"):  # left by a killed build; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    final = model_dir / VERSION
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
    report = progress.reporter(name)
    try:
        version_dir = work / "v"
        version_dir.mkdir()
        manifest = _builder(name)(version_dir, report)
        manifest["version"] = VERSION
        manifest["build"] = {"revision": BUILD_REVISION}
        misses = _gate_record(name, manifest, (gates or GATES).get(name, {}))
        line = f"{name}: " + "; ".join(misses)
        if misses and not accept_fidelity:
            report("below its fidelity gate: not written")
            raise FidelityGateMissed({name: line})
        if misses:
            manifest["gate"]["accepted_below_gate"] = True
            print(f"warning: {line} (written anyway: accepted below the gate)", file=sys.stderr, flush=True)
        write_manifest(version_dir, manifest)
        if final.exists():
            os.rename(final, work / "old")
        os.rename(version_dir, final)
        report(f"done: {final}")
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_models(out: Path | str, names: Sequence[str] | None = None, progress: bool = True, *,
                 gates: Mapping[str, Mapping[str, float]] | None = None,
                 accept_fidelity: bool = False) -> dict[str, Path]:
    """Build ``names`` (default: all) into ``out/<name>/1``, replacing what is there; returns the dirs.

    ``gates`` (default ``fidelity.GATES``) are the limits each model must meet. Every model is built
    even when an earlier one misses; then ``FidelityGateMissed`` lists the misses (those models are
    not written) and the models that were. ``accept_fidelity`` writes them anyway, with a warning.
    """
    root = Path(out)
    chosen = _check_names(names)
    reporter = Progress(progress)
    built: dict[str, Path] = {}
    misses: dict[str, str] = {}
    with build_lock(root):
        for name in chosen:
            try:
                built[name] = _build_one(root, name, reporter, gates=gates, accept_fidelity=accept_fidelity)
            except FidelityGateMissed as exc:
                misses.update(exc.misses)
    if misses:
        raise FidelityGateMissed(misses, built)
    return built


def is_current(root: Path, name: str) -> bool:
    """True when ``root/name/1`` exists, was built by this revision and every hash matches."""
    version_dir = Path(root) / name / VERSION
    try:
        manifest = read_manifest(version_dir)
    except Exception:
        return False
    if manifest.get("build", {}).get("revision") != BUILD_REVISION:
        return False
    return not hash_problems(version_dir, manifest)


def ensure_models(root: Path | str, names: Sequence[str] | None = None, progress: bool = False) -> Path:
    """Make sure ``root`` holds current, intact builds of ``names`` (default: all); build what is not."""
    root = Path(root)
    chosen = _check_names(names)
    if all(is_current(root, n) for n in chosen):
        return root
    reporter = Progress(progress)
    with build_lock(root):
        # Another process may have built them while this one waited for the lock.
        for name in chosen:
            if not is_current(root, name):
                _build_one(root, name, reporter)
    return root
