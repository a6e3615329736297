"""Build the reference models into a repository, safely and only when needed.

``build_models(out)`` builds each model into a temporary directory next to its final place and
renames it into ``out/<name>/<version>`` only when every file and the manifest are written, so a
failed or interrupted build never leaves a half-written version. ``ensure_models(root)`` is what
tests and demos call: it returns at once when every model is present, has the current build
revision and passes its hash check, and otherwise builds what is missing. Both hold an exclusive
``fcntl`` lock on ``out/.build.lock`` while building, so several processes may call them at once:
one builds, the others wait and then find the models ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .repository import hash_problems, read_manifest, write_manifest

MODEL_NAMES = ("minilm", "digits")

#: Bumped whenever a recipe or builder changes what gets built; older builds are rebuilt by ensure_models.
BUILD_REVISION = 7

LOCK_NAME = ".build.lock"
VERSION = "1"


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
        from .build_minilm import build_minilm

        return build_minilm
    if name == "digits":
        from .build_digits import build_digits

        return build_digits
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")


def _check_names(names: Sequence[str] | None) -> list[str]:
    chosen = list(MODEL_NAMES if names is None else names)
    unknown = [n for n in chosen if n not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; expected one of {', '.join(MODEL_NAMES)}")
    return chosen


def _build_one(root: Path, name: str, progress: Progress) -> Path:
    """Build ``name`` into a temporary sibling directory, then move it into place."""
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
        write_manifest(version_dir, manifest)
        if final.exists():
            os.rename(final, work / "old")
        os.rename(version_dir, final)
        report(f"done: {final}")
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_models(out: Path | str, names: Sequence[str] | None = None, progress: bool = True) -> dict[str, Path]:
    """Build ``names`` (default: all) into ``out/<name>/1``, replacing what is there; returns the dirs."""
    root = Path(out)
    chosen = _check_names(names)
    reporter = Progress(progress)
    with build_lock(root):
        return {name: _build_one(root, name, reporter) for name in chosen}


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
