"""Shadowing edge answers to the cloud, off the client's path, and keeping the live agreement.

The data plane calls ``Shadower.offer`` once the edge has answered a request (and the answer is on
its way back). ``offer`` is synchronous and cheap: it asks the sampler and the link view
(``fogline.agent.shadow``) and, when a shadow goes, hands a copy of the request to the cloud link
and returns. The comparison runs when the cloud's answer arrives, in the answer's done callback, and
never touches the client's answer: a shadow that fails, is late or is dropped costs nothing but a
count. No shadow is retried or queued.

A shadow asks the cloud for the model version the edge served (the data plane's ``submit`` pins it)
and carries the request parameter ``shadow: true`` (any v2 server ignores an unknown parameter), its
own ``deadline_ms`` (``SHADOW_DEADLINE_MS``, so a stuck one frees its slot) and the outputs the
comparison needs. It is not client traffic: the data plane's tier counts and
``fogline_agent_requests_total`` never see it.

Per model version an ``AgreementTracker`` keeps the running figure; the moment it falls below the
manifest's gate one WARNING line says so, and one INFO line when it recovers. A refused shadow
(RESOURCE_EXHAUSTED from a busy cloud, NOT_FOUND, any error) pauses that model's shadows for
``PAUSE_S`` seconds, so a cloud short of headroom is not asked again at once; the error also goes to
``on_error``, where the data plane notes a NOT_FOUND as the cloud lacking that version (its client
requests stay on the edge too, ``cloud_version_missing``, and shadows skip it until the retry).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fogline import codec
from fogline.agent.agreement import AgreementTracker, Crossing, Fidelity, fidelity_of, row_scores
from fogline.agent.link_port import CloudAnswer
from fogline.agent.router_types import LinkView, RoutingPolicy
from fogline.agent.shadow import Sampler, skip_reason

log = logging.getLogger(__name__)

#: Outcomes of shadows that went (``fogline.agent.shadow`` names the ones that did not).
COMPARED = "compared"
FAILED = "failed"
INCOMPARABLE = "incomparable"
#: The cloud drops a shadow it has not answered within this long (its slot is freed either way).
SHADOW_DEADLINE_MS = 2000
#: A model's shadows pause this long after one is refused or fails.
PAUSE_S = 5.0

Submit = Callable[[codec.InferRequest, Any], "asyncio.Future[CloudAnswer]"]
View = Callable[[str, str], LinkView]


class Shadower:
    """The data plane's shadow traffic and the agreement trackers it feeds."""

    def __init__(self, view: View, submit: Submit, *, metrics: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_error: Callable[[str, str, BaseException], None] | None = None) -> None:
        self._view = view
        self._submit = submit
        self._on_error = on_error
        self.metrics = metrics
        self._clock = clock
        self.sampler = Sampler()
        #: Shadows sent and not answered yet (all models).
        self.inflight = 0
        #: ``(model, version, outcome)`` -> count, as ``fogline_agent_shadow_requests_total``.
        self.outcomes: Counter[tuple[str, str, str]] = Counter()
        self.trackers: dict[tuple[str, str], AgreementTracker] = {}
        self._paused_until: dict[str, float] = {}

    # ------------------------------------------------------------------ the hook
    def offer(self, policy: RoutingPolicy, request: codec.InferRequest, response: codec.InferResponse,
              runner: Any) -> None:
        """An edge answer for ``request`` was produced by ``runner``; maybe shadow it. Never raises."""
        settings = policy.shadow
        if not self.sampler.take(request.model_name, settings.share):
            return
        model, version = request.model_name, runner.version
        try:
            paused = self._clock() < self._paused_until.get(model, float("-inf"))
            reason = skip_reason(self._view(model, version), rtt_limit_ms=policy.rtt_threshold_ms,
                                 inflight=self.inflight, max_inflight=settings.max_inflight, paused=paused)
            if reason is not None:
                self._count(model, version, reason)
                return
            tracker = self._tracker(model, version, runner, settings.window, settings.min_rows)
            edge_outputs = response.outputs
            if any(name not in edge_outputs for name in tracker.fidelity.outputs):
                self._count(model, version, INCOMPARABLE)  # the client asked for other outputs only
                return
            future = self._submit(self._shadow_request(request, tracker.fidelity), runner)
        except Exception:  # a shadow must never cost the client its answer
            log.exception("shadow of a %s request not sent", model)
            self._count(model, version, FAILED)
            return
        self.inflight += 1
        future.add_done_callback(lambda done: self._answered(model, version, edge_outputs, done))

    # ------------------------------------------------------------------ the answer
    def _answered(self, model: str, version: str, edge_outputs: dict, future: asyncio.Future[CloudAnswer]) -> None:
        self.inflight -= 1
        error = future.exception() if not future.cancelled() else asyncio.CancelledError()
        tracker = self.trackers.get((model, version))
        if tracker is None:  # the version was swapped out while its shadow was out: nothing to add to
            self._count(model, version, FAILED if error is not None else INCOMPARABLE)
            return
        if error is not None:
            self._paused_until[model] = self._clock() + PAUSE_S
            self._count(model, version, FAILED)
            log.debug("shadow of %s v%s failed (%s); shadows of it pause %g s", model, version, error, PAUSE_S)
            if self._on_error is not None and not isinstance(error, asyncio.CancelledError):
                self._on_error(model, version, error)
            return
        answer = future.result().response
        cloud_version = answer.model_version or str(answer.parameters.get("model_version", "") or "")
        try:
            if cloud_version and cloud_version != version:
                raise ValueError(f"the cloud answered version {cloud_version}")
            scores = row_scores(tracker.fidelity, edge_outputs, answer.outputs)
        except ValueError as exc:
            self._count(model, version, INCOMPARABLE)
            log.debug("shadow of %s v%s not comparable: %s", model, version, exc)
            return
        crossing = tracker.add(scores)
        self._count(model, version, COMPARED)
        report = tracker.report()
        if self.metrics is not None and report.value is not None:
            self.metrics.set_shadow_agreement(model, version, report.metric, report.value, report.below_gate)
        if crossing is not None:
            _log_crossing(model, version, tracker, crossing)

    # ------------------------------------------------------------------ state
    def snapshot(self, policy: RoutingPolicy) -> dict[str, Any]:
        """The shadow settings, outcomes and agreement per model and version (``fogline agent status``)."""
        models: dict[str, dict[str, Any]] = {}
        for (model, version), tracker in sorted(self.trackers.items()):
            models.setdefault(model, {})[version] = tracker.report().to_dict()
        for (model, version, outcome), count in sorted(self.outcomes.items()):
            entry = models.setdefault(model, {}).setdefault(version, {})
            entry.setdefault("outcomes", {})[outcome] = count
        return {"share": policy.shadow.share, "inflight": self.inflight, "models": models}

    def forget(self, model: str, version: str) -> None:
        """``model`` no longer serves ``version`` (a reload swapped it): drop its running agreement and its
        gauges, so no dashboard keeps showing a figure for a model that is gone. Its counters stay (a
        rate over them falls to zero); a later rollback to it starts a fresh window."""
        tracker = self.trackers.pop((model, version), None)
        if tracker is not None and self.metrics is not None:
            self.metrics.forget_shadow(model, version, tracker.fidelity.metric)

    def _tracker(self, model: str, version: str, runner: Any, window: int, min_rows: int) -> AgreementTracker:
        tracker = self.trackers.get((model, version))
        if tracker is None:
            tracker = AgreementTracker(_fidelity(runner.model), window=window, min_rows=min_rows)
            self.trackers[(model, version)] = tracker
        else:
            tracker.resize(window, min_rows)  # (a reload may have changed them; a no-op otherwise)
        return tracker

    def _count(self, model: str, version: str, outcome: str) -> None:
        self.outcomes[(model, version, outcome)] += 1
        if self.metrics is not None:
            self.metrics.observe_shadow(model, version, outcome)

    @staticmethod
    def _shadow_request(request: codec.InferRequest, fidelity: Fidelity) -> codec.InferRequest:
        params = {k: v for k, v in request.parameters.items() if k not in ("route", "deadline_ms")}
        params.update(shadow=True, deadline_ms=SHADOW_DEADLINE_MS)
        return replace(request, parameters=params, outputs=list(fidelity.outputs))


def _fidelity(model: Any) -> Fidelity:
    """The fidelity check of a loaded model (``LoadedModel``; test doubles may lack the manifest)."""
    outputs = [spec.name for spec in model.outputs]
    return fidelity_of(str(getattr(model, "task", "generic")), outputs, getattr(model, "manifest", None) or {},
                       getattr(model, "scores_output", None))


def _log_crossing(model: str, version: str, tracker: AgreementTracker, crossing: Crossing) -> None:
    report, fidelity = tracker.report(), tracker.fidelity
    offline = "-" if report.offline is None else f"{report.offline:g}"
    figure = f"{report.metric} {report.value:.4f} over the last {tracker.window_rows} rows"
    if crossing is Crossing.BELOW:
        log.warning("shadow: %s v%s %s misses the manifest's gate (%s %g; offline %s): the edge model no longer "
                    "matches the full one on this traffic", model, version, figure, fidelity.relation,
                    report.gate, offline)
    else:
        log.info("shadow: %s v%s %s meets the manifest's gate again (%s %g)", model, version, figure,
                 fidelity.relation, report.gate)
