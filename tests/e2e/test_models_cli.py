"""``fogline models build`` / ``verify`` as a user runs them, and concurrent ``ensure_models``.

Determinism is checked on ``digits`` only (it trains a network, the part most likely to drift); the
minilm build runs once, through the shared ``model_repo`` fixture.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.models, pytest.mark.slow]


def _fogline(repo_root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "fogline.cli", "models", *args],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _files(version_dir: Path) -> dict:
    return json.loads((version_dir / "manifest.json").read_text())["files"]


def test_digits_build_is_deterministic_and_concurrent_ensure_is_safe(repo_root: Path, tmp_path: Path) -> None:
    first = _fogline(repo_root, "build", "--out", str(tmp_path / "a"), "--only", "digits")
    assert first.returncode == 0, first.stderr
    assert "[digits" in first.stderr  # progress lines
    assert "built digits" in first.stdout
    # Two processes race to build the same repository; the lock makes one build and one wait.
    code = (
        "import sys; from fogline.modelbuild.build import ensure_models; "
        f"ensure_models({str(tmp_path / 'b')!r}, names=['digits'])"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    racers = [subprocess.Popen([sys.executable, "-c", code], cwd=repo_root, env=env, stderr=subprocess.PIPE)
              for _ in range(2)]  # fmt: skip
    for proc in racers:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    a, b = tmp_path / "a" / "digits" / "1", tmp_path / "b" / "digits" / "1"
    assert _files(a) == _files(b)
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    assert sorted(p.name for p in (tmp_path / "b" / "digits").iterdir()) == ["1"]  # no temp dirs left


def test_verify_passes_on_a_good_build_and_catches_a_flipped_byte(
    repo_root: Path, model_repo: Path, tmp_path: Path
) -> None:
    good = _fogline(repo_root, "verify", str(model_repo))
    assert good.returncode == 0, good.stderr
    assert "minilm 1: ok" in good.stdout and "digits 1: ok" in good.stdout

    copy = tmp_path / "repo"
    shutil.copytree(model_repo / "digits", copy / "digits")
    target = copy / "digits" / "1" / "model.int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x40
    target.write_bytes(bytes(data))
    bad = _fogline(repo_root, "verify", str(copy))
    assert bad.returncode == 1
    assert "digits 1: FAILED" in bad.stderr and "model.int8.onnx: sha256 mismatch" in bad.stderr

    target.unlink()
    missing = _fogline(repo_root, "verify", str(copy), "--hashes-only")
    assert missing.returncode == 1 and "model.int8.onnx: missing" in missing.stderr


def test_verify_usage_errors(repo_root: Path, model_repo: Path, tmp_path: Path) -> None:
    nothing = _fogline(repo_root, "verify", str(tmp_path / "absent"))
    assert nothing.returncode == 1 and "no such directory" in nothing.stderr
    empty = _fogline(repo_root, "verify", str(tmp_path))
    assert empty.returncode == 1 and "no models found" in empty.stderr
    usage = _fogline(repo_root, "build", "--only", "resnet")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    # verify --only takes any model of the repository (a user's own import), not just the references
    shutil.copytree(model_repo / "digits", tmp_path / "repo" / "shapes")
    own = _fogline(repo_root, "verify", str(tmp_path / "repo"), "--only", "shapes", "--hashes-only")
    assert own.returncode == 0 and ": ok (3 files hash-verified" in own.stdout, own.stderr
    unknown = _fogline(repo_root, "verify", str(tmp_path / "repo"), "--only", "nope")
    assert unknown.returncode == 1 and "no model 'nope'" in unknown.stderr and "models there: shapes" in unknown.stderr
    bare = _fogline(repo_root)
    assert bare.returncode == 2


def test_verify_fails_when_fidelity_is_below_the_gate(repo_root: Path, model_repo: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from fogline.models.repository import read_manifest, write_manifest

    vdir = tmp_path / "digits" / "1"
    shutil.copytree(model_repo / "digits" / "1", vdir)
    # A damaged edge model whose hashes are re-recorded: only the fidelity check can catch it.
    model = onnx.load(str(vdir / "model.fp32.onnx"))
    last = next(i for i in reversed(model.graph.initializer) if len(i.dims) == 2)
    weights = numpy_helper.to_array(last)
    last.CopyFrom(numpy_helper.from_array(np.roll(weights, 3, axis=0), last.name))
    onnx.save(model, str(vdir / "model.int8.onnx"))
    manifest = read_manifest(vdir)
    manifest.pop("files")
    write_manifest(vdir, manifest)
    bad = _fogline(repo_root, "verify", str(tmp_path))
    assert bad.returncode == 1
    assert "digits 1: FAILED" in bad.stderr and "points below FP32" in bad.stderr


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_build_below_its_gate_fails_and_writes_nothing(repo_root: Path, model_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    shutil.copytree(model_repo / "digits", out / "digits")  # a good version already in place
    before = _tree(out / "digits")
    # Impossibly strict: INT8 would have to beat FP32 by 100 accuracy points.
    bad = _fogline(repo_root, "build", "--out", str(out), "--only", "digits", "--quiet",
                   "--gate", "digits.accuracy_drop_points_max=-100")  # fmt: skip
    assert bad.returncode == 1, bad.stderr
    lines = bad.stderr.splitlines()
    miss = [line for line in lines if line.startswith("digits: ")]
    assert len(miss) == 1, bad.stderr
    assert re.fullmatch(r"digits: INT8 accuracy \d+\.\d\d% is -?\d+\.\d\d points below FP32 \d+\.\d\d%, "
                        r"more than the gate allows \(-100 points\)", miss[0]), miss[0]  # fmt: skip
    assert "not written" in lines[-1] and "--accept-fidelity" in lines[-1]
    assert "built digits" not in bad.stdout
    assert _tree(out / "digits") == before  # the old version untouched, no temporary directory left

    fresh = tmp_path / "fresh"
    nothing = _fogline(repo_root, "build", "--out", str(fresh), "--only", "digits", "--quiet",
                       "--gate", "digits.accuracy_drop_points_max=-100")  # fmt: skip
    assert nothing.returncode == 1
    assert [p.name for p in fresh.rglob("*") if p.name != ".build.lock" and not p.is_dir()] == []
    assert not (fresh / "digits" / "1").exists()


def test_accept_fidelity_writes_the_model_warns_and_records_it(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    done = _fogline(repo_root, "build", "--out", str(out), "--only", "digits", "--quiet",
                    "--gate", "digits.accuracy_drop_points_max=-100", "--accept-fidelity")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "built digits" in done.stdout
    warning = next(line for line in done.stderr.splitlines() if line.startswith("warning: "))
    assert "digits: INT8 accuracy" in warning and "(-100 points)" in warning and "accepted below the gate" in warning
    gate = json.loads((out / "digits" / "1" / "manifest.json").read_text())["gate"]
    assert gate["accepted_below_gate"] is True and gate["passed"] is False
    assert gate["limits"] == {"accuracy_drop_points_max": -100.0}
    assert gate["misses"] and "more than the gate allows" in gate["misses"][0]
    # The manifest's record is part of what the hashes protect (the file table covers every other file).
    check = _fogline(repo_root, "verify", str(out), "--hashes-only")
    assert check.returncode == 0, check.stderr


def test_a_gate_can_only_be_made_stricter(repo_root: Path, tmp_path: Path) -> None:
    looser = _fogline(repo_root, "build", "--out", str(tmp_path), "--gate", "digits.accuracy_drop_points_max=5")
    assert looser.returncode == 2 and "looser than the release gate 1" in looser.stderr
    assert "--accept-fidelity" in looser.stderr
    unknown = _fogline(repo_root, "build", "--out", str(tmp_path), "--gate", "digits.cosine_mean_min=1")
    assert unknown.returncode == 2 and "its gates: accuracy_drop_points_max" in unknown.stderr
    assert not any(tmp_path.iterdir())
