"""The proxy's pure parts: condition validation, the delay distributions, control-command parsing."""

from __future__ import annotations

import random
import statistics

import pytest

from fogline.netproxy.control import handle_command, parse_assignments
from fogline.netproxy.proxy import NetConditions, NetProxy

pytestmark = pytest.mark.unit


def test_conditions_validate_their_fields():
    with pytest.raises(ValueError, match="delay_ms"):
        NetConditions(delay_ms=-1)
    with pytest.raises(ValueError, match="jitter_dist"):
        NetConditions(jitter_dist="cauchy")
    with pytest.raises(ValueError, match="bandwidth_kbps"):
        NetConditions(bandwidth_kbps=0)


def test_delay_without_jitter_is_exact_and_jitter_never_goes_negative():
    rng = random.Random(1)
    assert NetConditions(delay_ms=40).sample_delay_s(rng) == pytest.approx(0.040)
    for dist in ("uniform", "normal", "pareto"):
        draws = [NetConditions(delay_ms=5, jitter_ms=20, jitter_dist=dist).sample_delay_s(rng)
                 for _ in range(2000)]
        assert min(draws) >= 0.0


def test_pareto_jitter_is_heavy_tailed_and_capped():
    rng = random.Random(2)
    cond = NetConditions(delay_ms=0, jitter_ms=10, jitter_dist="pareto")
    draws = sorted(cond.sample_delay_s(rng) * 1000 for _ in range(20000))
    median, p999 = statistics.median(draws), draws[int(0.999 * len(draws))]
    assert 4 < median < 8  # about 0.59 j
    assert p999 > 15 * median  # the tail is far out, unlike uniform or normal jitter
    assert draws[-1] <= 500.0 + 1e-9  # capped at 50 j


def test_parse_assignments_accepts_operator_spellings_and_rejects_junk():
    assert parse_assignments(["delay-ms=50", "blackhole=on", "bandwidth_kbps=none"]) == {
        "delay_ms": 50.0, "blackhole": True, "bandwidth_kbps": None}
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_assignments(["latency=5"])
    with pytest.raises(ValueError, match="number"):
        parse_assignments(["delay_ms=fast"])
    with pytest.raises(ValueError, match="on or off"):
        parse_assignments(["blackhole=maybe"])


def test_control_commands_change_an_unstarted_proxy():
    proxy = NetProxy(target_host="127.0.0.1", target_port=1)
    assert handle_command(proxy, "update delay_ms=300 jitter_ms=10")["conditions"]["delay_ms"] == 300
    assert handle_command(proxy, "update blackhole=on")["conditions"] == {
        "delay_ms": 300.0, "jitter_ms": 10.0, "jitter_dist": "uniform", "bandwidth_kbps": None,
        "blackhole": True, "jitter_slot_ms": 0.0}
    assert handle_command(proxy, "set delay_ms=5")["applied_at"] == proxy.applied_at
    assert handle_command(proxy, "set")["conditions"]["delay_ms"] == 0  # set = clean link + named fields
    assert handle_command(proxy, "reset") == {"reset": 0}
    assert "error" in handle_command(proxy, "update jitter_dist=cauchy")
    assert "error" in handle_command(proxy, "explode")
    assert "error" in handle_command(proxy, "   ")
