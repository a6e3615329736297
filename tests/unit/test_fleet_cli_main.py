"""``fogline fleet validate | render | schema`` called in-process through ``main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fogline.fleet.cli import MASK, main

pytestmark = pytest.mark.unit

EXAMPLE = str(Path(__file__).resolve().parents[2] / "deploy" / "fleet.example.yaml")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in (
        "FOGLINE_CLOUD_ENDPOINT",
        "FOGLINE_CLOUD_TOKEN",
        "FOGLINE_AGENT_LISTEN",
        "FOGLINE_LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_validate_the_example(capsys):
    assert main(["validate", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{EXAMPLE}: ok, revision ")
    assert "12 devices in 4 groups, cloud 127.0.0.1:8001" in out


def test_validate_verbose_lists_every_device(capsys):
    assert main(["validate", "-v", EXAMPLE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 13
    assert lines[2].split()[:3] == ["cam-003", "group=factory-a", "policy=cascade"]
    assert "models=minilm@1" in lines[7]


def test_validate_reports_every_problem_and_fails(tmp_path, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text("version: 1\ndefaults:\n  routing: {polcy: hedged}\ndevices:\n  a: {group: nope}\n")
    assert main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{path}:3:13: defaults.routing.polcy: unknown key 'polcy'; did you mean 'policy'?",
        f"{path}:5:14: devices.a.group: unknown group 'nope'; this file defines no groups",
        f"{path}: invalid, 2 problems",
    ]


def test_render_prints_the_merged_settings_as_yaml(capsys, monkeypatch):
    monkeypatch.setenv("FOGLINE_CLOUD_TOKEN", "top-secret")
    assert main(["render", EXAMPLE, "--device", "cam-003"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# effective settings of device cam-003")
    assert "top-secret" not in out
    data = yaml.safe_load(out)
    assert data["device_id"] == "cam-003" and data["group"] == "factory-a"
    assert data["routing"]["slo_ms"] == 40 and data["routing"]["policy"] == "cascade"
    assert data["routing"]["rtt_threshold_ms"] == 150 and data["models"] == [
        {"name": "digits", "version": None}
    ]
    assert data["cloud"]["credentials"]["token"] == MASK
    assert data["labels"] == {"site": "factory-a", "network": "wired"}


def test_render_json_and_secrets_on_request(capsys, monkeypatch):
    monkeypatch.setenv("FOGLINE_CLOUD_TOKEN", "top-secret")
    monkeypatch.setenv("FOGLINE_CLOUD_B_ENDPOINT", "10.9.9.9:8001")
    assert main(["render", EXAMPLE, "--device", "gw-103", "--format", "json", "--show-secrets"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cloud"]["credentials"]["token"] == "top-secret"
    assert data["cloud"]["endpoint"] == "10.9.9.9:8001"
    assert data["cloud"]["keepalive"] == {"time_ms": 20000, "timeout_ms": 5000}
    assert len(data["revision"]) == 12


def test_render_unknown_device(capsys):
    assert main(["render", EXAMPLE, "--device", "cam-03"]) == 1
    assert capsys.readouterr().err == f"{EXAMPLE}: devices: no device 'cam-03'; did you mean 'cam-003'?\n"


def test_schema_to_stdout_and_to_a_file(tmp_path, capsys):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"].endswith("2020-12/schema") and "devices" in printed["properties"]
    target = tmp_path / "fleet.schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert json.loads(target.read_text()) == printed
    assert main(["schema", "-o", str(tmp_path / "no" / "such" / "dir.json")]) == 1
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [[], ["validate"], ["render", EXAMPLE], ["frobnicate"], ["validate", EXAMPLE, "--bogus"]]
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "validate" in capsys.readouterr().out
