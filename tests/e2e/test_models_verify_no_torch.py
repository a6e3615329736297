"""An edge device has no torch: ``fogline models verify --hashes-only`` must work there all the same.

It is the check deploy/README.md tells operators to run after copying a model repository onto a
device. torch is made unimportable in the child (as on a base install) rather than uninstalled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.models]

REPO = Path(__file__).resolve().parents[2]
#: ``fogline`` with torch (and the other model-building packages) unimportable, as on an edge device.
NO_TORCH = (
    "import sys\n"
    "for name in ('torch', 'torchvision', 'onnxscript', 'sklearn', 'transformers'):\n"
    "    sys.modules[name] = None\n"
    "from fogline.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m]), 'torch'\n"
    "sys.exit(code)\n"
)


def _fogline_without_torch(*args: str, env_models: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("FOGLINE_MODELS", None)
    if env_models is not None:
        env["FOGLINE_MODELS"] = str(env_models)
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_hashes_only_verify_runs_without_torch(model_repo, tmp_path):
    # The repository the unit reads: FOGLINE_MODELS, no DIR argument.
    good = _fogline_without_torch("models", "verify", "--hashes-only", env_models=model_repo)
    assert good.returncode == 0, good.stderr
    assert "digits 1: ok" in good.stdout and "minilm 1: ok" in good.stdout

    copy = tmp_path / "models"  # a copy gone wrong on the way to the device
    shutil.copytree(model_repo / "digits", copy / "digits")
    target = copy / "digits" / "1" / "model.int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    bad = _fogline_without_torch("models", "verify", str(copy), "--hashes-only")
    assert bad.returncode == 1 and "model.int8.onnx: sha256 mismatch" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
