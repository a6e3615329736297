"""``fogline demo`` end to end: every phase shows up, the right tier answers, nothing fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.models, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_all_phases_and_answers_everything(model_repo):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "fogline.cli", "demo", "--models", str(model_repo), "--seconds-per-phase", "3"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=180,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "every request was answered" in out.stdout
    rows = {}
    for line in out.stdout.splitlines():
        match = re.match(r"(good \(5 ms\)|slow \(300 ms one way\)|down \(blackhole\)|good again \(5 ms\))\s+"
                         r"(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(\d+)\s+(\d+)$", line)
        if match:
            rows[match.group(1)] = [int(g) for g in match.groups()[1:]]
    table = out.stdout[out.stdout.find("summary"):]
    assert set(rows) == {"good (5 ms)", "slow (300 ms one way)", "down (blackhole)", "good again (5 ms)"}, table
    assert all(row[5] == 0 for row in rows.values()), table  # no errors in any phase
    requests, cloud = rows["good (5 ms)"][:2]
    assert cloud >= 0.5 * requests, table  # the cloud answers while the network is good...
    requests, _cloud, edge = rows["down (blackhole)"][:3]
    assert edge == requests, table  # ...and the edge while it is down


def test_demo_over_mutual_tls_with_tokens(model_repo):
    pytest.importorskip("trustme")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "fogline.cli", "demo", "--tls", "--models", str(model_repo),
         "--seconds-per-phase", "2"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=180,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "over mutual TLS with tokens" in out.stdout and "every request was answered" in out.stdout
    good = next(line for line in out.stdout.splitlines() if line.startswith("good (5 ms) "))
    requests, cloud = (int(v) for v in good.split()[3:5])
    assert cloud >= 0.5 * requests, out.stdout  # the cloud answers through both TLS hops
    folder = re.search(r"tokens in (\S+) \(removed", out.stdout).group(1)
    assert not Path(folder).exists()  # the run's keys and tokens are gone
