"""The MLServer comparison's quick mode end to end: both servers start, both answer, the report is written.

A tiny run (one run, one second per row): the figures mean nothing here, only that every row of both
servers was measured without errors, and that the tritonclient load generator ran in its own process
(it must never import fogline's stubs).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.models]


def test_quick_mode_measures_both_servers_and_writes_the_report(model_repo, mlserver_bin, repo_root, tmp_path):
    from bench.cloud_peer import CLOSED, OPEN, SERVERS, build_parser, gates, measure, write_report

    args = build_parser().parse_args(["--quick", "--models", str(model_repo), "--out", str(tmp_path / "peer.md"),
                                      "--explain", str(tmp_path / "none.md")])
    args.runs, args.seconds, args.warmup = 1, 1.0, 0.3
    rows, trace = measure(args, tmp_path)
    keys = [f"c={c}" for c in CLOSED] + [f"open {s:.0%}" for s in OPEN]
    for name in SERVERS:  # a busy machine may answer nothing inside one row's second: judged per server
        for key in keys:
            assert rows[name, key].errors == 0, f"{name} {key}: {rows[name, key].error_sample}"
        assert sum(rows[name, key].rates[0] for key in keys) > 0, f"{name} answered nothing"
    assert all(t["ahead_max"] <= 1 for t in trace.values())  # fogline's trace: nobody passed over twice
    assert len(gates(rows)) == 5
    write_report(args.out, args, rows, trace, "quick test")
    report = args.out.read_text()
    assert "## Gates" in report and "| c=32 | mlserver |" in report and "| c=32 | fogline |" in report


def test_the_client_never_imports_fogline_stubs(repo_root, tmp_path):
    code = ("import sys, bench.cloud_peer_client; import tritonclient.grpc.aio; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('fogline'))))")
    done = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=repo_root, capture_output=True,
                          text=True, check=True)
    assert json.loads(done.stdout) == []
