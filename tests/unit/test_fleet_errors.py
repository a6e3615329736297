"""Every kind of mistake in a fleet file is reported with its file, line, column and key path."""

from __future__ import annotations

import textwrap

import pytest

from fogline.errors import ConfigError
from fogline.fleet import FleetConfigError, load_fleet, parse_fleet

pytestmark = pytest.mark.unit


def problems(text: str, **kwargs) -> list[tuple[int, int, str, str]]:
    """(line, column, key path, message) of every problem in ``text``; fails if it loads."""
    with pytest.raises(FleetConfigError) as caught:
        parse_fleet(textwrap.dedent(text).lstrip("\n"), "fleet.yaml", env=kwargs.get("env", {}))
    return [(p.line, p.column, ".".join(map(str, p.path)), p.message) for p in caught.value.problems]


def only(text: str, **kwargs) -> tuple[int, int, str, str]:
    found = problems(text, **kwargs)
    assert len(found) == 1, found
    return found[0]


def test_error_type_and_text_format():
    with pytest.raises(ConfigError) as caught:
        parse_fleet("version: 1\ndefaults: {routing: {slo_ms: -5}}\n", "deploy/f.yaml", env={})
    assert isinstance(caught.value, FleetConfigError)
    assert str(caught.value) == "deploy/f.yaml:2:30: defaults.routing.slo_ms: must be greater than 0, got -5"


def test_unknown_key_points_at_the_key_with_a_suggestion():
    line, col, path, message = only(
        """
        version: 1
        defaults:
          routing:
            policy: hedged
            rtt_treshold_ms: 200
        """
    )
    assert (line, col, path) == (5, 5, "defaults.routing.rtt_treshold_ms")
    assert message == "unknown key 'rtt_treshold_ms'; did you mean 'rtt_threshold_ms'?"


def test_unknown_key_without_a_close_match_lists_the_valid_ones():
    _, _, path, message = only("version: 1\ndevices: {cam-1: {batching: {zzz: 1}}}\n")
    assert path == "devices.cam-1.batching.zzz"
    assert message == "unknown key 'zzz'; valid keys: max_batch_size, max_queue_delay_ms, max_queue_size"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("version: 1\ndevice:\n  cam-1: {}\n",
                     (2, 1, "device", "unknown key 'device'; did you mean 'devices'?"),
                     id="unknown_top_level_key"),
        pytest.param("devices: {cam-1: {}}\n",
                     (1, 1, "", "missing required key 'version'; add 'version: 1' at the top"),
                     id="version_is_required"),
        pytest.param("version: 2\n",
                     (1, 10, "version", "unsupported format version 2; this fogline reads version 1"),
                     id="version_is_checked"),
        pytest.param("version: 1\ncloud:\n  tls: {enabled: true, cert_file: c.pem}\n",
                     (3, 8, "cloud.tls",
                      "cert_file and key_file go together (client certificate): set both or neither"),
                     id="tls_files_go_together"),
        pytest.param("version: 1\ndefaults:\n  labels: {rack: 7}\n",
                     (3, 18, "defaults.labels.rack",
                      "expected a string, got 7; put it in quotes if it is meant as text"),
                     id="numbers_where_text_is_expected_suggest_quotes"),
    ],
)
def test_one_problem_at_its_place(text, expected):
    assert only(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"100"', "expected a whole number, got the text '100'"),
        ("true", "expected a whole number, got true"),
        ("12.5", "expected a whole number, got 12.5"),
        ("[1]", "expected a whole number, got a list"),
        ("0", "must be greater than 0, got 0"),
    ],
)
def test_types_and_ranges_of_a_number(value, message):
    expected = (4, 13, "defaults.routing.slo_ms", message)
    assert only(f"version: 1\ndefaults:\n  routing:\n    slo_ms: {value}\n") == expected


def test_choice_with_a_suggestion():
    _, _, path, message = only("version: 1\ngroups:\n  g: {routing: {policy: latency-aware}}\n")
    assert path == "groups.g.routing.policy"
    assert message == (
        "must be 'edge_only', 'cloud_only', 'latency_aware', 'hedged' or 'cascade', "
        "got the text 'latency-aware'; did you mean 'latency_aware'?"
    )


def test_positive_timeouts_and_ranges_in_the_cloud_section():
    found = problems(
        """
        version: 1
        cloud:
          endpoint: 10.0.0.5:0
          connect_timeout_ms: 0
          keepalive: {time_ms: -1}
          serving: {max_message_bytes: 10, metrics_port: 70000, device: gpu}
        """
    )
    assert [(line, col, path) for line, col, path, _ in found] == [
        (3, 13, "cloud.endpoint"),
        (4, 23, "cloud.connect_timeout_ms"),
        (5, 24, "cloud.keepalive.time_ms"),
        (6, 32, "cloud.serving.max_message_bytes"),
        (6, 50, "cloud.serving.metrics_port"),
        (6, 65, "cloud.serving.device"),
    ]
    assert found[0][3] == "the cloud endpoint needs a real port (1-65535), got '10.0.0.5:0'"
    assert found[3][3] == "must be at least 1024, got 10"
    assert found[4][3] == "must be at most 65535, got 70000"


@pytest.mark.parametrize("listen", ["8500", "localhost", "host:port", "a b:80", "::1:80", "h:65536", ":80"])
def test_listen_must_be_host_port(listen):
    line, col, path, message = only(f"version: 1\ndevices:\n  cam-1:\n    listen: '{listen}'\n")
    assert (line, col, path) == (4, 13, "devices.cam-1.listen")
    assert "HOST:PORT" in message or "port must be a number" in message


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "0.0.0.0:8500", "[::1]:8500", "edge-7.local:1"])
def test_good_listen_addresses(listen):
    fleet = parse_fleet(f"version: 1\ndevices:\n  cam-1: {{listen: '{listen}'}}\n", env={})
    assert fleet.device("cam-1").listen == listen


def test_rtt_recover_must_be_below_the_threshold_within_one_layer():
    line, col, path, message = only(
        "version: 1\ndefaults:\n  routing: {rtt_threshold_ms: 100, rtt_recover_ms: 100}\n"
    )
    assert (line, col, path) == (3, 52, "defaults.routing.rtt_recover_ms")
    assert message == "must be below rtt_threshold_ms (100) for hysteresis, got 100"


def test_rtt_conflict_made_by_merging_points_at_the_device_that_caused_it():
    # defaults alone are fine; the device lowers the threshold under the inherited recover value
    line, col, path, message = only(
        """
        version: 1
        defaults:
          routing: {rtt_threshold_ms: 300, rtt_recover_ms: 200}
        devices:
          ok-1: {}
          cam-9:
            routing: {rtt_threshold_ms: 150}
        """
    )
    assert (line, col, path) == (3, 52, "defaults.routing.rtt_recover_ms")
    assert (
        message
        == "must be below rtt_threshold_ms (150) for hysteresis, got 200 (as merged for device 'cam-9')"
    )


def test_unknown_group_with_a_suggestion():
    found = problems(
        """
        version: 1
        groups: {factory-a: {}, lab: {}}
        devices:
          cam-1: {group: factroy-a}
          cam-2: {group: nowhere}
          cam-3: {group: 7}
        """
    )
    assert found == [
        (4, 18, "devices.cam-1.group", "unknown group 'factroy-a'; did you mean 'factory-a'?"),
        (5, 18, "devices.cam-2.group", "unknown group 'nowhere'; groups: 'factory-a' or 'lab'"),
        (6, 18, "devices.cam-3.group", "expected a group name, got 7"),
    ]


def test_unknown_models_and_versions():
    found = problems(
        """
        version: 1
        models:
          sentiment: {versions: [1, 2]}
        defaults:
          models: [minilm, digit]
        devices:
          cam-1:
            models:
              - sentiment
              - {name: sentiment, version: 3}
              - {name: minilm, version: latest}
          cam-2:
            routing: {cascade_thresholds: {mnist: 0.5}}
        """
    )
    assert found == [
        (
            5,
            20,
            "defaults.models.1",
            "unknown model 'digit'; did you mean 'digits'? (list others under the top-level 'models:')",
        ),
        (
            10,
            9,
            "devices.cam-1.models.1",
            "model 'sentiment' has no version '3'; the catalogue lists '1' or '2'",
        ),
        (11, 33, "devices.cam-1.models.2.version", "a version is an integer such as \"1\", got 'latest'"),
        (13, 36, "devices.cam-2.routing.cascade_thresholds.mnist", "unknown model 'mnist'"),
    ]


def test_model_list_rules():
    found = problems(
        "version: 1\ndevices:\n  a: {models: []}\n  b: {models: [digits, digits]}\n  c: {models: [{version: '1'}]}\n"
    )
    assert found == [
        (3, 15, "devices.a.models", "list at least one model (e.g. [minilm, digits])"),
        (4, 15, "devices.b.models", "model 'digits' is listed more than once"),
        (5, 16, "devices.c.models.0.name", "missing required key 'name'"),
    ]


def test_misplaced_keys():
    found = problems(
        """
        version: 1
        defaults:
          group: lab
        groups:
          lab:
            cloud: {serving: {max_batch_size: 4}}
        devices:
          bad/name: {}
          cam-1: [listen]
        """
    )
    assert found == [
        (3, 3, "defaults.group", "only a device entry names its group (group: NAME under devices.ID)"),
        (
            6,
            13,
            "groups.lab.cloud.serving",
            "cloud.serving configures 'fogline cloud serve'; set it only in the top-level cloud section",
        ),
        (
            8,
            3,
            "devices.bad/name",
            "bad device name 'bad/name': use letters, digits, '.', '_' or '-', starting with a letter or digit",
        ),
        (9, 10, "devices.cam-1", "a device entry must be a mapping of settings, got a list"),
    ]


def test_yaml_level_mistakes():
    found = problems(
        """
        version: 1
        devices:
          cam-1: {listen: '127.0.0.1:1'}
          cam-1: {listen: '127.0.0.1:2'}
          001: {}
        """
    )
    assert found == [
        (4, 3, "devices.cam-1", "duplicate key 'cam-1' (first set at line 3); remove one"),
        (5, 3, "devices.001", 'the key 001 reads as int; quote it: "001"'),
    ]


def test_every_problem_is_reported_at_once_in_file_order():
    found = problems(
        """
        version: 1
        cloud: {endpoint: nowhere}
        defaults:
          listen: 127.0.0.1
          batching: {max_batch_size: 0}
        groups:
          g1:
            routing: {policy: fastest}
          g2:
            metrics: {prot: 9100}
        devices:
          d1: {group: g1}
          d2: {group: g3}
          d3: {group: g1}
          d4: {group: g2, load: {cpu_high_percent: 120}}
        """
    )
    assert [(line, path) for line, _, path, _ in found] == [
        (2, "cloud.endpoint"),
        (4, "defaults.listen"),
        (5, "defaults.batching.max_batch_size"),
        (8, "groups.g1.routing.policy"),
        (10, "groups.g2.metrics.prot"),
        (13, "devices.d2.group"),
        (15, "devices.d4.load.cpu_high_percent"),
    ]  # each reported once, though d1 and d3 both inherit g1's mistake


def test_logging_level_is_case_insensitive_but_checked():
    fleet = parse_fleet("version: 1\ndevices: {a: {logging: {level: debug}}}\n", env={})
    assert fleet.device("a").logging.level == "DEBUG"
    assert problems("version: 1\ndevices: {a: {logging: {level: chatty, format: xml}}}\n") == [
        (
            2,
            32,
            "devices.a.logging.level",
            "must be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL', got the text 'chatty'",
        ),
        (2, 48, "devices.a.logging.format", "must be 'text', 'json' or 'auto', got the text 'xml'"),
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"",
            "fleet.yaml: the file is empty; expected a mapping with version, cloud, defaults, groups and devices",
        ),
        (
            b"# only a comment\n\n",
            "fleet.yaml: the file is empty; expected a mapping with version, cloud, defaults, groups and devices",
        ),
        (
            b"version: 1\ndefaults:\n\trouting: {}\n",
            "fleet.yaml:3:1: a tab character is used for indentation; YAML indents with spaces only",
        ),
        (
            b"version: 1\ndevices: {cam-1: {}\n",
            "fleet.yaml:3:1: invalid YAML: expected ',' or '}', but got '<stream end>' (while parsing a flow mapping at line 2)",
        ),
        (b"version: 1\n  bad: indent\n", "fleet.yaml:2:6: invalid YAML: mapping values are not allowed here"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "fleet.yaml: this is a binary file, not a YAML text file"),
        (
            b"version: 1\nname: caf\xe9\n",
            "fleet.yaml: not a UTF-8 text file (undecodable byte at offset 20); save it as UTF-8",
        ),
        (
            b"- version: 1\n",
            "fleet.yaml:1:1: the top level must be a mapping of keys (version, cloud, ...), not a list",
        ),
        (
            b"just text\n",
            "fleet.yaml:1:1: the top level must be a mapping of keys (version, cloud, ...), not the value 'just text'",
        ),
        (
            b"version: 1\ncloud: !!python/object:os.system {}\n",
            "fleet.yaml:2:8: cloud: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'; use plain mappings, lists and values",
        ),
    ],
)
def test_malformed_files_give_one_clear_problem(tmp_path, data, expected):
    path = tmp_path / "fleet.yaml"
    path.write_bytes(data)
    with pytest.raises(FleetConfigError) as caught:
        load_fleet(path, env={})
    assert str(caught.value).replace(str(tmp_path) + "/", "") == expected


def test_unreadable_paths(tmp_path):
    with pytest.raises(FleetConfigError, match="cannot read the fleet file: No such file or directory"):
        load_fleet(tmp_path / "missing.yaml")
    with pytest.raises(FleetConfigError, match="is a directory, not a fleet file"):
        load_fleet(tmp_path)


def test_alias_bombs_and_recursion_are_problems_not_crashes():
    bomb = "version: 1\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefg":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]\n"
    found = problems(bomb)
    assert any("expands to more than" in message for *_, message in found)


def test_unknown_device_suggests_a_close_one():
    fleet = parse_fleet("version: 1\ndevices: {cam-001: {}, cam-002: {}}\n", "f.yaml", env={})
    with pytest.raises(
        FleetConfigError, match=r"^f\.yaml: devices: no device 'cam-01'; did you mean 'cam-001'\?$"
    ):
        fleet.device("cam-01")
    with pytest.raises(FleetConfigError, match="devices in this file: cam-001, cam-002"):
        fleet.device("zzz")


@pytest.fixture(params=["libyaml", "pure-python"])
def yaml_loader(request, monkeypatch):
    """Runs a test with PyYAML's C loader (when this install has it) and with its pure-Python loader."""
    import yaml

    from fogline.fleet import document

    if request.param == "libyaml":
        if not hasattr(yaml, "CSafeLoader"):
            pytest.skip("this PyYAML was built without libyaml")
        monkeypatch.setattr(document, "_FAST_LOADER", yaml.CSafeLoader)
    else:
        monkeypatch.setattr(document, "_FAST_LOADER", yaml.SafeLoader)
    return request.param


@pytest.mark.parametrize("depth", [65, 5000, 200_000])
def test_absurdly_deep_nesting_is_a_problem_not_a_crash(yaml_loader, depth):
    text = "version: 1\ndefaults: {labels: " + "[" * depth + "]" * depth + "}\n"
    with pytest.raises(FleetConfigError, match="nested too deeply") as raised:
        parse_fleet(text, env={})
    assert "recursion" not in str(raised.value)


def test_nesting_at_the_limit_is_read_and_checked_as_usual(yaml_loader):
    from fogline.fleet.document import MAX_DEPTH

    # The top-level mapping and ``defaults`` take two levels; the rest is a list nest inside labels.
    inner = MAX_DEPTH - 2
    text = "version: 1\ndefaults: {labels: " + "[" * inner + "]" * inner + "}\n"
    with pytest.raises(FleetConfigError) as raised:
        parse_fleet(text, env={})
    assert "nested too deeply" not in str(raised.value)


def test_aliases_that_nest_past_the_limit_are_refused_without_recursing(yaml_loader):
    # Each anchor is 40 levels deep as written; nesting one inside the other expands to 80.
    deep = "[" * 40 + "]" * 40
    text = (
        "version: 1\n"
        f"x-a: &a {deep}\n"
        "x-b: " + "[" * 40 + "*a" + "]" * 40 + "\n"
    )
    with pytest.raises(FleetConfigError, match="nested too deeply"):
        parse_fleet(text, env={})


def test_per_logger_levels_are_checked_by_name_and_level():
    fleet = parse_fleet("version: 1\ndevices: {a: {logging: {levels: {fogline.agent.router: debug, grpc: INFO}}}}\n", env={})
    assert fleet.device("a").logging.levels == {"fogline.agent.router": "DEBUG", "grpc": "INFO"}
    assert problems("version: 1\ndevices: {a: {logging: {levels: {agent..x: DEBUG, grpc: loud}}}}\n") == [
        (2, 34, "devices.a.logging.levels.agent..x",
         "a logger name is dotted Python names (e.g. fogline.agent.router or grpc), got 'agent..x'"),
        (2, 57, "devices.a.logging.levels.grpc",
         "must be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL', got the text 'loud'"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("unix://rel/x.sock", "unix:// takes an absolute path"),
        ("unix:///run/", "must name a socket file"),
        ("unix:///" + "a" * 120 + ".sock", "at most 107 bytes"),
    ],
)
def test_a_bad_unix_listen_address_is_refused_at_load_by_the_server_s_own_parser(listen, message):
    text = f'version: 1\ncloud: {{endpoint: "127.0.0.1:8001"}}\ndefaults: {{listen: "{listen}"}}\ndevices: {{d1: {{}}}}\n'
    with pytest.raises(FleetConfigError, match=message):
        parse_fleet(text, env={})
