"""Serving settings: validation, the fleet YAML's cloud.serving section, flags over YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fogline.errors import ConfigError

from cloud.cli import build_parser, settings_from_args
from cloud.settings import ServingSettings, _settings_from_yaml, parse_listen, settings_from_mapping

pytestmark = pytest.mark.unit


def test_defaults_are_valid_and_frozen():
    settings = ServingSettings()
    assert settings.host_port == ("0.0.0.0", 8001)
    assert settings.max_batch_size >= 1 and settings.metrics_port == 8002
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_batch_size = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("listen", "localhost", "HOST:PORT"),
        ("listen", "h:70000", "HOST:PORT"),
        ("device", "tpu", "cpu, cuda"),
        ("max_batch_size", 0, "max_batch_size: expected an integer >= 1"),
        ("max_batch_size", True, "max_batch_size"),
        ("max_queue_delay_us", -1, "max_queue_delay_us"),
        ("max_queue_size", 0, "max_queue_size"),
        ("max_message_bytes", 10, "max_message_bytes"),
        ("metrics_port", 70000, "metrics_port: expected an integer 0..65535"),
        ("grace_s", -2, "grace_s"),
    ],
)
def test_bad_values_name_the_key_and_what_is_valid(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        ServingSettings(**{key: value})


def test_parse_listen():
    assert parse_listen("[::1]:9000") == ("[::1]", 9000)
    with pytest.raises(ConfigError):
        parse_listen(":9000")


def test_mapping_rejects_unknown_keys_and_null_metrics_port_turns_metrics_off():
    with pytest.raises(ConfigError, match="unknown key\\(s\\) max_batch"):
        settings_from_mapping({"max_batch": 3}, source="x.yaml")
    assert settings_from_mapping({"metrics_port": None}).metrics_port is None
    assert settings_from_mapping({"device": None}).device == "auto"


def test_yaml_section_is_read_and_relative_models_dir_is_beside_the_file(tmp_path: Path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("cloud:\n  serving:\n    max_batch_size: 8\n    models_dir: store\n    grace_s: 3\n")
    settings = _settings_from_yaml(fleet)
    assert settings.max_batch_size == 8 and settings.grace_s == 3
    assert settings.models_dir == tmp_path / "store"
    fleet.write_text("cloud:\n  serving:\n    max_batch_size: zero\n")
    with pytest.raises(ConfigError, match=r"fleet\.yaml: cloud\.serving: max_batch_size"):
        _settings_from_yaml(fleet)
    fleet.write_text("cloud: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        _settings_from_yaml(fleet)


def test_flags_override_the_yaml(tmp_path: Path, monkeypatch):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("cloud:\n  serving: {max_batch_size: 8, max_queue_size: 5, listen: '0.0.0.0:9001'}\n")
    # Read the YAML section directly even where agent.config.load_fleet exists.
    monkeypatch.setattr("cloud.settings.settings_from_fleet", _settings_from_yaml, raising=True)
    monkeypatch.setattr("cloud.cli.settings_from_fleet", _settings_from_yaml, raising=True)
    args = build_parser("fogline cloud").parse_args(
        ["serve", "--config", str(fleet), "--max-batch-size", "2", "--metrics-port", "off", "--device", "cpu"]
    )
    settings = settings_from_args(args)
    assert settings.max_batch_size == 2 and settings.max_queue_size == 5
    assert settings.listen == "0.0.0.0:9001" and settings.metrics_port is None and settings.device == "cpu"
    args = build_parser("fogline cloud").parse_args(["serve"])
    assert settings_from_args(args) == ServingSettings()
