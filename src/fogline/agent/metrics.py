"""The agent's Prometheus metrics, on a registry of its own, and the HTTP endpoint that serves them.

One ``AgentMetrics`` object per agent process. The rest of the agent calls its small methods
(``observe_request``, ``observe_latency``, ``set_rtt`` ...) so label names and values stay consistent;
nothing outside this module creates metrics. Series (all prefixed ``fogline_agent_``):

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``requests_total`` | counter | model, tier, reason | answered requests by serving tier and route reason |
| ``errors_total`` | counter | model, code | requests answered with a gRPC error (code name) |
| ``fallbacks_total`` | counter | model, from_tier, to_tier | preferred tier failed or was late; the other answered |
| ``hedges_total`` | counter | model, outcome | hedged requests: ``won`` = the hedge (edge) answered first, ``lost`` = the cloud did |
| ``escalations_total`` | counter | model | cascade: low-confidence edge answers sent to the cloud |
| ``edge_latency_seconds`` | histogram | model | edge inference time (queue + run) |
| ``cloud_latency_seconds`` | histogram | model | cloud round trip as the agent saw it |
| ``request_latency_seconds`` | histogram | model, tier | whole request, as the client saw it |
| ``cloud_rtt_seconds`` | gauge | stat | network RTT estimate: ``smoothed`` and ``p95`` (or what the estimator reports) |
| ``cloud_link_state`` | gauge | state | the cloud link: connecting, ready, degraded, down, unauthenticated |
| ``cloud_auth_failures_total`` | counter | - | the cloud refused the agent's credentials (each attempt) |
| ``cloud_replica_inflight`` | gauge | replica | requests sent to this cloud replica and not answered yet |
| ``cloud_replica_rtt_seconds`` | gauge | replica | smoothed network RTT to this replica |
| ``cloud_replica_state`` | gauge | replica, state | this replica's stream (1 = current; states as ``cloud_link_state``) |
| ``cloud_resends_total`` | counter | - | requests sent again to another replica after their replica's connection failed |
| ``auth_failures_total`` | counter | reason | calls to the agent refused for their token (``serving.auth``) |
| ``queue_depth`` | gauge | model | edge jobs waiting or running |
| ``inflight_requests`` | gauge | - | client requests being handled |
| ``cpu_load_ratio`` | gauge | - | host CPU use (0..1, smoothed) the router compares with ``load.cpu_high_percent`` |
| ``load_signal_available`` | gauge | signal | 1 while a load signal (``cpu``) is read, 0 once it is switched off (e.g. ``/proc/stat`` hidden) |
| ``config_revision`` | gauge | - | revision of the fleet config in use (bumps on every good reload) |
| ``config`` | info | revision, sha256, path | which config file is in use |
| ``config_reloads_total`` | counter | result | SIGHUP reloads: ``ok`` or ``error`` |
| ``build`` | info | version, device | what runs where |
| ``device`` | info | device, group, ``label_<key>`` | the device and the fleet file's ``labels`` (``site: a`` -> ``label_site="a"``) |
| ``model_version`` | gauge | model, version | 1 for the version each model serves now |
| ``model_swaps_total`` | counter | model | hot swaps to another version (SIGHUP) |
| ``model_load_failures_total`` | counter | model, version, reason | versions refused on a reload (the one in use stays) |
| ``shadow_requests_total`` | counter | model, version, outcome | edge answers picked for shadowing (``routing.shadow``): ``compared``, ``failed``, ``incomparable``, or not sent: ``link_unhealthy``, ``cloud_busy``, ``dropped`` |
| ``shadow_agreement`` | gauge | model, version, metric | live agreement of edge and cloud over the last ``routing.shadow.window`` rows, in the manifest's fidelity metric (``top1_agreement``, ``cosine_mean``, ``relative_error``) |
| ``shadow_below_gate`` | gauge | model, version | 1 while that agreement misses the manifest's gate |

The device's ``labels`` are not put on every series: ``fogline_agent_device_info`` carries them once
(value 1), as kube-state-metrics does with ``kube_pod_labels``, and a query joins them in where they
are wanted, e.g. ``sum by (label_site) (rate(fogline_agent_requests_total[5m]) * on(instance) group_left
(label_site) fogline_agent_device_info)``. A label key is written ``label_`` + the key with every
character outside ``[A-Za-z0-9_]`` turned into ``_``. A reload (SIGHUP) updates it.

The agent's server serves them with ``fogline.serving.metrics_endpoint.MetricsEndpoint`` (``/metrics``,
plain text exposition), as the cloud does its own.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

NAMESPACE = "fogline_agent"
TIERS = ("edge", "cloud")
LINK_STATES = ("connecting", "ready", "degraded", "down", "unauthenticated")
#: Latency buckets in seconds: sub-millisecond edge answers up to multi-second cloud stalls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _check_tier(tier: str) -> None:
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")


class AgentMetrics:
    """Every metric the agent exports, registered on ``self.registry`` (never the global one, so
    several agents in one test process do not collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        r, ns = self.registry, NAMESPACE
        self.requests = Counter("requests", "Answered requests by model, serving tier and route reason.",
                                ["model", "tier", "reason"], namespace=ns, registry=r)
        self.errors = Counter("errors", "Requests answered with a gRPC error, by status code name.",
                              ["model", "code"], namespace=ns, registry=r)
        self.fallbacks = Counter("fallbacks", "Requests whose preferred tier failed or was too slow.",
                                 ["model", "from_tier", "to_tier"], namespace=ns, registry=r)
        self.hedges = Counter("hedges", "Hedged requests: won = the edge hedge answered first, lost = the "
                              "cloud did.", ["model", "outcome"], namespace=ns, registry=r)
        self.escalations = Counter("escalations", "Cascade escalations of low-confidence edge answers.",
                                   ["model"], namespace=ns, registry=r)
        self.edge_latency = Histogram("edge_latency_seconds", "Edge inference time, queueing included.",
                                      ["model"], buckets=LATENCY_BUCKETS, namespace=ns, registry=r)
        self.cloud_latency = Histogram("cloud_latency_seconds", "Cloud round trip as seen by the agent.",
                                       ["model"], buckets=LATENCY_BUCKETS, namespace=ns, registry=r)
        self.request_latency = Histogram("request_latency_seconds", "Whole request time by serving tier.",
                                         ["model", "tier"], buckets=LATENCY_BUCKETS, namespace=ns, registry=r)
        self.rtt = Gauge("cloud_rtt_seconds", "Network round-trip estimate to the cloud.", ["stat"],
                         namespace=ns, registry=r)
        self.link_state = Gauge("cloud_link_state", "State of the long-lived stream to the cloud (1 = current).",
                                ["state"], namespace=ns, registry=r)
        self.replica_inflight = Gauge("cloud_replica_inflight", "Requests sent to this cloud replica and not "
                                      "answered yet.", ["replica"], namespace=ns, registry=r)
        self.replica_rtt = Gauge("cloud_replica_rtt_seconds", "Smoothed network round trip to this cloud replica.",
                                 ["replica"], namespace=ns, registry=r)
        self.replica_state = Gauge("cloud_replica_state", "State of the stream to this cloud replica (1 = current).",
                                   ["replica", "state"], namespace=ns, registry=r)
        self.cloud_resends = Counter("cloud_resends", "Requests sent again to another cloud replica after their "
                                     "replica's connection failed.", namespace=ns, registry=r)
        self._replicas: set[str] = set()
        self.cloud_auth_failures = Counter("cloud_auth_failures", "Times the cloud refused the agent's "
                                           "credentials (UNAUTHENTICATED or PERMISSION_DENIED).",
                                           namespace=ns, registry=r)
        self.auth_failures = Counter("auth_failures", "Calls to the agent refused for their token "
                                     "(missing, malformed, unknown, revoked).", ["reason"], namespace=ns,
                                     registry=r)
        self.queue_depth = Gauge("queue_depth", "Edge jobs waiting or running, per model.", ["model"],
                                 namespace=ns, registry=r)
        self.inflight = Gauge("inflight_requests", "Client requests being handled.", namespace=ns, registry=r)
        self.cpu_load = Gauge("cpu_load_ratio", "Host CPU use (0..1, smoothed) as the router sees it.",
                              namespace=ns, registry=r)
        self.load_signal = Gauge("load_signal_available", "1 while the router gets this load signal, 0 when it "
                                 "is switched off (unreadable, e.g. /proc/stat hidden).", ["signal"],
                                 namespace=ns, registry=r)
        self.config_revision = Gauge("config_revision", "Revision of the fleet config in use.",
                                     namespace=ns, registry=r)
        self.config_info = Info("config", "The fleet config in use.", namespace=ns, registry=r)
        self.config_reloads = Counter("config_reloads", "Config reloads (SIGHUP) by result.", ["result"],
                                      namespace=ns, registry=r)
        self.build = Info("build", "Agent version and device id.", namespace=ns, registry=r)
        self.device = Info("device", "This device: its id, group and the fleet file's labels (label_<key>).",
                           namespace=ns, registry=r)
        self.model_version = Gauge("model_version", "The version each model serves (1 = serving now).",
                                   ["model", "version"], namespace=ns, registry=r)
        self.model_swaps = Counter("model_swaps", "Hot swaps to another model version (SIGHUP).", ["model"],
                                   namespace=ns, registry=r)
        self.model_load_failures = Counter("model_load_failures", "Model versions refused on a reload, by "
                                           "reason (hash, load, manifest, signature, warmup, output, nan, "
                                           "missing).", ["model", "version", "reason"], namespace=ns, registry=r)
        self.shadow_requests = Counter("shadow_requests", "Edge answers picked for shadowing to the cloud, by "
                                       "outcome.", ["model", "version", "outcome"], namespace=ns, registry=r)
        self.shadow_agreement = Gauge("shadow_agreement", "Live agreement of the edge and cloud answers over the "
                                      "last shadow window, in the model's fidelity metric.",
                                      ["model", "version", "metric"], namespace=ns, registry=r)
        self.shadow_below_gate = Gauge("shadow_below_gate", "1 while the live agreement misses the manifest's "
                                       "fidelity gate.", ["model", "version"], namespace=ns, registry=r)
        self.set_link_state("connecting")

    # -- requests ---------------------------------------------------------------------------------

    def observe_request(self, model: str, tier: str, reason: str, latency_s: float | None = None,
                        *, fallback_from: str | None = None) -> None:
        """One answered request: served by ``tier`` for ``reason`` (the response's ``route_reason``)."""
        _check_tier(tier)
        self.requests.labels(model, tier, reason).inc()
        if latency_s is not None:
            self.request_latency.labels(model, tier).observe(latency_s)
        if fallback_from is not None:
            _check_tier(fallback_from)
            self.fallbacks.labels(model, fallback_from, tier).inc()

    def observe_error(self, model: str, code: str) -> None:
        """A request answered with an error; ``code`` is the status name, e.g. ``INVALID_ARGUMENT``."""
        self.errors.labels(model, code).inc()

    def observe_latency(self, model: str, tier: str, seconds: float) -> None:
        """Time one tier took for one job (edge: queue + run; cloud: round trip)."""
        _check_tier(tier)
        (self.edge_latency if tier == "edge" else self.cloud_latency).labels(model).observe(seconds)

    def observe_hedge(self, model: str, won: bool) -> None:
        """A hedged request finished; ``won`` when the edge hedge answered before the cloud."""
        self.hedges.labels(model, "won" if won else "lost").inc()

    def observe_escalation(self, model: str) -> None:
        self.escalations.labels(model).inc()

    def observe_shadow(self, model: str, version: str, outcome: str) -> None:
        """One edge answer picked for shadowing, and what became of it (``fogline.agent.shadowing``)."""
        self.shadow_requests.labels(model, version, outcome).inc()

    def set_shadow_agreement(self, model: str, version: str, metric: str, value: float, below_gate: bool) -> None:
        """The live agreement of ``model`` ``version`` now, and whether it misses the manifest's gate."""
        self.shadow_agreement.labels(model, version, metric).set(value)
        self.shadow_below_gate.labels(model, version).set(1 if below_gate else 0)

    def forget_shadow(self, model: str, version: str, metric: str) -> None:
        """Remove the agreement gauges of a version that is no longer served."""
        with contextlib.suppress(KeyError):
            self.shadow_agreement.remove(model, version, metric)
        with contextlib.suppress(KeyError):
            self.shadow_below_gate.remove(model, version)

    def declare_models(self, models: list[str] | tuple[str, ...]) -> None:
        """Publish zero-valued series for every model's hedge outcomes, fallbacks and escalations, so a
        dashboard (and ``rate()``) sees them before the first event rather than a missing series."""
        for model in models:
            for outcome in ("won", "lost"):
                self.hedges.labels(model, outcome)
            for a, b in (("cloud", "edge"), ("edge", "cloud")):
                self.fallbacks.labels(model, a, b)
            self.escalations.labels(model)

    # -- state ------------------------------------------------------------------------------------

    def set_model_version(self, model: str, version: str | None, before: str | None = None) -> None:
        """``model`` serves ``version`` now (None: not any more) instead of ``before``."""
        if before is not None and before != version:
            with contextlib.suppress(KeyError):
                self.model_version.remove(model, before)
            self.model_swaps.labels(model).inc()
        if version is not None:
            self.model_version.labels(model, version).set(1)

    def observe_model_refused(self, model: str, version: str, reason: str) -> None:
        """A version of ``model`` failed a check on a reload (the one in use keeps serving)."""
        self.model_load_failures.labels(model, version, reason).inc()

    def set_rtt(self, smoothed_s: float | None = None, p95_s: float | None = None, **others: float) -> None:
        """Publish the RTT estimator's view (seconds); ``others`` add stats like ``p99=...``."""
        for stat, value in {"smoothed": smoothed_s, "p95": p95_s, **others}.items():
            if value is not None:
                self.rtt.labels(stat).set(value)

    def set_link_state(self, state: str) -> None:
        if state not in LINK_STATES:
            raise ValueError(f"link state must be one of {', '.join(LINK_STATES)}, got {state!r}")
        for name in LINK_STATES:
            self.link_state.labels(name).set(1 if name == state else 0)

    def set_replicas(self, replicas: Iterable[Any]) -> None:
        """Publish every cloud replica (``.replica``, ``.inflight``, ``.rtt_ms``, ``.state``, a
        ``fogline.agent.replica_set.ReplicaStatus``); the series of replicas gone are removed."""
        seen = set()
        for status in replicas:
            name = status.replica
            seen.add(name)
            self.replica_inflight.labels(name).set(status.inflight)
            if status.rtt_ms is not None:
                self.replica_rtt.labels(name).set(status.rtt_ms / 1000.0)
            for state in LINK_STATES:
                self.replica_state.labels(name, state).set(1 if state == status.state else 0)
        for name in self._replicas - seen:
            for gauge in (self.replica_inflight, self.replica_rtt):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)
            for state in LINK_STATES:
                with contextlib.suppress(KeyError):
                    self.replica_state.remove(name, state)
        self._replicas = seen

    def observe_cloud_resend(self) -> None:
        """A request went to another replica after its replica's connection failed."""
        self.cloud_resends.inc()

    def observe_cloud_auth_failure(self) -> None:
        """The cloud refused this agent's credentials (the link now keeps work on the edge)."""
        self.cloud_auth_failures.inc()

    def observe_auth_failure(self, reason: str) -> None:
        """A call to the agent's own listener was refused for its token (``reason``: why)."""
        self.auth_failures.labels(reason).inc()

    def set_queue_depth(self, model: str, depth: int) -> None:
        self.queue_depth.labels(model).set(depth)

    def set_cpu_load(self, load: float | None) -> None:
        """The CPU monitor's reading (0..1); None (not measured yet) leaves the gauge as it was."""
        if load is not None:
            self.cpu_load.set(load)

    def set_load_signal(self, signal: str, available: bool) -> None:
        """Whether the router gets the load signal ``signal`` (``cpu``); off: it routes as if unknown."""
        self.load_signal.labels(signal).set(1 if available else 0)

    def set_config(self, revision: int, *, sha256: str = "", path: str = "") -> None:
        """The config in use changed (start or a good reload)."""
        self.config_revision.set(revision)
        self.config_info.info({"revision": str(revision), "sha256": sha256, "path": path})

    def observe_reload(self, ok: bool) -> None:
        self.config_reloads.labels("ok" if ok else "error").inc()

    def set_build(self, version: str, device: str) -> None:
        self.build.info({"version": version, "device": device})

    def set_device(self, device: str, group: str | None = None, labels: Mapping[str, str] | None = None) -> None:
        """``device_info{device, group, label_<key>...}``: the device's fleet labels, replaced on reload."""
        values = {"device": device, "group": group or ""}
        for key, value in sorted((labels or {}).items()):
            values[label_name(key)] = str(value)
        self.device.info(values)


def label_name(key: str) -> str:
    """The Prometheus label name of a fleet ``labels`` key: ``label_`` + the key, other characters ``_``."""
    return "label_" + re.sub(r"[^A-Za-z0-9_]", "_", key)
