"""The link as a function of time: the proxy's timeline mode, and what the benchmark's oracle reads.

In its default mode the proxy draws a jitter per chunk it reads, so two runs of the same scenario
see different delays, and a long draw holds every later chunk of that connection behind it. In
timeline mode the delay is instead a deterministic function of time, the same for every connection
and every run that applies the same conditions at the same moments with the same seed::

    d(s)  = base delay of the phase in force at time s
            + the jitter drawn for s's slot  (slots of ``jitter_slot_ms``, counted from the moment
              the phase was applied; one draw per (seed, direction, slot index))
    D(t)  = max over s <= t of (s + d(s)) - t        one-way delay of bytes entering at time t

That is a link that behaves like a queue: a delay spike stalls the link and then drains at real-time
speed, and nothing overtakes (``t + D(t)`` never decreases, so delivery is FIFO by construction).
A step from 250 ms down to 5 ms therefore drains over about 245 ms, as in-order delivery on a real
path would. The jitter draw for a slot is the proxy's own per-chunk sampler
(``NetConditions.sample_delay_s``) fed from a generator seeded with ``"seed/direction/slot"``, clamped
to ``NetConditions.max_delay_ms`` (so the look-back below is exact).

``LinkTimeline`` is pure (times are plain seconds on any clock): the proxy feeds it
``loop.time()``, the oracle feeds it the switch times the proxy reported, and both get the same D(t).
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # fogline.netproxy.proxy imports this module
    from fogline.netproxy.proxy import NetConditions

DIRECTIONS = ("up", "down")


@lru_cache(maxsize=1 << 16)
def slot_delay_ms(conditions: NetConditions, seed: int, direction: str, slot: int) -> float:
    """d(s) in ms for every s in slot ``slot`` of a phase with ``conditions`` (deterministic)."""
    if not _slotted(conditions):
        return conditions.delay_ms
    rng = random.Random(f"{seed}/{direction}/{slot}")
    return min(conditions.sample_delay_s(rng) * 1000.0, conditions.max_delay_ms)


@dataclass(frozen=True)
class LinkPhase:
    """Conditions applied at ``start_s`` (seconds on the timeline's clock)."""

    start_s: float
    conditions: NetConditions


class LinkTimeline:
    """D(t) for both directions over a growing list of applied phases (see the module docstring)."""

    def __init__(self, seed: int = 0, phases: list[LinkPhase] | tuple[LinkPhase, ...] = ()) -> None:
        self.seed = int(seed)
        self.phases: list[LinkPhase] = []
        self._starts: list[float] = []
        self._cap_upto: list[float] = []  # the largest possible d(s) (s) in phases 0..i
        for phase in phases:
            self.apply(phase.start_s, phase.conditions)

    def apply(self, start_s: float, conditions: NetConditions) -> None:
        """Conditions in force from ``start_s`` on (not before the last phase's start)."""
        if self._starts and start_s < self._starts[-1]:
            raise ValueError(f"phases must be applied in time order: {start_s} < {self._starts[-1]}")
        if conditions.jitter_ms > 0 and conditions.jitter_slot_ms <= 0:
            raise ValueError("timeline mode draws the jitter per time slot: set jitter_slot_ms > 0")
        cap = conditions.max_delay_ms / 1000.0
        self.phases.append(LinkPhase(float(start_s), conditions))
        self._starts.append(float(start_s))
        self._cap_upto.append(max(cap, self._cap_upto[-1]) if self._cap_upto else cap)

    def phase_index(self, t_s: float) -> int:
        """The phase in force at ``t_s`` (the first one before the first start)."""
        return max(0, bisect.bisect_right(self._starts, t_s) - 1)

    def conditions_at(self, t_s: float) -> NetConditions:
        return self.phases[self.phase_index(t_s)].conditions

    def _d_s(self, i: int, direction: str, t_s: float) -> float:
        """d(t) in seconds, ``t_s`` inside phase ``i``."""
        phase = self.phases[i]
        c = phase.conditions
        slot = _slot(c, t_s - phase.start_s)
        return slot_delay_ms(c, self.seed, direction, slot) / 1000.0

    def arrival_s(self, direction: str, t_s: float) -> float:
        """When bytes that enter the link at ``t_s`` leave it: ``t_s + D(t_s)``."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        if not self.phases:
            return t_s
        i = self.phase_index(t_s)
        best = t_s + self._d_s(i, direction, t_s)
        end = t_s  # the pieces of phase i end at t_s at the latest
        while i >= 0:
            if end + self._cap_upto[i] <= best:
                break  # nothing at or before `end` can reach past `best`
            phase = self.phases[i]
            c = phase.conditions
            if _slotted(c):
                best = self._scan_slots(phase, direction, end, best)
            elif end > phase.start_s:  # one constant piece [start, end): its sup is end + d
                best = max(best, end + c.delay_ms / 1000.0)
            end = phase.start_s
            i -= 1
        return best

    def _scan_slots(self, phase: LinkPhase, direction: str, end: float, best: float) -> float:
        """The largest ``s + d(s)`` over the slots of ``phase`` that end by ``end`` (walking back)."""
        c = phase.conditions
        width = c.jitter_slot_ms / 1000.0
        cap = c.max_delay_ms / 1000.0
        if end <= phase.start_s:
            return best
        k = _slot(c, end - phase.start_s)
        while k >= 0:
            slot_end = min(end, phase.start_s + (k + 1) * width)
            if slot_end + cap <= best:
                break
            best = max(best, slot_end + slot_delay_ms(c, self.seed, direction, k) / 1000.0)
            k -= 1
        return best

    def one_way_ms(self, direction: str, t_s: float) -> float:
        """D(t) in milliseconds."""
        return (self.arrival_s(direction, t_s) - t_s) * 1000.0

    def round_trip_ms(self, t_s: float, service_ms: float = 0.0) -> float:
        """Up at ``t_s``, ``service_ms`` at the far end, then down: the whole exchange in ms."""
        there = self.arrival_s("up", t_s) + service_ms / 1000.0
        return (self.arrival_s("down", there) - t_s) * 1000.0


def _slotted(conditions: NetConditions) -> bool:
    return conditions.jitter_ms > 0 and conditions.jitter_slot_ms > 0


def _slot(conditions: NetConditions, offset_s: float) -> int:
    if not _slotted(conditions) or offset_s < 0:
        return 0
    return int(offset_s * 1000.0 // conditions.jitter_slot_ms)
