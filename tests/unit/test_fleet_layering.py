"""Layering: defaults <- group <- device, key by key; lists replace, mappings merge."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from fogline.fleet import DeviceConfig, ModelRef, file_revision, load_fleet, parse_fleet
from fogline.fleet.layering import Layered

pytestmark = pytest.mark.unit

FLEET = textwrap.dedent(
    """
    version: 1
    cloud:
      endpoint: 10.0.0.1:8001
      request_timeout_ms: 3000
      keepalive: {time_ms: 30000, timeout_ms: 9000}
    defaults:
      models: [minilm, digits]
      routing: {policy: latency_aware, slo_ms: 80, rtt_threshold_ms: 200, rtt_recover_ms: 120}
      labels: {owner: ops, tier: edge}
      metrics: {port: 9100}
    groups:
      plant:
        models: [digits]
        routing:
          policy: cascade
          slo_ms: 50
          cascade_thresholds: {digits: 0.9}
        cloud: {endpoint: 10.0.0.2:8001, keepalive: {time_ms: 15000}}
        labels: {site: plant}
    devices:
      plain: {}
      empty-entry:
      in-plant: {group: plant}
      tuned:
        group: plant
        routing: {slo_ms: 30, cascade_thresholds: {minilm: 0.7}}
        cloud: {request_timeout_ms: 1000}
        labels: {tier: gpu, rack: r7}
        models: [minilm]
      reset:
        group: plant
        routing: {hedge_delay_ms: 25, cascade_threshold: 0.5}
        metrics:
    """
)


@pytest.fixture(scope="module")
def fleet():
    return parse_fleet(FLEET, "fleet.yaml", env={})


def test_device_without_group_gets_defaults_over_builtins(fleet):
    for device_id in ("plain", "empty-entry"):
        device = fleet.device(device_id)
        assert device.device_id == device_id and device.group is None
        assert device.routing.policy == "latency_aware" and device.routing.slo_ms == 80
        assert device.routing.probe_interval_ms == 200  # built-in default
        assert device.listen == "127.0.0.1:8500"
        assert device.models == (ModelRef(name="minilm"), ModelRef(name="digits"))
        assert device.cloud.endpoint == "10.0.0.1:8001" and device.cloud.keepalive.time_ms == 30000


def test_group_overrides_key_by_key(fleet):
    device = fleet.device("in-plant")
    assert device.group == "plant"
    assert device.routing.policy == "cascade" and device.routing.slo_ms == 50
    assert device.routing.rtt_threshold_ms == 200 and device.routing.rtt_recover_ms == 120  # from defaults
    assert device.models == (ModelRef(name="digits"),)  # the group's list replaces the default one
    assert device.labels == {"owner": "ops", "tier": "edge", "site": "plant"}  # maps merge
    assert device.cloud.endpoint == "10.0.0.2:8001"
    assert (device.cloud.keepalive.time_ms, device.cloud.keepalive.timeout_ms) == (15000, 9000)
    assert device.cloud.request_timeout_ms == 3000
    assert device.routing.threshold_for("digits") == 0.9
    assert device.routing.threshold_for("minilm") == 0.8


def test_device_overrides_its_group_key_by_key(fleet):
    device = fleet.device("tuned")
    assert device.routing.policy == "cascade"  # group
    assert device.routing.slo_ms == 30  # device
    assert device.routing.rtt_threshold_ms == 200  # defaults
    assert device.routing.cascade_thresholds == {"digits": 0.9, "minilm": 0.7}
    assert device.models == (ModelRef(name="minilm"),)
    assert device.labels == {"owner": "ops", "tier": "gpu", "site": "plant", "rack": "r7"}
    assert device.cloud.endpoint == "10.0.0.2:8001"  # group
    assert device.cloud.request_timeout_ms == 1000  # device
    assert device.cloud.keepalive.timeout_ms == 9000  # top-level cloud


def test_an_empty_block_keeps_what_was_inherited(fleet):
    device = fleet.device("reset")
    assert device.metrics.port == 9100  # `metrics:` with nothing under it
    assert device.routing.hedge_delay_ms == 25.0 and device.routing.cascade_threshold == 0.5


def test_null_value_resets_an_inherited_setting():
    fleet = parse_fleet(
        "version: 1\ndefaults: {routing: {hedge_delay_ms: 40}}\ndevices: {a: {}, b: {routing: {hedge_delay_ms: null}}}\n",
        env={},
    )
    assert fleet.device("a").routing.hedge_delay_ms == 40.0
    assert fleet.device("b").routing.hedge_delay_ms is None


def test_groups_and_defaults_are_available_merged(fleet):
    assert fleet.group_names() == ["plant"]
    assert (
        fleet.groups["plant"].routing.slo_ms == 50 and fleet.groups["plant"].routing.rtt_threshold_ms == 200
    )
    assert fleet.defaults.routing.slo_ms == 80
    assert fleet.devices_in("plant") == ["in-plant", "tuned", "reset"]
    assert fleet.device_ids() == ["plain", "empty-entry", "in-plant", "tuned", "reset"]
    assert fleet.cloud.endpoint == "10.0.0.1:8001"


def test_minimal_file_uses_builtin_defaults():
    fleet = parse_fleet("version: 1\ndevices: {cam-1: }\n", env={})
    device = fleet.device("cam-1")
    assert device.routing.slo_ms == 100 and device.routing.rtt_threshold_ms == 150
    assert device.routing.rtt_recover_ms == 100 and device.routing.hedge_delay_ms is None
    assert device.batching.max_batch_size == 8 and device.batching.max_queue_delay_ms == 2
    assert device.batching.max_queue_size == 256 and device.metrics.port == 0
    assert device.cloud.endpoint == "127.0.0.1:8001"
    serving = fleet.cloud.serving
    assert (serving.listen, serving.device, serving.max_batch_size) == ("0.0.0.0:8001", "auto", 32)
    assert (serving.max_queue_delay_us, serving.max_queue_size, serving.metrics_port) == (2000, 1024, 8002)
    assert serving.max_message_bytes == 64 * 1024 * 1024 and serving.grace_s == 10


def test_configs_are_frozen(fleet):
    device = fleet.device("plain")
    with pytest.raises(ValidationError):
        device.routing = None  # type: ignore[misc]
    with pytest.raises(ValidationError):
        device.routing.slo_ms = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        fleet.revision = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        fleet.devices["new"] = device  # type: ignore[index]
    assert isinstance(device, DeviceConfig) and isinstance(device.models, tuple)


def test_revision_is_the_file_hash_and_ignores_the_environment(tmp_path: Path):
    path = tmp_path / "fleet.yaml"
    path.write_text("version: 1\ncloud: {endpoint: '${EP:-127.0.0.1:8001}'}\ndevices: {a: {}}\n")
    first = load_fleet(path, env={})
    assert first.revision == hashlib.sha256(path.read_bytes()).hexdigest()[:12] == file_revision(path)
    other_env = load_fleet(path, env={"EP": "10.1.1.1:8001"})
    assert other_env.revision == first.revision and other_env.cloud.endpoint == "10.1.1.1:8001"
    assert first.device("a").revision == first.revision and first.device("a").source == str(path)
    path.write_text(path.read_text() + "# a comment changes the revision\n")
    assert load_fleet(path, env={}).revision != first.revision


def test_relative_paths_are_taken_from_the_file_folder(tmp_path: Path):
    path = tmp_path / "conf" / "fleet.yaml"
    path.parent.mkdir()
    path.write_text(
        "version: 1\n"
        "cloud: {tls: {ca_file: ca.pem}, serving: {models_dir: ../store}}\n"
        "defaults: {models_dir: models}\n"
        "devices: {a: {}, b: {models_dir: /opt/models}}\n"
    )
    fleet = load_fleet(path, env={})
    assert fleet.device("a").models_dir == tmp_path / "conf" / "models"
    assert fleet.device("b").models_dir == Path("/opt/models")
    assert fleet.cloud.serving.models_dir == tmp_path / "conf" / ".." / "store"
    assert fleet.device("a").cloud.tls.ca_file == tmp_path / "conf" / "ca.pem"
    assert parse_fleet("version: 1\ndefaults: {models_dir: models}\ndevices: {a: {}}\n", env={}).device(
        "a"
    ).models_dir == Path("models")


def test_yaml_anchors_and_merge_keys_share_blocks():
    fleet = parse_fleet(
        textwrap.dedent(
            """
            version: 1
            groups:
              fast: {routing: &fast {policy: hedged, slo_ms: 40, hedge_delay_ms: 10}}
            devices:
              a: {routing: *fast}
              b:
                routing:
                  <<: *fast
                  slo_ms: 60
            """
        ),
        env={},
    )
    assert fleet.device("a").routing.slo_ms == 40 and fleet.device("a").routing.policy == "hedged"
    assert fleet.device("b").routing.slo_ms == 60 and fleet.device("b").routing.hedge_delay_ms == 10


def test_catalogue_adds_models_and_limits_pins():
    fleet = parse_fleet(
        "version: 1\nmodels:\n  sentiment: {versions: ['1', 2]}\n  ocr:\n"
        "devices: {a: {models: [ocr, {name: sentiment, version: 2}, {name: digits, version: 7}]}}\n",
        env={},
    )
    assert fleet.catalogue["sentiment"] == ("1", "2") and fleet.catalogue["ocr"] == ()
    assert fleet.device("a").models == (
        ModelRef(name="ocr"),
        ModelRef(name="sentiment", version="2"),
        ModelRef(name="digits", version="7"),
    )
    assert fleet.device("a").model("sentiment").version == "2" and fleet.device("a").model("minilm") is None


def test_layered_records_where_each_value_came_from():
    layered = Layered()
    layered.apply({"endpoint": "x:1", "keepalive": {"time_ms": 1}}, ("cloud",), at=("cloud",))
    layered.apply({"routing": {"slo_ms": 5, "policy": "hedged"}, "models": ["a"]}, ("defaults",))
    layered.apply({"routing": {"slo_ms": 7}, "cloud": {"keepalive": {"time_ms": 2}}}, ("groups", "g"))
    layered.apply({"models": ["b", "c"], "routing": None}, ("devices", "d"))
    assert layered.data == {
        "cloud": {"endpoint": "x:1", "keepalive": {"time_ms": 2}},
        "routing": {"slo_ms": 7, "policy": "hedged"},
        "models": ["b", "c"],
    }
    assert layered.origin_of(("routing", "slo_ms")) == ("groups", "g", "routing", "slo_ms")
    assert layered.origin_of(("routing", "policy")) == ("defaults", "routing", "policy")
    assert layered.origin_of(("models", 1)) == ("devices", "d", "models", 1)
    assert layered.origin_of(("cloud", "endpoint")) == ("cloud", "endpoint")
    assert layered.origin_of(("cloud", "keepalive", "time_ms")) == (
        "groups",
        "g",
        "cloud",
        "keepalive",
        "time_ms",
    )
    assert layered.origin_of(("listen",)) is None


def test_an_aliased_block_with_its_own_merge_key_is_read_the_same_each_time():
    text = textwrap.dedent(
        """
        version: 1
        x-shared:                      # x-* top-level keys hold anchors and are otherwise ignored
          base: &base {slo_ms: 40, policy: hedged}
        groups:
          g: {routing: &tuned {<<: *base, slo_ms: 60}}
        devices:
          a: {routing: *tuned}
          b: {group: g, routing: *tuned}
        """
    )
    fleet = parse_fleet(text, env={})
    for device_id in ("a", "b"):
        routing = fleet.device(device_id).routing
        assert (routing.slo_ms, routing.policy) == (60, "hedged")
