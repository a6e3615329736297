"""The README's "Bring your own model" walk-through, run as written: its shell block (with the Python it
feeds to ``python -``) is taken from README.md and run with bash in an empty folder.

What differs from a user's paste, and why: the ``pip install`` line is left out (the test environment
is the project's); the cloud and the agent get free ports instead of 8001 and 8500 (and
``fogline agent status`` the agent's), and the cloud's metrics endpoint any free port (other servers on
this machine may hold the fixed ones); the
environment's ``bin`` comes first on PATH, so ``python`` and ``fogline`` are this checkout's. When
``import torchvision`` fails (the PyPI wheel is built against CUDA torch, and its C++ operators do not
load on the CPU build), torchvision's model builders come from a ``pip install --no-deps --target``
copy through a small package shim, as in ``tests/byom_sources.py``; without either the test is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient (dev extra) missing"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Bring your own model"
TORCHVISION = "torchvision==0.28.0"
TORCHVISION_DIR = REPO_ROOT / ".cache" / "torchvision-0.28.0"


def walkthrough() -> str:
    """The first ``bash`` block after the section heading, without its ``pip install`` lines."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"README.md: no bash block under {SECTION!r}"
    return "\n".join(line for line in block.group(1).splitlines() if not line.startswith("pip install"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchvision_path(tmp: Path) -> str | None:
    """Extra PYTHONPATH entry that makes ``import torchvision`` give the model builders; "" when the
    environment's torchvision imports; None when there is none to be had."""
    probe = subprocess.run([sys.executable, "-c", "import torchvision.models"], capture_output=True, timeout=120)
    if probe.returncode == 0:
        return ""
    if not any(TORCHVISION_DIR.glob("torchvision-*.dist-info")):
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                               str(TORCHVISION_DIR), TORCHVISION], capture_output=True, timeout=600)
        if done.returncode != 0:
            return None
    shim = tmp / "shim" / "torchvision"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(f"__path__ = [{str(TORCHVISION_DIR / 'torchvision')!r}]\nfrom . import models\n")
    return str(shim.parent)


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    extra = torchvision_path(tmp_path)
    if extra is None:
        pytest.skip(f"torchvision cannot be imported or installed ({TORCHVISION})")
    script = walkthrough()
    assert "127.0.0.1:8001" in script and "127.0.0.1:8500" in script
    script = (script.replace("127.0.0.1:8001", f"127.0.0.1:{free_port()}")
              .replace("127.0.0.1:8500", f"127.0.0.1:{free_port()}")
              .replace("fogline cloud serve ", "fogline cloud serve --metrics-port 0 "))
    # `fogline agent status` asks the default address unless told: give it the agent's
    agent = re.search(r'listen: "(127\.0\.0\.1:\d+)"', script)
    assert agent
    script = script.replace("fogline agent status ", f"fogline agent status --listen {agent.group(1)} ")
    work = tmp_path / "work"
    work.mkdir()
    (work / "walkthrough.sh").write_text(script)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1")
    env.pop("FOGLINE_MODELS", None)
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH", "")) if p)
    # output to files, not pipes: a server left running after a failed step would hold a pipe open
    with open(tmp_path / "out.txt", "w") as stdout, open(tmp_path / "err.txt", "w") as stderr:
        proc = subprocess.Popen(["bash", "-e", "walkthrough.sh"], cwd=work, env=env, stdout=stdout, stderr=stderr,
                                start_new_session=True)
        try:
            proc.wait(timeout=420)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the cloud and agent it started, should it have stopped early
            except ProcessLookupError:
                pass
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert proc.returncode == 0, (out[-2000:], err[-4000:])
    assert "imported resnet version 1 -> models/resnet/1" in out, out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("edge ", "cloud "))}
    assert lines["edge"].startswith("edge edge [") and lines["cloud"].startswith("cloud cloud ["), out
    assert (work / "byom" / "models" / "resnet" / "1" / "manifest.json").is_file()
