"""Serving settings: validation, the fleet file's cloud.serving block, flags over the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fogline.cloud.cli import build_parser, settings_from_args
from fogline.cloud.settings import ServingSettings, parse_listen, settings_from_fleet
from fogline.errors import ConfigError
from fogline.fleet import FleetConfigError

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


def test_fleet_block_is_read_and_relative_models_dir_is_beside_the_file(tmp_path: Path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("version: 1\ncloud:\n  serving:\n    max_batch_size: 8\n    models_dir: store\n"
                     "    grace_s: 3.0\n    metrics_port: null\n")
    settings = settings_from_fleet(fleet)
    assert settings.max_batch_size == 8 and settings.grace_s == 3
    assert settings.models_dir == tmp_path / "store" and settings.metrics_port is None
    fleet.write_text("version: 1\ncloud:\n  serving:\n    max_batch_size: zero\n")
    with pytest.raises(FleetConfigError, match=r"fleet\.yaml:4:\d+: cloud\.serving\.max_batch_size"):
        settings_from_fleet(fleet)
    fleet.write_text("cloud: [1, 2\n")
    with pytest.raises(ConfigError):
        settings_from_fleet(fleet)


def test_flags_override_the_yaml(tmp_path: Path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("version: 1\ncloud:\n  serving: {max_batch_size: 8, max_queue_size: 5, listen: '0.0.0.0:9001'}\n")
    args = build_parser("fogline cloud").parse_args(
        ["serve", "--config", str(fleet), "--max-batch-size", "2", "--metrics-port", "off", "--device", "cpu"]
    )
    settings = settings_from_args(args)
    assert settings.max_batch_size == 2 and settings.max_queue_size == 5
    assert settings.listen == "0.0.0.0:9001" and settings.metrics_port is None and settings.device == "cpu"
    args = build_parser("fogline cloud").parse_args(["serve"])
    assert settings_from_args(args) == ServingSettings()
