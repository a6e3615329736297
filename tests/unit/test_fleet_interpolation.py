"""``${NAME}`` / ``${NAME:-default}`` references in fleet files."""

from __future__ import annotations

import textwrap

import pytest

from fogline.fleet import FleetConfigError, parse_fleet
from fogline.fleet.interpolate import interpolate

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("plain", {}, "plain"),
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
        ("${A:-fallback}", {}, "fallback"),
        ("${A:-fallback}", {"A": ""}, "fallback"),
        ("${A-fallback}", {"A": ""}, ""),
        ("${A-fallback}", {}, "fallback"),
        ("${A:-}", {}, ""),
        ("${A:-host:8001}", {}, "host:8001"),
        ("cost $5", {}, "cost $5"),
        ("$$", {}, "$"),
        ("$${A}", {"A": "x"}, "${A}"),
        ("trailing $", {}, "trailing $"),
    ],
)
def test_interpolate(text, env, expected):
    assert interpolate(text, env) == (expected, [])


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        ("${MISSING}", 0, "environment variable MISSING is not set (give a default with ${MISSING:-value})"),
        (
            "ab${1X}",
            2,
            "bad variable reference '${1X}': a name is letters, digits and '_', not starting with a digit",
        ),
        ("${A:+x}", 0, "bad variable reference '${A:+x}': expected ${A}, ${A:-default} or ${A-default}"),
        ("x ${A", 2, "unclosed '${': write ${NAME} or ${NAME:-default}"),
    ],
)
def test_interpolation_problems(text, offset, message):
    result, problems = interpolate(text, {})
    assert [(p.offset, p.message) for p in problems] == [(offset, message)]
    assert result == text  # left as written


FLEET = textwrap.dedent(
    """
    version: 1
    cloud:
      endpoint: ${CLOUD:-127.0.0.1:8001}
      credentials: {token: "${TOKEN}"}
    defaults:
      listen: ${LISTEN:-0.0.0.0:8500}
      models_dir: ${MODELS:-}
      metrics: {port: "${METRICS_PORT:-9100}"}
      routing:
        hedge_delay_ms: ${HEDGE:-}
        slo_ms: ${SLO:-100}
      logging: {level: "${LEVEL:-info}"}
      labels: {note: "literal $${NOT_A_VAR}", "${KEY}": v}
    devices:
      cam-1: {}
    """
)


def test_values_come_from_the_environment_and_are_read_as_the_key_wants():
    env = {"CLOUD": "cloud.example:443", "TOKEN": "12345", "METRICS_PORT": "9200", "KEY": "k", "SLO": "75"}
    device = parse_fleet(FLEET, env=env).device("cam-1")
    assert device.cloud.endpoint == "cloud.example:443"
    assert device.cloud.credentials.token == "12345"  # text, though it looks like a number
    assert device.listen == "0.0.0.0:8500"
    assert device.metrics.port == 9200 and device.routing.slo_ms == 75  # numbers, quoted or not
    assert device.routing.hedge_delay_ms is None and device.models_dir is None  # empty default = not set
    assert device.logging.level == "INFO"
    assert device.labels == {"note": "literal ${NOT_A_VAR}", "${KEY}": "v"}  # keys are never filled in
    assert "12345" not in repr(device)
    assert type(device.listen) is str and type(device.cloud.credentials.token) is str


def test_a_missing_variable_without_default_is_an_error_at_its_position():
    with pytest.raises(FleetConfigError) as caught:
        parse_fleet(FLEET, "fleet.yaml", env={"KEY": "k"})
    assert str(caught.value) == (
        "fleet.yaml:5:25: cloud.credentials.token: environment variable TOKEN is not set "
        "(give a default with ${TOKEN:-value})"
    )


def test_a_value_that_is_not_a_number_is_reported_as_written():
    with pytest.raises(FleetConfigError) as caught:
        parse_fleet('version: 1\ndevices: {a: {metrics: {port: "${P:-ninety}"}}}\n', "f.yaml", env={})
    assert (
        str(caught.value)
        == "f.yaml:2:31: devices.a.metrics.port: expected a whole number, got the text 'ninety'"
    )
    with pytest.raises(FleetConfigError, match="got the text 'maybe'"):
        parse_fleet('version: 1\ndevices: {a: {cloud: {tls: {enabled: "${T:-maybe}"}}}}\n', env={}).device(
            "a"
        )
    enabled = parse_fleet('version: 1\ndevices: {a: {cloud: {tls: {enabled: "${T:-true}"}}}}\n', env={})
    assert enabled.device("a").cloud.tls.enabled is True


def test_substituted_values_are_validated_like_written_ones():
    with pytest.raises(FleetConfigError) as caught:
        parse_fleet("version: 1\ncloud:\n  endpoint: ${EP}\n", "f.yaml", env={"EP": "no-port"})
    assert str(caught.value) == (
        "f.yaml:3:13: cloud.endpoint: expected HOST:PORT (e.g. 127.0.0.1:8500 or [::1]:8500), got 'no-port'"
    )


def test_every_missing_variable_is_reported_with_its_column():
    text = "version: 1\ncloud: {endpoint: '${HOST}:${PORT}'}\ndefaults:\n  listen: ${LISTEN}\n"
    with pytest.raises(FleetConfigError) as caught:
        parse_fleet(text, "f.yaml", env={})
    assert [(p.line, p.column, p.message.split(" is not set")[0]) for p in caught.value.problems] == [
        (2, 20, "environment variable HOST"),
        (2, 28, "environment variable PORT"),
        (4, 11, "environment variable LISTEN"),
    ]
