"""Whether one edge answer is shadowed to the cloud. Pure: no clock, no I/O.

Live agreement (``routing.shadow`` in the fleet file) sends a copy of a share of the requests the edge
answered to the cloud, after the client has its answer, and compares the two answers
(``fogline.agent.agreement``). A shadow is worth little and must cost the client nothing, so it goes
only when nothing argues against it:

1. the request is picked: a deterministic, evenly spread ``share`` of each model's edge answers
   (``Sampler``; a random draw would make the share, and the tests, wobble);
2. the link is healthy: usable (connected, breaker closed, credentials accepted), the cloud serves
   the edge's model version, and the round trip is measured and under ``rtt_threshold_ms``, the
   level at which the router itself stops preferring the cloud;
3. the cloud has headroom: calls already out have not been waiting longer than that same threshold
   (``LinkView.outstanding_ms``: queueing at the cloud shows there first), the model's shadows are
   not paused after a refused one (``paused``: an overloaded cloud answers RESOURCE_EXHAUSTED), and
   fewer than ``max_inflight`` shadows are out; past that bound the shadow is dropped, not queued.

``skip_reason`` returns the outcome a skipped shadow is counted under (``fogline_agent_shadow_requests_total``),
or None when it goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fogline.fleet.model import ShadowConfig, default_of

if TYPE_CHECKING:  # (router_types imports this module: ShadowSettings is part of RoutingPolicy)
    from fogline.agent.router_types import LinkView

#: Outcomes of a shadow that never went (the counter's ``outcome`` label; ``fogline.agent.shadowing``
#: adds ``compared``, ``failed`` and ``incomparable`` for the ones that did).
LINK_UNHEALTHY = "link_unhealthy"
CLOUD_BUSY = "cloud_busy"
DROPPED = "dropped"

#: The golden ratio's fractional part: stepping by it spreads picks evenly without a period a
#: workload could line up with (a client alternating two kinds of request is sampled in both).
_STEP = 0.6180339887498949


@dataclass(frozen=True)
class ShadowSettings:
    """One device's ``routing.shadow`` block; the defaults are the fleet model's."""

    share: float = float(default_of(ShadowConfig, "share"))
    max_inflight: int = default_of(ShadowConfig, "max_inflight")
    window: int = default_of(ShadowConfig, "window")
    min_rows: int = default_of(ShadowConfig, "min_rows")

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"shadow share is a fraction in 0..1, got {self.share}")
        if self.max_inflight < 1 or self.window < 1 or not 1 <= self.min_rows <= self.window:
            raise ValueError("shadow max_inflight and window must be at least 1 and min_rows within 1..window, "
                             f"got {self.max_inflight}, {self.window}, {self.min_rows}")

    @classmethod
    def from_config(cls, config: ShadowConfig) -> ShadowSettings:
        return cls(share=float(config.share), max_inflight=config.max_inflight, window=config.window,
                   min_rows=config.min_rows)

    @property
    def enabled(self) -> bool:
        return self.share > 0.0


class Sampler:
    """Picks ``share`` of each model's offers, evenly spread and the same on every run.

    Each model keeps a phase that steps by the golden ratio's fraction per offer; an offer is picked
    when the phase lands below ``share``. Over any ``n`` offers the count picked is within a couple of
    ``share * n`` (a low-discrepancy sequence), whatever ``share`` is, and a changed share (a reload)
    applies from the next offer.
    """

    def __init__(self) -> None:
        self._phase: dict[str, float] = {}

    def take(self, model: str, share: float) -> bool:
        if share <= 0.0:
            return False
        phase = (self._phase.get(model, 0.0) + _STEP) % 1.0
        self._phase[model] = phase
        return phase < share


def skip_reason(link: LinkView, *, rtt_limit_ms: float, inflight: int, max_inflight: int,
                paused: bool = False) -> str | None:
    """Why a picked shadow must not go now (an outcome name), or None when it may."""
    if not link.usable or link.version_missing:
        return LINK_UNHEALTHY
    # The router's belief (``LinkView.effective_rtt_ms``) in two halves: the measured round trip says
    # how the network is, calls still waiting (``outstanding_ms``) how busy the cloud is.
    measured = [rtt for rtt in (link.rtt_ms, link.rtt_recent_ms, link.rtt_typical_ms) if rtt is not None]
    if link.rtt_ms is None or min(measured) > rtt_limit_ms:
        return LINK_UNHEALTHY
    if paused or link.outstanding_ms > rtt_limit_ms:
        return CLOUD_BUSY
    if inflight >= max_inflight:
        return DROPPED
    return None
