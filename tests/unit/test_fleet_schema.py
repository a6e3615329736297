"""The JSON Schema from ``fogline fleet schema`` accepts the example fleet and rejects broken copies."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from fogline.fleet import parse_fleet
from fogline.fleet.schema import fleet_schema

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "fleet.example.yaml"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = fleet_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture()
def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_example_fleet_is_accepted(validator, example):
    assert list(validator.iter_errors(example)) == []


def test_small_valid_files_are_accepted(validator):
    for text in (
        "version: 1\n",
        "version: 1\ndevices: {cam-1: }\n",
        "version: 1\ndefaults: {routing: , models: [digits, {name: minilm, version: '1'}]}\n",
        "version: 1\ndevices: {a: {metrics: {port: '${PORT:-9100}'}, routing: {hedge_delay_ms: null}}}\n",
        "version: 1\nx-anchors: {fast: &fast {slo_ms: 20}}\ndevices: {a: {routing: *fast}}\n",
    ):
        data = yaml.safe_load(text)
        assert list(validator.iter_errors(data)) == [], text
        parse_fleet(text, env={})  # and the loader agrees


def _set(data: dict, path: str, value) -> dict:
    broken = copy.deepcopy(data)
    *parents, last = path.split(".")
    holder = broken
    for part in parents:
        holder = holder.setdefault(part, {})
    holder[last] = value
    return broken


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("version", 2),
        ("defaults.routing.policy", "fastest"),
        ("defaults.routing.slo_ms", -5),
        ("defaults.routing.slo_ms", "fast"),
        ("defaults.routing.rtt_treshold_ms", 100),
        ("defaults.models", []),
        ("defaults.models", [{"version": "1"}]),
        ("defaults.models", ["bad name"]),
        ("groups.factory-a.batching.max_batch_size", 0),
        ("groups.factory-a.group", "lab"),
        ("devices.cam-001.metrics.port", 70000),
        ("devices.cam-001.logging.format", "xml"),
        ("devices.bad name", {}),
        ("cloud.serving.device", "tpu"),
        ("cloud.keepalive", 5),
        ("cloud.extra", True),
        ("colud", {}),
    ],
)
def test_broken_copies_are_rejected(validator, example, path, value):
    broken = _set(example, path, value)
    assert list(validator.iter_errors(broken)), f"{path}={value!r} was accepted"


def test_missing_version_is_rejected(validator, example):
    del example["version"]
    assert list(validator.iter_errors(example))


def test_schema_describes_the_keys_for_editors():
    schema = fleet_schema()
    routing = schema["$defs"]["RoutingConfig"]["properties"]
    assert routing["policy"]["anyOf"][0]["enum"] == [
        "edge_only",
        "cloud_only",
        "latency_aware",
        "hedged",
        "cascade",
    ]
    assert routing["slo_ms"]["default"] == 100 and "deadline_ms" in routing["slo_ms"]["description"]
    assert schema["required"] == ["version"]
