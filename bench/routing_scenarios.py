"""Network scenarios for the routing benchmark: a timeline of link conditions, read from YAML.

A scenario file (``bench/scenarios/*.yaml``) looks like::

    name: step_up
    description: a good link (5 ms one way) turns bad (250 ms) halfway through
    duration_s: 12
    phases:                       # each phase holds until the next one starts
      - {at_s: 0, delay_ms: 5}
      - {at_s: 6, delay_ms: 250}

or, for a link that alternates, ``repeat`` instead of ``phases``::

    repeat: {every_s: 2, conditions: [{delay_ms: 5}, {delay_ms: 250}]}

Condition keys are those of ``fogline.netproxy.proxy.NetConditions``: ``delay_ms`` (one way, per direction),
``jitter_ms``, ``jitter_dist`` (uniform | normal | pareto), ``jitter_slot_ms`` (the benchmark runs the
proxy in timeline mode, where jitter is drawn per slot of this length: required with jitter),
``bandwidth_kbps`` and ``blackhole``; a key left out means a clean link for that property. Optional top-level keys: ``slo_ms`` (the latency goal
for this scenario; the benchmark's default otherwise) and ``quick`` (true: part of ``--quick``).

Everything here is pure: ``load_scenario`` reads a file into a frozen ``Scenario``; ``conditions_at``
answers "what was the link like at time t"; ``scaled`` shrinks a timeline for the quick mode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from fogline.netproxy.proxy import JITTER_DISTS, NetConditions

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

_CONDITION_KEYS = ("delay_ms", "jitter_ms", "jitter_dist", "bandwidth_kbps", "blackhole", "jitter_slot_ms")
_TOP_KEYS = ("name", "description", "duration_s", "phases", "repeat", "slo_ms", "quick")


class ScenarioError(ValueError):
    """A scenario file is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class Phase:
    """Conditions that start at ``at_s`` seconds into the scenario and hold until the next phase."""

    at_s: float
    conditions: NetConditions


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    phases: tuple[Phase, ...]
    slo_ms: float | None = None
    quick: bool = False

    def conditions_at(self, t_s: float) -> NetConditions:
        """The conditions planned for time ``t_s`` (seconds from the scenario's start)."""
        return conditions_at(self.phases, t_s)

    def scaled(self, factor: float) -> Scenario:
        """The same timeline with every time multiplied by ``factor`` (the quick mode uses < 1)."""
        if factor <= 0:
            raise ValueError(f"time scale must be positive, got {factor}")
        phases = tuple(replace(p, at_s=round(p.at_s * factor, 6)) for p in self.phases)
        return replace(self, duration_s=round(self.duration_s * factor, 6), phases=phases)


def conditions_at(phases: Sequence[Phase], t_s: float) -> NetConditions:
    """The last phase that started at or before ``t_s`` (the first phase before the start)."""
    current = phases[0].conditions
    for phase in phases:
        if phase.at_s <= t_s:
            current = phase.conditions
        else:
            break
    return current


def parse_conditions(raw: Any, where: str) -> NetConditions:
    """One mapping of condition keys -> ``NetConditions``; ``ScenarioError`` naming ``where`` if bad."""
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: expected a mapping of {', '.join(_CONDITION_KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(_CONDITION_KEYS) - {"at_s"})
    if unknown:
        raise ScenarioError(f"{where}: unknown key {unknown[0]!r}; expected {', '.join(_CONDITION_KEYS)}")
    values: dict[str, Any] = {}
    if raw.get("jitter_ms") and not raw.get("jitter_slot_ms"):
        raise ScenarioError(f"{where}.jitter_slot_ms: jitter needs a slot length > 0 (the proxy runs in "
                            "timeline mode: one jitter draw per slot)")
    for key in ("delay_ms", "jitter_ms", "jitter_slot_ms"):
        if key in raw:
            values[key] = _number(raw[key], f"{where}.{key}", minimum=0.0)
    if "bandwidth_kbps" in raw and raw["bandwidth_kbps"] is not None:
        values["bandwidth_kbps"] = _number(raw["bandwidth_kbps"], f"{where}.bandwidth_kbps", minimum=1e-9)
    if "jitter_dist" in raw:
        if raw["jitter_dist"] not in JITTER_DISTS:
            raise ScenarioError(f"{where}.jitter_dist: expected one of {', '.join(JITTER_DISTS)}, got {raw['jitter_dist']!r}")
        values["jitter_dist"] = raw["jitter_dist"]
    if "blackhole" in raw:
        if not isinstance(raw["blackhole"], bool):
            raise ScenarioError(f"{where}.blackhole: expected true or false, got {raw['blackhole']!r}")
        values["blackhole"] = raw["blackhole"]
    return NetConditions(**values)


def _number(value: Any, where: str, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScenarioError(f"{where}: expected a number, got {value!r}")
    if value < minimum:
        raise ScenarioError(f"{where}: must be >= {minimum:g}, got {value!r}")
    return float(value)


def _phases(raw: Mapping[str, Any], duration: float, where: str) -> tuple[Phase, ...]:
    if ("phases" in raw) == ("repeat" in raw):
        raise ScenarioError(f"{where}: give exactly one of 'phases' or 'repeat'")
    if "phases" in raw:
        items = raw["phases"]
        if not isinstance(items, list) or not items:
            raise ScenarioError(f"{where}.phases: expected a non-empty list of conditions with at_s")
        phases = []
        for i, item in enumerate(items):
            at = _number(item.get("at_s") if isinstance(item, Mapping) else None,
                         f"{where}.phases[{i}].at_s", minimum=0.0)
            phases.append(Phase(at, parse_conditions(item, f"{where}.phases[{i}]")))
        if phases[0].at_s != 0:
            raise ScenarioError(f"{where}.phases[0].at_s: the first phase must start at 0")
        for i in range(1, len(phases)):
            if phases[i].at_s <= phases[i - 1].at_s:
                raise ScenarioError(f"{where}.phases[{i}].at_s: phases must start in increasing order")
            if phases[i].at_s >= duration:
                raise ScenarioError(f"{where}.phases[{i}].at_s: starts after the scenario ends ({duration:g} s)")
        return tuple(phases)
    rep = raw["repeat"]
    if not isinstance(rep, Mapping) or set(rep) != {"every_s", "conditions"}:
        raise ScenarioError(f"{where}.repeat: expected {{every_s: SECONDS, conditions: [...]}}")
    every = _number(rep["every_s"], f"{where}.repeat.every_s", minimum=1e-3)
    conds = rep["conditions"]
    if not isinstance(conds, list) or not conds:
        raise ScenarioError(f"{where}.repeat.conditions: expected a non-empty list")
    parsed = [parse_conditions(c, f"{where}.repeat.conditions[{i}]") for i, c in enumerate(conds)]
    count = math.ceil(duration / every - 1e-9)
    return tuple(Phase(round(k * every, 6), parsed[k % len(parsed)]) for k in range(count))


def scenario_from_mapping(raw: Any, source: str) -> Scenario:
    """Validate one parsed YAML document (``source`` names it in errors)."""
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{source}: expected a mapping with name, duration_s and phases or repeat")
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ScenarioError(f"{source}: unknown key {unknown[0]!r}; expected {', '.join(_TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ScenarioError(f"{source}.name: expected a short identifier (letters, digits, _ or -), got {name!r}")
    duration = _number(raw.get("duration_s"), f"{source}.duration_s", minimum=1e-3)
    slo = raw.get("slo_ms")
    return Scenario(
        name=name,
        description=str(raw.get("description", "")),
        duration_s=duration,
        phases=_phases(raw, duration, source),
        slo_ms=None if slo is None else _number(slo, f"{source}.slo_ms", minimum=1e-3),
        quick=bool(raw.get("quick", False)),
    )


def load_scenario(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc}") from None
    return scenario_from_mapping(raw, str(path))


def load_scenarios(directory: Path | str = SCENARIO_DIR, names: Sequence[str] | None = None) -> list[Scenario]:
    """Every ``*.yaml`` in ``directory`` (sorted by file name), or only ``names`` in that order."""
    found = {s.name: s for s in (load_scenario(p) for p in sorted(Path(directory).glob("*.yaml")))}
    if names is None:
        return list(found.values())
    missing = [n for n in names if n not in found]
    if missing:
        raise ScenarioError(f"unknown scenario {missing[0]!r}; available: {', '.join(found)}")
    return [found[n] for n in names]
