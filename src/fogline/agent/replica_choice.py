"""Which cloud replica takes the next request, and how several replicas look as one link: pure functions.

``fogline.agent.replica_set.ReplicaSet`` feeds them what it sees of each replica's link (usable or not for
the request's model, requests outstanding, its ``LinkView``); nothing here touches a socket or a clock.

- ``choose``: the usable replica with the least work outstanding (requests sent and not answered yet);
  among equals, the first at or after a rotating start, so an idle agent whose requests never overlap
  still spreads them evenly instead of always picking the first replica.
- ``aggregate``: the link the router sees. Usable when any replica is, with the RTT and compute time of
  the replica ``choose`` would pick (the one the request will go to); "down" only when no replica is
  healthy, and then with the most hopeful of their states (a link that works but whose model fails
  everywhere says ``model_failing``; ``cloud_unauthenticated`` only when every replica refuses the
  credentials, since that one keeps work on the edge until the credentials change).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fogline.agent.router_types import CLOUD_UNAUTHENTICATED, LinkView

#: The view of a link with no replica at all (the name resolved to nothing yet).
NO_REPLICAS = LinkView(usable=False, state="no_replicas")

#: Unusable states, most hopeful first (others come after these, ``cloud_unauthenticated`` last).
_HOPE = ("model_failing", "breaker_half_open", "breaker_open", "connecting", "down")


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica as the choice sees it."""

    usable: bool
    outstanding: int = 0


def choose(loads: Sequence[ReplicaLoad], start: int = 0) -> int | None:
    """Index of the usable replica with the fewest outstanding requests; ties go to the first at or
    after ``start`` (taken modulo the count). None when no replica is usable."""
    n = len(loads)
    best: int | None = None
    for step in range(n):
        i = (start + step) % n
        if loads[i].usable and (best is None or loads[i].outstanding < loads[best].outstanding):
            best = i
    return best


def aggregate(views: Sequence[LinkView], chosen: int | None) -> LinkView:
    """The link as the router sees it: the chosen replica's view, or why none is usable."""
    if chosen is not None:
        return views[chosen]
    if not views:
        return NO_REPLICAS
    return min(views, key=_hope)


def _hope(view: LinkView) -> int:
    if view.state == CLOUD_UNAUTHENTICATED:
        return len(_HOPE) + 1
    return _HOPE.index(view.state) if view.state in _HOPE else len(_HOPE)
