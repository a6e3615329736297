"""``fogline fleet`` as a user runs it: exit codes, one line per problem, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "fleet.example.yaml"


def fogline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FOGLINE_")}
    return subprocess.run(
        [sys.executable, "-m", "fogline.cli", "fleet", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
        timeout=60,
    )


def test_validate_and_render_the_example():
    done = fogline("validate", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert "ok, revision" in done.stdout and "12 devices" in done.stdout
    done = fogline("render", str(EXAMPLE), "--device", "lab-02", env={"FOGLINE_LOG_LEVEL": "warning"})
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(done.stdout)
    assert data["routing"]["policy"] == "cloud_only" and data["listen"] == "127.0.0.1:8602"
    # the lab group overrides level and format; the per-logger levels of the defaults merge in
    assert data["logging"] == {"level": "DEBUG", "format": "text", "levels": {"fogline.agent.cloud_link": "INFO"}}


def test_schema_output_validates_the_example():
    done = fogline("schema")
    assert done.returncode == 0, done.stderr
    jsonschema.validate(yaml.safe_load(EXAMPLE.read_text()), json.loads(done.stdout))


def test_a_file_with_several_errors(tmp_path):
    broken = (
        EXAMPLE.read_text().replace("policy: hedged", "policy: hedge").replace("slo_ms: 40", "slo_ms: -40")
    )
    path = tmp_path / "fleet.yaml"
    path.write_text(broken)
    done = fogline("validate", str(path))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 3
    assert lines[0].startswith(f"{path}:") and "groups.factory-b.routing.policy: must be" in lines[0]
    assert "devices.cam-003.routing.slo_ms: must be greater than 0, got -40" in lines[1]
    assert lines[2] == f"{path}: invalid, 2 problems"


def test_a_missing_environment_variable(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("version: 1\ncloud:\n  endpoint: ${FOGLINE_TEST_CLOUD}\n")
    done = fogline("validate", str(path))
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        f"{path}:3:13: cloud.endpoint: environment variable FOGLINE_TEST_CLOUD is not set "
        "(give a default with ${FOGLINE_TEST_CLOUD:-value})"
    )
    assert fogline("validate", str(path), env={"FOGLINE_TEST_CLOUD": "10.0.0.9:8001"}).returncode == 0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"version: 1\ndevices:\n\tcam-1: {}\n",
        b"version: 1\ndevices: [cam-1\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"\xfe\xff\x00v\x00e",
        b"- a\n- b\n",
        b"version: 1\ndevices: {cam-1: {routing: {slo_ms: fast}}}\n",
    ],
    ids=["empty", "tabs", "syntax", "binary", "utf16", "list", "wrong-type"],
)
def test_malformed_files_fail_cleanly(tmp_path, content):
    path = tmp_path / "fleet.yaml"
    path.write_bytes(content)
    done = fogline("validate", str(path))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    problem, summary = done.stderr.splitlines()
    assert problem.startswith(str(path)) and summary == f"{path}: invalid, 1 problem"


def test_missing_file_and_directory(tmp_path):
    for target in (tmp_path / "nope.yaml", tmp_path):
        done = fogline("validate", str(target))
        assert done.returncode == 1 and "Traceback" not in done.stderr
    done = fogline("render", str(tmp_path / "nope.yaml"), "--device", "x")
    assert done.returncode == 1 and done.stderr.strip().endswith("No such file or directory")


def test_usage_errors_exit_2():
    for args in ((), ("render", str(EXAMPLE)), ("validate", str(EXAMPLE), "extra")):
        done = fogline(*args)
        assert done.returncode == 2 and "usage:" in done.stderr


def test_the_fleet_command_never_imports_torch():
    code = (
        "import sys, fogline.fleet, fogline.fleet.cli; fogline.fleet.cli.main(['schema', '-o', '/dev/null']);"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
