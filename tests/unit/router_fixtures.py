"""Builders for the router's inputs, shared by the router's unit tests (``test_router_*.py``).

``observation(...)`` builds the ``Observation`` the router reads from a few numbers (or around a given
``LinkView``), ``request(...)`` the ``RequestView``. A test file that routes mostly one kind of
situation binds its own defaults with ``functools.partial``.
"""

from __future__ import annotations

from fogline.agent.router_types import EdgeView, LinkView, Observation, RequestView, RouterMemory


def observation(link: LinkView | None = None, *, rtt: float | None = 20.0, usable: bool = True,
                state: str = "ready", outstanding: float = 0.0, compute: float = 0.0, queue: int = 0,
                service: float = 10.0, cpu: float | None = None, preferred: bool = True) -> Observation:
    """One edge worker with ``queue`` requests ahead and ``service`` ms per run; the link is ``link``,
    or one built from ``usable``, ``state``, ``rtt``, ``outstanding`` and ``compute``."""
    if link is None:
        link = LinkView(usable=usable, state=state, rtt_ms=rtt, outstanding_ms=outstanding,
                        cloud_compute_ms=compute)
    edge = EdgeView(queue_depth=queue, workers=1, service_ms=service, cpu_load=cpu)
    return Observation(link, edge, RouterMemory(cloud_preferred=preferred))


def request(deadline: float = 100.0, route: str = "auto", model: str = "digits") -> RequestView:
    return RequestView(model=model, route=route, deadline_ms=deadline)
