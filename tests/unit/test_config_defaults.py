"""One configuration model: what a device and the cloud run with, from a minimal fleet file, is what
the fleet file's documentation (its JSON Schema, ``fogline fleet schema``) gives as defaults.

The runtime objects (the cloud link's ``LinkSettings``, the router's ``RoutingPolicy``, the edge pool's
``EdgeBatching``, the cloud's ``ServingSettings``) are built from the typed fleet model and read their
own defaults from it. A default changed in one place and not the other fails here, and so does a fleet
key that no runtime object reads and that is not listed as read elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fogline.agent.edge_pool import EdgeBatching
from fogline.agent.link_settings import LinkSettings
from fogline.agent.router_types import RoutingPolicy
from fogline.agent.shadow import ShadowSettings
from fogline.cloud.settings import ServingSettings, settings_from_fleet
from fogline.codec import MAX_MESSAGE_BYTES
from fogline.fleet import FleetConfigError, parse_fleet
from fogline.fleet.schema import fleet_schema

pytestmark = pytest.mark.unit

MINIMAL = """\
version: 1
cloud: {endpoint: "10.0.0.5:8001"}
devices:
  cam-001: {}
"""

Convert = Callable[[Any], Any]


def same(value: Any) -> Any:
    return value


#: runtime field -> (schema block, key, how the runtime object holds the value)
LINK: dict[str, tuple[str, str, Convert]] = {
    "connect_timeout_ms": ("CloudConfig", "connect_timeout_ms", float),
    "request_timeout_ms": ("CloudConfig", "request_timeout_ms", float),
    "keepalive_ms": ("KeepaliveConfig", "time_ms", float),
    "keepalive_timeout_ms": ("KeepaliveConfig", "timeout_ms", float),
    "probe_interval_ms": ("RoutingConfig", "probe_interval_ms", float),
    "rtt_percentile": ("RoutingConfig", "hedge_percentile", float),
    "tls": ("TlsConfig", "enabled", same),
    "ca_file": ("TlsConfig", "ca_file", same),
    "cert_file": ("TlsConfig", "cert_file", same),
    "key_file": ("TlsConfig", "key_file", same),
    "token": ("CredentialsConfig", "token", same),
    "token_file": ("CredentialsConfig", "token_file", same),
}
ROUTING: dict[str, tuple[str, str, Convert]] = {
    "policy": ("RoutingConfig", "policy", same),
    "slo_ms": ("RoutingConfig", "slo_ms", float),
    "rtt_threshold_ms": ("RoutingConfig", "rtt_threshold_ms", float),
    "rtt_recover_ms": ("RoutingConfig", "rtt_recover_ms", float),
    "hedge_delay_ms": ("RoutingConfig", "hedge_delay_ms", same),
    "cascade_threshold": ("RoutingConfig", "cascade_threshold", same),
    "cascade_thresholds": ("RoutingConfig", "cascade_thresholds", lambda d: tuple(sorted(d.items()))),
    "max_queue_depth": ("LoadConfig", "max_queue_depth", same),
    "cpu_high": ("LoadConfig", "cpu_high_percent", lambda percent: percent / 100.0),
}
SHADOW: dict[str, tuple[str, str, Convert]] = {
    "share": ("ShadowConfig", "share", float),
    **{key: ("ShadowConfig", key, same) for key in ("max_inflight", "window", "min_rows")},
}
BATCHING: dict[str, tuple[str, str, Convert]] = {
    "max_batch": ("BatchingConfig", "max_batch_size", same),
    "max_delay_ms": ("BatchingConfig", "max_queue_delay_ms", float),
    "max_queue": ("BatchingConfig", "max_queue_size", same),
}
SERVING: dict[str, tuple[str, str, Convert]] = {
    **{key: ("ServingConfig", key, same) for key in (
        "listen", "models_dir", "device", "max_batch_size", "max_queue_delay_us", "max_queue_size",
        "max_message_bytes", "metrics_port", "grace_s", "reflection")},
    "tls_cert_file": ("ServingTlsConfig", "cert_file", same),
    "tls_key_file": ("ServingTlsConfig", "key_file", same),
    "tls_client_ca_file": ("ServingTlsConfig", "client_ca_file", same),
    "tokens_file": ("ServingAuthConfig", "tokens_file", same),
    **{key: ("ServingLimitsConfig", key, same) for key in (
        "max_concurrent_streams", "max_inflight_per_device", "min_ping_interval_ms", "max_ping_strikes",
        "max_connection_age_s", "max_connection_age_grace_s")},
    "log_level": ("LoggingConfig", "level", same),
    "log_format": ("LoggingConfig", "format", same),
    "log_levels": ("LoggingConfig", "levels", same),
}

#: Keys of the blocks above that other parts read (not these four objects), or that hold a block.
READ_ELSEWHERE = {
    ("CloudConfig", "endpoint"),  # the link's endpoint: checked on its own below
    ("CloudConfig", "keepalive"), ("CloudConfig", "tls"), ("CloudConfig", "credentials"),
    ("CloudConfig", "serving"),
    ("ServingConfig", "tls"), ("ServingConfig", "auth"), ("ServingConfig", "limits"),
    ("ServingConfig", "logging"),
    ("RoutingConfig", "shadow"),  # the router's policy holds it as ``shadow`` (the SHADOW table)
}


def documented() -> dict[str, dict[str, Any]]:
    """Every settings block's documented defaults (``fogline fleet schema``), by block and key."""
    blocks = {}
    for name, definition in fleet_schema()["$defs"].items():
        properties = definition.get("properties", {})
        blocks[name] = {key: prop["default"] for key, prop in properties.items() if "default" in prop}
    return blocks


def effective(path: Path | None = None) -> dict[str, Any]:
    """The runtime objects of device cam-001 (and of the cloud) from the minimal fleet file."""
    fleet = parse_fleet(MINIMAL, source="minimal.yaml")
    device = fleet.device("cam-001")
    return {
        "link": LinkSettings.from_config(device.cloud, device.routing),
        "routing": RoutingPolicy.from_config(device.routing, device.load),
        "shadow": RoutingPolicy.from_config(device.routing, device.load).shadow,
        "batching": EdgeBatching.from_config(device.batching),
        "serving": ServingSettings.from_config(fleet.cloud.serving) if path is None else settings_from_fleet(path),
    }


TABLES = {"link": LINK, "routing": ROUTING, "shadow": SHADOW, "batching": BATCHING, "serving": SERVING}


@pytest.mark.parametrize("what", sorted(TABLES))
def test_a_minimal_fleet_file_gives_the_documented_defaults(what, tmp_path: Path):
    docs = documented()
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(MINIMAL)
    for objects in (effective(), effective(fleet_file)):
        runtime = objects[what]
        for field, (block, key, convert) in TABLES[what].items():
            assert key in docs[block], f"{block}.{key} has no documented default"
            want = convert(docs[block][key])
            got = getattr(runtime, field)
            assert got == want, f"{what}.{field} is {got!r}, the fleet documents {block}.{key} = {want!r}"


def test_the_runtime_objects_own_defaults_are_the_fleets():
    """Built by hand (as tests do), they hold what a minimal fleet file gives."""
    objects = effective()
    assert objects["link"].endpoint == "10.0.0.5:8001"
    by_hand = {"link": LinkSettings(endpoint="10.0.0.5:8001"), "routing": RoutingPolicy(),
               "shadow": ShadowSettings(), "batching": EdgeBatching(), "serving": ServingSettings()}
    for what, runtime in by_hand.items():
        for field in TABLES[what]:
            mine, fleet = getattr(runtime, field), getattr(objects[what], field)
            assert mine == fleet, f"{type(runtime).__name__}().{field} is {mine!r}, a fleet file gives {fleet!r}"
        assert runtime == objects[what]


def test_every_key_of_those_blocks_reaches_a_runtime_object():
    docs = documented()
    mapped = {(block, key) for table in TABLES.values() for block, key, _ in table.values()}
    blocks = {block for block, _ in mapped} | {"CloudConfig"}
    keys = {(block, key) for block in blocks for key in fleet_schema()["$defs"][block]["properties"]}
    assert keys - mapped - READ_ELSEWHERE == set()
    assert all(key in docs[block] for block, key in keys), "every key of these blocks has a documented default"


def test_one_message_limit():
    assert ServingSettings().max_message_bytes == MAX_MESSAGE_BYTES == 64 * 1024 * 1024
    options = dict(effective()["link"].channel_options())
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == MAX_MESSAGE_BYTES


def test_rtt_recover_must_be_below_the_threshold_in_both_places():
    with pytest.raises(FleetConfigError, match="rtt_threshold_ms"):
        parse_fleet(MINIMAL + "defaults: {routing: {rtt_threshold_ms: 100, rtt_recover_ms: 100}}\n")
    with pytest.raises(ValueError, match="below rtt_threshold_ms"):
        RoutingPolicy(rtt_threshold_ms=100, rtt_recover_ms=100)
