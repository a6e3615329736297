"""The live agreement benchmark's quick mode end to end: a cloud, two agents, one round.

The report must be written with the edge p50 of both agents, the cloud's answered shadows (none from
the 0% agent) and the agreement rows of both reference models; no answer may differ between the
agents. The timed difference itself is not asserted: that is the benchmark's job on a quiet machine.
"""

from __future__ import annotations

import pytest

from bench.shadow import main

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.models]


def test_quick_mode_writes_the_report(model_repo, tmp_path):
    out = tmp_path / "shadow.md"
    code = main(["--quick", "--rounds", "1", "--models", str(model_repo), "--out", str(out)], prog="test")
    text = out.read_text()
    assert code == 0, text
    assert "| digits | " in text and "| minilm | " in text
    assert "| 0% | digits | 100/s | 0.00/s |" in text  # the agent that does not shadow sends the cloud nothing
    assert "| digits | 1 | top1_agreement |" in text and "| minilm | 1 | cosine_mean |" in text
    assert ", 0 differed." in text
