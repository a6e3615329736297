"""The agent's request flow, free of any transport: route, run, fall back, answer.

``DataPlane.infer(request)`` is what both the unary and the streaming gRPC handlers call:

1. validate the request parameters (``route``, ``deadline_ms``; the deadline defaults to the SLO);
2. snapshot what is known (the cloud link's ``LinkView``, the edge runner's ``EdgeView``, the router's
   memory) and ask the pure router (``fogline.agent.router.decide``) for a tier and a reason;
3. edge: run the INT8 model locally;
   cloud: send it over the cloud link and wait, at most until ``edge_start_by_ms`` (the last moment
   the edge can still make the deadline). If the cloud answers in time, that answer is returned. If it
   fails (stream broken, cloud error) the edge runs at once; if it is late the edge starts and the
   first of the two answers wins (an early edge answer of a deadline backup waits for the cloud's
   until ``edge_hold_until_ms``). Either way the client gets an answer, marked ``fallback=true`` when
   the edge stood in;
4. every response carries ``served_by``, ``route_reason``, ``fallback`` and ``model_version``;
5. an edge answer (not a fallback) may then be shadowed to the cloud, off the client's path, to keep
   the live agreement of the two models (``routing.shadow``, ``fogline.agent.shadowing``).

Edge and cloud stay paired: a request goes to the cloud with the ``model_version`` the edge serves. A
cloud that answers NOT_FOUND lacks it: the edge answers (``cloud_version_missing``), and the model's
requests stay there for ``version_retry_s`` (``LinkView.version_missing``), then one tries the cloud
again; a swap to another edge version clears it at once. The link itself is not judged by it.

Requests with malformed inputs fail with ``InvalidInput`` before any tier is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fogline import codec
from fogline.agent.edge_pool import EdgePool, EdgeRunner
from fogline.agent.link_auth import CloudUnauthenticated
from fogline.agent.link_port import CloudAnswer, CloudLinkPort
from fogline.agent.load import CpuMonitor
from fogline.agent.loop_lag import LoopLag
from fogline.agent.router import decide
from fogline.agent.router_types import (
    CLOUD_UNAUTHENTICATED,
    CLOUD_VERSION_MISSING,
    Decision,
    LinkView,
    Observation,
    RequestView,
    RouterMemory,
    RoutingPolicy,
    Tier,
)
from fogline.agent.shadowing import Shadower
from fogline.errors import InvalidInput, Unavailable, status_of
from fogline.serving.stream import waits_alone
from fogline.serving.validation import validate_request

log = logging.getLogger(__name__)

NO_LINK = LinkView(usable=False, state="not_configured")
#: Seconds a model whose version the cloud lacks stays on the edge before the cloud is asked again.
VERSION_RETRY_S = 10.0


@dataclass
class DataPlaneStats:
    """Counters the metrics endpoint, the demo and the tests read."""

    requests: int = 0
    errors: int = 0
    served_by: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0


class DataPlane:
    """Routes each request to the edge or the cloud and always produces an answer (or a clear error)."""

    def __init__(self, edge: EdgePool, link: CloudLinkPort | None, policy: RoutingPolicy, *,
                 clock: Callable[[], float] = time.monotonic, metrics: Any = None) -> None:
        self.edge = edge
        self.link = link  # a CloudLink, or None for a device without a cloud
        self.policy = policy
        self.memory = RouterMemory()
        self.stats = DataPlaneStats()
        #: An ``fogline.agent.metrics.AgentMetrics`` (or None): every answer and error is reported there too.
        self.metrics = metrics
        self.loop_lag = LoopLag()
        #: Host CPU use for the router's overload check (started with the server; None: not measured).
        self.cpu = CpuMonitor()
        #: The fleet file revision these settings came from, and how many times they were (re)applied.
        self.config_revision = ""
        self.config_generation = 0
        self._clock = clock
        #: Per model: the edge version the cloud answered NOT_FOUND for, and until when (clock time) its
        #: requests stay on the edge (``cloud_version_missing``); then one is tried on the cloud again.
        self.cloud_missing: dict[str, tuple[str, float]] = {}
        #: How long a missing version keeps its model off the cloud before the cloud is asked again (s).
        self.version_retry_s = VERSION_RETRY_S
        #: Shadows of edge answers to the cloud and the live agreement they measure (``routing.shadow``).
        self.shadow = Shadower(self._link_view, self._submit, metrics=metrics, clock=clock,
                               on_error=self._shadow_failed)

    def apply_policy(self, policy: RoutingPolicy, revision: str = "") -> None:
        """Route every request from now on with ``policy`` (a SIGHUP reload). Requests already routed
        finish as decided; streams and the cloud link are untouched. The router's hysteresis memory
        is kept: it describes the link, not the settings."""
        self.policy = policy
        self.config_revision = revision
        self.config_generation += 1

    # ------------------------------------------------------------------ the request flow
    async def infer(self, request: codec.InferRequest, *, time_left_ms: float | None = None) -> codec.InferResponse:
        """Answer one request. ``time_left_ms`` is the caller's transport deadline (a gRPC timeout), which
        tightens the budget when it is shorter than the request's ``deadline_ms`` or the SLO."""
        started = self._clock()
        self.stats.requests += 1
        if self.metrics is not None:
            self.metrics.inflight.inc()
        try:
            route = codec.route_of(request.parameters)
            deadline_ms = codec.deadline_ms_of(request.parameters)
            budget = float(deadline_ms) if deadline_ms is not None else self.policy.slo_ms
            if time_left_ms is not None:
                budget = max(1.0, min(budget, time_left_ms))
            # The agent serves the models its device lists (the cloud is their second tier, not a
            # catalogue of its own): anything else is NOT_FOUND, whatever the cloud might host.
            runner = self.edge.require(request.model_name, request.model_version)
            # Held until answered: a version swapped out meanwhile (SIGHUP) still serves this request.
            runner.users += 1
            try:
                validate_request(runner.model, request.inputs, request.outputs)
                decision = self._decide(request.model_name, route, budget, runner)
                response = await self._execute(request, decision, runner, started, budget)
            finally:
                runner.users -= 1
        except Exception as exc:
            self.stats.errors += 1
            if self.metrics is not None:
                self.metrics.observe_error(request.model_name, status_of(exc)[0].name)
            raise
        finally:
            if self.metrics is not None:
                self.metrics.inflight.dec()
        tier = str(response.parameters.get("served_by"))
        reason = str(response.parameters.get("route_reason"))
        fallback = bool(response.parameters.get("fallback"))
        self.stats.served_by[tier] += 1
        self.stats.reasons[reason] += 1
        self.stats.fallbacks += fallback
        if self.metrics is not None:
            other = "cloud" if tier == "edge" else "edge"
            self.metrics.observe_request(request.model_name, tier, reason, self._clock() - started,
                                         fallback_from=other if fallback else None)
        if tier == "edge" and not fallback:
            self.shadow.offer(self.policy, request, response, runner)
        return response

    def _link_view(self, model: str, version: str) -> LinkView:
        """The link as the router sees it for ``model``, with the cloud's missing version noted."""
        link_view = self.link.view(model) if self.link is not None else NO_LINK
        if self._version_missing(model, version):
            link_view = replace(link_view, version_missing=True)
        return link_view

    def _decide(self, model: str, route: str, budget_ms: float, runner: EdgeRunner) -> Decision:
        link_view = self._link_view(model, runner.version)
        edge_view = runner.view(self.loop_lag.high_ms(), self.cpu.load)
        decision = decide(self.policy, Observation(link_view, edge_view, self.memory),
                          RequestView(model=model, route=route, deadline_ms=budget_ms))
        if decision.memory.cloud_preferred != self.memory.cloud_preferred:
            log.info("router: %s the cloud (rtt %s ms, outstanding %.0f ms)",
                     "preferring" if decision.memory.cloud_preferred else "leaving",
                     "-" if link_view.rtt_ms is None else f"{link_view.rtt_ms:.0f}", link_view.outstanding_ms)
        self.memory = decision.memory
        return decision

    async def _execute(self, request: codec.InferRequest, decision: Decision, runner: EdgeRunner,
                       started: float, budget_ms: float) -> codec.InferResponse:
        if decision.tier is Tier.EDGE:
            # A stream client that waits alone for this answer (``fogline.serving.stream``): nothing else
            # needs the event loop, so a one-row call of a short model may run right on it.
            response = await self._run_edge(request, runner, decision.route_reason, decision.fallback,
                                            on_loop=waits_alone())
            if decision.escalate_below is not None:
                response = await self._maybe_escalate(request, response, runner, decision, started, budget_ms)
            return response
        if self.link is None:  # the router sends no work to a link that is not usable (NO_LINK)
            raise Unavailable("no cloud is configured")
        future = self._submit(request, runner)
        try:
            return await self._await_cloud(request, decision, runner, future, started)
        finally:
            if not future.done():
                # Nobody waits any more; the link keeps the entry until the late answer (an RTT sample).
                future.add_done_callback(_consume)

    async def _await_cloud(self, request: codec.InferRequest, decision: Decision, runner: EdgeRunner,
                           future: asyncio.Future[CloudAnswer], started: float) -> codec.InferResponse:
        start_by = decision.edge_start_by_ms
        if start_by is not None:
            remaining = start_by / 1000.0 - (self._clock() - started)
            if remaining > 0:
                await asyncio.wait({future}, timeout=remaining)
        else:
            await asyncio.wait({future})
        if future.done():
            cloud_error = future.exception()
            if cloud_error is None and not _complete(future.result(), request, runner):
                cloud_error = Unavailable("the cloud's answer lacks outputs this model produces")
            if cloud_error is None:
                return self._cloud_response(request, future.result(), decision.route_reason, decision.fallback)
            return await self._run_edge(request, runner, self._cloud_failed(request, runner, cloud_error), True)
        # The cloud is late: start the edge now, and take whichever answer comes first (but see the hold).
        edge_task = asyncio.ensure_future(self._run_edge(request, runner, "cloud_late", True))
        done, _ = await asyncio.wait({future, edge_task}, return_when=asyncio.FIRST_COMPLETED)
        hold_until = decision.edge_hold_until_ms
        if hold_until is not None and future not in done and edge_task.exception() is None:
            # The backup is ready early: the cloud's answer, if it still comes in time, is the better one.
            remaining = hold_until / 1000.0 - (self._clock() - started)
            if remaining > 0:
                await asyncio.wait({future}, timeout=remaining)
                done = {edge_task, future} if future.done() else {edge_task}
        if future in done and future.exception() is None and _complete(future.result(), request, runner):
            edge_task.cancel()  # a queued edge job is dropped unrun; a running one finishes unheard
            edge_task.add_done_callback(_consume)
            if decision.hedged and self.metrics is not None:
                self.metrics.observe_hedge(request.model_name, won=False)
            return self._cloud_response(request, future.result(), decision.route_reason, decision.fallback)
        if decision.hedged and self.metrics is not None:
            self.metrics.observe_hedge(request.model_name, won=True)
        if future.done() and not future.cancelled() and future.exception() is not None:
            self._cloud_failed(request, runner, future.exception())  # (a missing version: noted)
        return await edge_task

    async def _maybe_escalate(self, request: codec.InferRequest, response: codec.InferResponse,
                              runner: EdgeRunner, decision: Decision, started: float,
                              budget_ms: float) -> codec.InferResponse:
        """Cascade: a low-confidence edge answer goes to the cloud if time is left; else it stands."""
        if self.link is None or decision.escalate_below is None:  # (neither: cascade picked the cloud)
            return response
        confidence = runner.model.confidence(response.outputs)
        if confidence is None or float(min(confidence)) >= decision.escalate_below:
            return response
        remaining_ms = budget_ms - (self._clock() - started) * 1000.0
        if remaining_ms <= 0:
            return response
        future = self._submit(request, runner)
        await asyncio.wait({future}, timeout=remaining_ms / 1000.0)
        if self.metrics is not None:
            self.metrics.observe_escalation(request.model_name)
        if future.done() and future.exception() is None:
            return self._cloud_response(request, future.result(), "cascade_escalated", False)
        if future.done() and not future.cancelled():
            self._cloud_failed(request, runner, future.exception())
        future.add_done_callback(_consume)
        return response

    # ------------------------------------------------------------------ edge and cloud paired
    def _submit(self, request: codec.InferRequest, runner: EdgeRunner) -> asyncio.Future[CloudAnswer]:
        """Send ``request`` to the cloud asking for the model version the edge serves (v2
        ``model_version``), so both tiers answer with the same model."""
        assert self.link is not None
        if request.model_version != runner.version:
            request = replace(request, model_version=runner.version)
        return self.link.submit(request)

    def _cloud_failed(self, request: codec.InferRequest, runner: EdgeRunner, error: BaseException | None) -> str:
        """The route reason of an edge answer standing in for a failed cloud call, noting a missing version."""
        if isinstance(error, CloudUnauthenticated):
            return CLOUD_UNAUTHENTICATED  # the link now keeps work here until the credentials change
        if error is not None and _not_found(error):
            self._note_missing(request.model_name, runner.version)
            return CLOUD_VERSION_MISSING
        return "cloud_error"

    def _shadow_failed(self, model: str, version: str, error: BaseException) -> None:
        """A shadow's NOT_FOUND says what a client request's would: the cloud lacks this version. Client
        requests then stay on the edge as well, and shadows stop until the retry."""
        if _not_found(error):
            self._note_missing(model, version)

    def _note_missing(self, model: str, version: str) -> None:
        if model not in self.cloud_missing:
            log.warning("cloud lacks model %r version %s (NOT_FOUND); it is answered on the edge, "
                        "asking the cloud again every %g s", model, version, self.version_retry_s)
        self.cloud_missing[model] = (version, self._clock() + self.version_retry_s)

    def _version_missing(self, model: str, version: str) -> bool:
        missing = self.cloud_missing.get(model)
        if missing is None:
            return False
        if missing[0] == version and self._clock() < missing[1]:
            return True
        del self.cloud_missing[model]  # time to ask again, or the edge serves another version now
        return False

    # ------------------------------------------------------------------ tiers
    async def _run_edge(self, request: codec.InferRequest, runner: EdgeRunner, reason: str,
                        fallback: bool, on_loop: bool = False) -> codec.InferResponse:
        began = self._clock()
        # ``infer`` checked the inputs (``validate_request``) before routing: the model need not again.
        outputs = await runner.predict(request.inputs, checked=True, on_loop=on_loop)
        if self.metrics is not None:
            self.metrics.observe_latency(request.model_name, "edge", self._clock() - began)
        return codec.InferResponse(
            model_name=request.model_name,
            outputs=_select(outputs, request.outputs),
            model_version=runner.version,
            id=request.id,
            parameters=self._parameters("edge", reason, fallback, runner.version),
        )

    def _cloud_response(self, request: codec.InferRequest, cloud: CloudAnswer, reason: str,
                        fallback: bool) -> codec.InferResponse:
        if self.metrics is not None:
            self.metrics.observe_latency(request.model_name, "cloud", cloud.elapsed_ms / 1000.0)
        answer = cloud.response
        version = answer.model_version or str(answer.parameters.get("model_version", ""))
        return codec.InferResponse(
            model_name=request.model_name,
            outputs=_select(answer.outputs, request.outputs),
            model_version=version,
            id=request.id,
            parameters=self._parameters("cloud", reason, fallback, version),
        )

    def _parameters(self, served_by: str, reason: str, fallback: bool, version: str) -> dict:
        """Response parameters: DESIGN.md's four, plus the fleet file revision that routed the request."""
        params = {"served_by": served_by, "route_reason": reason, "fallback": fallback, "model_version": version}
        if self.config_revision:
            params["config_revision"] = self.config_revision
        return params


def _select(outputs: dict, wanted: list[str]) -> dict:
    if not wanted:
        return dict(outputs)
    missing = [name for name in wanted if name not in outputs]
    if missing:
        raise InvalidInput(f"requested outputs {missing} are not produced; available: {sorted(outputs)}")
    return {name: outputs[name] for name in wanted}


def _complete(answer: CloudAnswer, request: codec.InferRequest, runner: EdgeRunner) -> bool:
    """The cloud's answer carries every output the client will get (asked for, or all the model has)."""
    wanted = request.outputs or [spec.name for spec in runner.model.outputs]
    return all(name in answer.response.outputs for name in wanted)


def _not_found(error: BaseException) -> bool:
    """The cloud answered NOT_FOUND (unknown model or version): its stream error ``[NOT_FOUND] ...``
    (fogline.serving.stream's format) or a unary call's ``NOT_FOUND: ...``, as the link reports them."""
    text = str(error)
    return "[NOT_FOUND]" in text or "NOT_FOUND:" in text


def _consume(future: asyncio.Future) -> None:
    """Retrieve an abandoned future's outcome so asyncio does not log it as never retrieved."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        future.exception()
