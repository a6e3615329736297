"""The cloud as several replicas: one ``CloudLink`` stream per replica, each request to the least busy one.

``ReplicaSet`` is a ``fogline.agent.link_port.CloudLinkPort`` (the data plane sees one link) for a
``cloud.endpoint`` that names several replicas (``dns:///NAME:PORT``, ``ipv4:``/``ipv6:`` lists;
``fogline.fleet.target``). It

- resolves the target (``fogline.agent.resolver``) at start, every ``reresolve_s`` and soon after a
  replica's connection drops (a replica that died, or one the cloud's ``max_connection_age`` closed:
  new replicas behind the name are found then), and keeps one ``CloudLink`` per address: a new address
  gets a link at once, a vanished one is closed (its pending requests are sent again elsewhere);
- sends each request to the usable replica with the fewest requests outstanding (``replica_choice``),
  rotating among equals; every replica keeps its own RTT estimate, breaker and per-model health;
- shows the router the link it would use (``replica_choice.aggregate``): "down" only when no replica
  is healthy;
- sends a request whose replica's connection failed (``LinkLost``: the stream broke, stalled or was
  closed) again to another usable replica while its deadline still allows the round trip there; when
  none can take it in time the failure goes to the data plane, which answers from the edge. Nothing
  is lost. A cloud's own error for a request is not sent again.

Why not gRPC's ``round_robin`` policy over one channel: it spreads *calls* over sub-channels, but the
link's unit of work is one long-lived ``ModelStreamInfer`` stream, which round_robin pins to a single
sub-channel for its whole life, so every request would still go to one replica. Per-replica streams
also give per-replica RTT, health and outstanding counts, which a channel hides.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from fogline import codec
from fogline.agent.cloud_link import CloudLink
from fogline.agent.link_port import CloudAnswer, LinkLost
from fogline.agent.link_settings import LinkSettings
from fogline.agent.replica_choice import ReplicaLoad, aggregate, choose
from fogline.agent.resolver import Replica, Resolver
from fogline.agent.router_types import LinkView
from fogline.fleet.target import CloudTarget

log = logging.getLogger(__name__)

#: Lookups after a replica failure are at least this far apart (s).
MIN_RESOLVE_GAP_S = 1.0
#: How often the set looks for a replica whose connection dropped (s).
WATCH_TICK_S = 0.25


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica for the metrics: its address, requests outstanding, smoothed RTT, link state."""

    replica: str
    inflight: int
    rtt_ms: float | None
    state: str


@dataclass
class ReplicaSetStats:
    resolves: int = 0
    resolve_failures: int = 0
    added: int = 0
    removed: int = 0
    #: Requests sent again to another replica after their replica's connection failed them.
    resent: int = 0
    #: Answers per replica address.
    answers: Counter[str] = field(default_factory=Counter)


class ReplicaSet:
    """One ``CloudLink`` per resolved replica behind one ``CloudLinkPort`` (see the module docstring)."""

    def __init__(self, settings: LinkSettings, target: CloudTarget, *, resolver: Resolver | None = None,
                 link_factory: Callable[[LinkSettings], CloudLink] | None = None, reresolve_s: float = 30.0,
                 default_deadline_ms: float = 100.0, clock: Callable[[], float] = time.monotonic,
                 on_resend: Callable[[], None] | None = None) -> None:
        #: The settings every replica's link starts from (``endpoint``: the target as written).
        self.settings = dataclasses.replace(settings, endpoint=target.text)
        self.target = target
        self.resolver = resolver or Resolver(target)
        self._factory = link_factory or CloudLink
        self.reresolve_s = reresolve_s
        #: The deadline of a request without ``deadline_ms`` (the device's SLO; set again on reload):
        #: a failed request is sent again only while this much time since its first send is not spent.
        self.default_deadline_ms = default_deadline_ms
        self._clock = clock
        self._on_resend = on_resend
        #: Replica endpoint -> its link, in the order the resolver gave them.
        self.links: dict[str, CloudLink] = {}
        self.stats = ReplicaSetStats()
        self._next = 0  # where the tie-break rotation starts
        self._poke = asyncio.Event()
        #: Set by ``retarget``: the next lookup skips the minimum gap (a new target is not a failure).
        self._retargeted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def now_ms(self) -> float:
        return self._clock() * 1000.0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Resolve and connect in the background. Returns at once."""
        self._task = asyncio.create_task(self._refresh_loop(), name="cloud-replicas")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        links, self.links = list(self.links.values()), {}
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)

    async def wait_usable(self, timeout_s: float) -> bool:
        """Wait until the router would send traffic to some replica."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.view("").usable and any(link.rtt.smoothed_ms is not None for link in self.links.values()):
                return True
            await asyncio.sleep(0.02)
        return False

    def retarget(self, target: CloudTarget) -> None:
        """Use a new target from now on (a reload rewrote ``cloud.endpoint``): resolved at once, replicas
        no longer named are closed and their pending requests sent to the others."""
        if target.text == self.target.text:
            return
        log.info("cloud: target %s -> %s", self.target.text, target.text)
        self.target = target
        self.resolver = Resolver(target, self.resolver._lookup)
        self.settings = dataclasses.replace(self.settings, endpoint=target.text)
        self._retargeted.set()
        self._poke.set()

    def reauthenticate(self) -> None:
        for link in self.links.values():
            link.reauthenticate()

    # ------------------------------------------------------------------ resolving
    async def _refresh_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = -math.inf
        connected: dict[str, bool] = {}
        while not self._closing:
            ok = await self.refresh()
            last = loop.time()
            self._poke.clear()
            # Until the next lookup: the period, a poke (a failure, a retarget), or a replica whose
            # connection dropped; a failed lookup is tried again after the minimum gap.
            due = last + (self.reresolve_s if ok else MIN_RESOLVE_GAP_S)
            while not self._closing and loop.time() < due and not self._poke.is_set():
                for name, link in self.links.items():
                    if connected.get(name) and not link.connected:
                        log.info("cloud replica %s: connection lost; resolving %s again", name, self.target.text)
                        self._poke.set()
                    connected[name] = link.connected
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), min(WATCH_TICK_S, max(0.0, due - loop.time())))
            gap = last + MIN_RESOLVE_GAP_S - loop.time()
            if gap > 0 and not self._retargeted.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._retargeted.wait(), gap)
            self._retargeted.clear()

    async def refresh(self) -> bool:
        """Resolve the target once and add and remove links to match; False when the lookup failed
        (the replicas known stay as they are)."""
        try:
            replicas = await self.resolver.resolve()
        except OSError as exc:
            self.stats.resolve_failures += 1
            log.warning("cloud %s: cannot resolve (%s); keeping %d replica(s)", self.target.text, exc,
                        len(self.links))
            return False
        self.stats.resolves += 1
        if not replicas:
            log.warning("cloud %s resolved to no address; keeping %d replica(s)", self.target.text, len(self.links))
            return False
        await self._apply(replicas)
        return True

    async def _apply(self, replicas: list[Replica]) -> None:
        wanted = {replica.endpoint: replica for replica in replicas}
        gone = [name for name in self.links if name not in wanted]
        for name in gone:
            link = self.links.pop(name)
            self.stats.removed += 1
            log.info("cloud replica %s: no longer in %s; closing its stream", name, self.target.text)
            await link.close()  # its pending requests fail with LinkLost and are sent elsewhere
        for name, replica in wanted.items():
            if name in self.links:
                continue
            link = self._factory(dataclasses.replace(self.settings, endpoint=replica.endpoint,
                                                     server_name=replica.server_name))
            self.links[name] = link
            self.stats.added += 1
            log.info("cloud replica %s: added (%s)", name, self.target.text)
            await link.start()

    # ------------------------------------------------------------------ the router's view
    def view(self, model: str) -> LinkView:
        views, loads = self._look(model)
        return aggregate(views, choose(loads, self._next))

    def _look(self, model: str, exclude: frozenset[str] = frozenset()) -> tuple[list[LinkView], list[ReplicaLoad]]:
        views, loads = [], []
        for name, link in self.links.items():
            view = link.view(model)
            views.append(view)
            loads.append(ReplicaLoad(view.usable and name not in exclude, link.pending_count))
        return views, loads

    def replicas(self) -> list[ReplicaStatus]:
        """Every replica now, for the metrics."""
        out = []
        for name, link in self.links.items():
            view = link.view("")
            out.append(ReplicaStatus(name, link.pending_count, view.rtt_ms, view.state))
        return out

    # ------------------------------------------------------------------ requests
    def submit(self, request: codec.InferRequest) -> asyncio.Future[CloudAnswer]:
        """Send to the least busy usable replica; the future fails (``LinkLost``) only when no replica
        could take it in time, or with the cloud's own error."""
        outer: asyncio.Future[CloudAnswer] = asyncio.get_running_loop().create_future()
        if not self._send(request, outer, frozenset(), self.now_ms(), resend=False):
            outer.set_exception(LinkLost(f"no replica of {self.target.text} is usable"))
        return outer

    def _send(self, request: codec.InferRequest, outer: asyncio.Future[CloudAnswer], tried: frozenset[str],
              started: float, *, resend: bool) -> bool:
        """Send to the replica ``choose`` picks among those not ``tried``; False when there is none (or,
        for a resend, when the time left would not cover the round trip there)."""
        views, loads = self._look(request.model_name, tried)
        index = choose(loads, self._next)
        if index is None:
            return False
        if resend and not self._time_allows(request, started, views[index]):
            return False
        name = list(self.links)[index]
        self._next = index + 1
        inner = self.links[name].submit(request)
        inner.add_done_callback(lambda done: self._answered(done, request, outer, tried | {name}, started, name))
        return True

    def _time_allows(self, request: codec.InferRequest, started: float, view: LinkView) -> bool:
        deadline = codec.deadline_ms_of(request.parameters)
        budget = float(deadline) if deadline is not None else self.default_deadline_ms
        trip = (view.effective_rtt_ms or 0.0) + view.cloud_compute_ms
        return self.now_ms() - started + trip < budget

    def _answered(self, inner: asyncio.Future[CloudAnswer], request: codec.InferRequest,
                  outer: asyncio.Future[CloudAnswer], tried: frozenset[str], started: float, name: str) -> None:
        if inner.cancelled():
            error: BaseException | None = LinkLost(f"cloud replica {name}: the request was cancelled")
        else:
            error = inner.exception()
        if outer.done():
            return
        if error is None:
            answer = inner.result()
            self.stats.answers[name] += 1
            outer.set_result(CloudAnswer(answer.response, self.now_ms() - started) if len(tried) > 1 else answer)
            return
        if isinstance(error, LinkLost) and not self._closing:
            self._poke.set()  # a replica failed: look the name up again soon
            if self._send(request, outer, tried, started, resend=True):
                self.stats.resent += 1
                if self._on_resend is not None:
                    self._on_resend()
                return
        outer.set_exception(error)
